"""The tools' ``kvplane`` commands: ``demo`` and ``bench``.

:data:`COMMANDS` is what ``python -m kvplane_tools`` registers; ``pyproject.toml`` declares the same
two objects as ``kvplane.commands`` entry points for the installed ``kvplane`` script. This module
only defines options: each command imports its implementation (the loaders, the suites) when it runs.
Every option is checked while the command line is parsed (types from :mod:`kvplane._cli_args`, and
each command's ``check`` for options that must agree), so a bad value is a usage error (exit 2)
before the demo starts a thread or the bench runs a suite.

- ``kvplane demo [--steps N] [--dp-world N] ... [--plot FILE.png] [--json]``: the quickstart, a
  GRPO-style data flow (:mod:`kvplane_tools.demo`).
- ``kvplane bench [--suite NAME ...] [--quick] [--output FILE.json] [--plot FILE.png] [--list]``: run
  suites of :data:`kvplane_tools.bench.SUITES`; print one JSON document to stdout (or ``--output``)
  and a short table to stderr (``--plot``: the kv suite's scale sweep, log-log); exit 1 if a suite
  failed (:mod:`kvplane_tools.bench.runner`).

Examples:
    >>> from kvplane.cli import main
    >>> from kvplane_tools.commands import COMMANDS
    >>> main(["bench", "--list"], commands=COMMANDS)
    balance
    checkpoint
    kv
    loader
    0
"""

from __future__ import annotations

import argparse

from kvplane import DataPlaneBadRequest
from kvplane.cli import Command, config_source, integer, number, output_file

__all__ = ["BENCH", "COMMANDS", "DEMO"]

#: What ``--plot`` may write (formats matplotlib's Agg backend always has).
PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options."""
    parser.add_argument(
        "--config",
        type=config_source,
        metavar="FILE",
        help="data plane YAML or example name (e.g. transfer_queue); default: the embedded backend",
    )
    parser.add_argument(
        "--steps",
        type=integer(minimum=1, maximum=10_000),
        default=12,
        help="training steps, 1 to 10000 (default 12)",
    )
    parser.add_argument(
        "--dp-world",
        type=integer(minimum=1, maximum=256),
        default=4,
        help="data-parallel ranks, 1 to 256 (default 4)",
    )
    parser.add_argument(
        "--batch-size",
        type=integer(minimum=1, maximum=65_536),
        default=64,
        help="samples per step, all ranks; a multiple of --dp-world, at most 65536 (default 64)",
    )
    parser.add_argument(
        "--group-size",
        type=integer(minimum=1),
        default=8,
        help="responses per prompt, <= --batch-size (default 8)",
    )
    parser.add_argument(
        "--max-staleness",
        type=integer(minimum=0),
        default=1,
        help="weight versions a group may lag, >= 0 (default 1)",
    )
    parser.add_argument(
        "--stale-fraction",
        type=number(minimum=0, maximum=1, include_maximum=False),
        default=0.2,
        help="share of groups from a lagging actor, in [0, 1) (default 0.2)",
    )
    parser.add_argument(
        "--work-us-per-token",
        type=number(minimum=0, maximum=1000),
        default=2.0,
        help="simulated training cost in µs per token, in [0, 1000] (default 2)",
    )
    parser.add_argument("--seed", type=integer(), default=0, help="random seed (default 0)")
    parser.add_argument(
        "--plot",
        type=output_file(*PLOT_SUFFIXES),
        metavar="FILE.png",
        help="draw per-rank token load per step (.png, .pdf or .svg; needs kvplane[plot])",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _check_demo(args: argparse.Namespace) -> None:
    """The demo's options that must agree."""
    if args.batch_size % args.dp_world:
        raise DataPlaneBadRequest(
            f"--batch-size ({args.batch_size}) must be a multiple of --dp-world ({args.dp_world})"
        )
    if args.group_size > args.batch_size:
        raise DataPlaneBadRequest(
            f"--group-size ({args.group_size}) must be <= --batch-size ({args.batch_size}): "
            "a step trains on whole groups"
        )


def _run_demo(args: argparse.Namespace) -> int:
    from kvplane_tools.demo import run

    return run(args)


def _suite_names(value: str) -> str:
    """``--suite``: comma-separated names of :data:`kvplane_tools.bench.SUITES`, checked when parsed."""
    from kvplane_tools.bench.runner import selected_suites

    try:
        selected_suites([value])
    except DataPlaneBadRequest as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return value


def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The bench's options."""
    parser.add_argument(
        "--suite",
        action="append",
        type=_suite_names,
        metavar="NAME",
        help="a suite to run (repeatable or comma-separated; default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (smoke run)")
    parser.add_argument(
        "--output",
        type=output_file(".json"),
        metavar="FILE.json",
        help="write the JSON here instead of stdout (its directory must exist)",
    )
    parser.add_argument(
        "--plot",
        type=output_file(*PLOT_SUFFIXES),
        metavar="FILE.png",
        help="draw the kv suite's scale sweep, time against keys on log-log axes (needs kvplane[plot])",
    )
    parser.add_argument("--list", action="store_true", help="list the suites and exit")


def _run_bench(args: argparse.Namespace) -> int:
    from kvplane_tools.bench.runner import run

    return run(args)


DEMO = Command(
    help="run the quickstart demo",
    description="Run the kvplane quickstart demo: a GRPO-style data flow through the balanced loader.",
    run=_run_demo,
    add_arguments=_demo_arguments,
    check=_check_demo,
)
BENCH = Command(
    help="run benchmark suites, print JSON",
    description="Run benchmark suites and report JSON (ratios measured side by side in one run).",
    run=_run_bench,
    add_arguments=_bench_arguments,
)
#: The tools' commands by name (the ``kvplane.commands`` entry points declare the same objects).
COMMANDS: dict[str, Command] = {"demo": DEMO, "bench": BENCH}
