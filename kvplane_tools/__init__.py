"""kvplane's tools: the quickstart demo and the benchmark suites, beside the library.

They use kvplane and ``loaders`` like any user does; neither library imports them. The ``kvplane``
command gets ``demo`` and ``bench`` from here through the ``kvplane.commands`` entry points
(:data:`kvplane_tools.commands.COMMANDS`); from a plain checkout, run ``python -m kvplane_tools``.

Modules: :mod:`.commands` (the two commands), :mod:`.demo` (a GRPO-style data flow),
:mod:`.bench` (the suites, :data:`kvplane_tools.bench.SUITES`), :mod:`.batches` (the batches the
suites and tests write).
"""
