"""The tools' ``kvplane`` commands: ``demo`` and ``bench``.

:data:`COMMANDS` is what ``python -m kvplane_tools`` registers; ``pyproject.toml`` declares the same
two objects as ``kvplane.commands`` entry points for the installed ``kvplane`` script. This module
only defines options: each command imports its implementation (the loaders, the suites) when it runs.

- ``kvplane demo [--steps N] [--dp-world N] ... [--plot FILE.png] [--json]``: the quickstart, a
  GRPO-style data flow (:mod:`kvplane_tools.demo`).
- ``kvplane bench [--suite NAME ...] [--quick] [--output FILE.json] [--list]``: run suites of
  :data:`kvplane_tools.bench.SUITES`; print one JSON document to stdout (or ``--output``) and a short
  table to stderr; exit 1 if a suite failed (:mod:`kvplane_tools.bench.runner`).

Examples:
    >>> from kvplane.cli import main
    >>> from kvplane_tools.commands import COMMANDS
    >>> main(["bench", "--list"], commands=COMMANDS)
    balance
    kv
    loader
    0
"""

from __future__ import annotations

import argparse

from kvplane.cli import Command

__all__ = ["BENCH", "COMMANDS", "DEMO"]


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options."""
    parser.add_argument("--config", help="data plane config (YAML); default: the embedded backend")
    parser.add_argument("--steps", type=int, default=12, help="training steps (default 12)")
    parser.add_argument("--dp-world", type=int, default=4, help="data-parallel ranks (default 4)")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per step, all ranks (default 64)")
    parser.add_argument("--group-size", type=int, default=8, help="responses per prompt (default 8)")
    parser.add_argument(
        "--max-staleness", type=int, default=1, help="weight versions a group may lag (default 1)"
    )
    parser.add_argument("--stale-fraction", type=float, default=0.2, help="groups from a lagging actor (0.2)")
    parser.add_argument("--work-us-per-token", type=float, default=2.0, help="simulated training cost (2 µs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", metavar="FILE.png", help="draw per-rank token load per step")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _run_demo(args: argparse.Namespace) -> int:
    from kvplane_tools.demo import run

    return run(args)


def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The bench's options."""
    parser.add_argument(
        "--suite", action="append", metavar="NAME", help="a suite to run (repeatable; default: all)"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (smoke run)")
    parser.add_argument("--output", metavar="FILE.json", help="write the JSON here instead of stdout")
    parser.add_argument("--list", action="store_true", help="list the suites and exit")


def _run_bench(args: argparse.Namespace) -> int:
    from kvplane_tools.bench.runner import run

    return run(args)


DEMO = Command(
    help="run the quickstart demo",
    description="Run the kvplane quickstart demo: a GRPO-style data flow through the balanced loader.",
    run=_run_demo,
    add_arguments=_demo_arguments,
)
BENCH = Command(
    help="run benchmark suites, print JSON",
    description="Run benchmark suites and report JSON (ratios measured side by side in one run).",
    run=_run_bench,
    add_arguments=_bench_arguments,
)
#: The tools' commands by name (the ``kvplane.commands`` entry points declare the same objects).
COMMANDS: dict[str, Command] = {"demo": DEMO, "bench": BENCH}
