"""Run benchmark suites of :data:`~kvplane_tools.bench.SUITES` and report them (``kvplane bench``).

The report is one JSON document (to stdout, or ``--output``) with each suite's outcome
(``status``, ``seconds``, ``result`` or ``error``) and a short table on stderr. A suite that raises,
or whose report holds a part with ``status: error`` (e.g. one TransferQueue backend that could not
run), makes the run fail (exit 1); the other suites still run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import kvplane
from kvplane import DataPlaneBadRequest, DataPlaneError
from kvplane._deps import require
from kvplane.cli import json_default, table
from kvplane_tools.bench import SUITES

__all__ = ["run", "run_suite", "selected_suites"]

logger = logging.getLogger(__name__)

_MAX_TABLE_METRICS = 12


def selected_suites(requested: list[str] | None) -> list[str]:
    """The suites ``--suite`` names (repeatable, comma-separated), in order; all when none is named.

    Raises:
        DataPlaneBadRequest: A name is not in :data:`~kvplane_tools.bench.SUITES`.

    Examples:
        >>> selected_suites(["kv,balance", "kv"]), selected_suites(None)
        (['kv', 'balance'], ['balance', 'checkpoint', 'kv', 'loader'])
    """
    available = sorted(SUITES)
    if not requested:
        return available
    names = [n.strip() for item in requested for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise DataPlaneBadRequest(f"unknown bench suite(s) {unknown}; available: {available}")
    return list(dict.fromkeys(names))


def run_suite(name: str, *, quick: bool) -> dict[str, Any]:
    """One suite's outcome: ``status`` (``ok``/``error``), ``seconds``, and ``result`` or ``error``."""
    start = time.perf_counter()
    try:
        suite: Callable[..., dict[str, Any]] = importlib.import_module(SUITES[name]).run
        result = suite(quick=quick)
    except Exception as exc:
        logger.debug("bench suite %s failed", name, exc_info=True)
        return {
            "status": "error",
            "seconds": time.perf_counter() - start,
            "error": f"{type(exc).__name__}: {exc}",
        }
    outcome = {"status": "ok", "seconds": time.perf_counter() - start, "result": result}
    failed = dict(_failed_parts(result))
    if failed:  # e.g. one backend of the suite could not run: the run as a whole did not succeed
        outcome.update(status="error", error="; ".join(f"{path}: {why}" for path, why in failed.items()))
    return outcome


def _failed_parts(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """``(dotted path, error)`` of every part of a suite's result that reports ``status: error``."""
    if not isinstance(node, dict):
        return
    if node.get("status") == "error":
        yield path or "result", str(node.get("error", "failed"))
        return
    for key, value in node.items():
        yield from _failed_parts(value, f"{path}.{key}" if path else str(key))


def run(args: argparse.Namespace) -> int:
    """The ``bench`` command: run the selected suites, write the JSON and the table; 1 if one failed."""
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    if args.list:
        print("\n".join(sorted(SUITES)))
        return 0
    names = selected_suites(args.suite)
    plot_to = getattr(args, "plot", None)
    if plot_to:
        if "kv" not in names:
            raise DataPlaneBadRequest("--plot draws the kv suite's scale sweep: run it too (--suite kv)")
        require("matplotlib", purpose="kvplane bench --plot")
    disable = True if os.environ.get("KVPLANE_DISABLE_PROGRESS_BARS") else None  # None: off when not a TTY
    suites: dict[str, Any] = {}
    loggers = [logging.getLogger("kvplane"), logging.getLogger("kvplane_tools")]
    with logging_redirect_tqdm(loggers=loggers):
        bar = tqdm(names, desc="kvplane bench", unit="suite", disable=disable, file=sys.stderr)
        for name in bar:
            bar.set_postfix_str(name)
            suites[name] = run_suite(name, quick=args.quick)
    doc = {
        "kvplane_version": kvplane.__version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "host": _host_info(),
        "suites": suites,
    }
    text = json.dumps(doc, indent=2, default=json_default)
    print(_bench_table(suites), file=sys.stderr)
    if plot_to and suites["kv"]["status"] == "ok":
        from kvplane_tools.bench.kv import plot

        plot(suites["kv"]["result"], plot_to)
        print(f"plot written to {plot_to}", file=sys.stderr)
    if args.output:
        try:  # --output was checked before the suites ran; this catches what changed meanwhile
            with open(args.output, "w", encoding="utf-8") as fh:
                fh.write(text + "\n")
        except OSError as exc:
            print(text)
            raise DataPlaneError(
                f"could not write {args.output}: {exc.strerror or exc}; the report is on stdout"
            ) from exc
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        print(text)
    return 0 if all(s["status"] == "ok" for s in suites.values()) else 1


def _host_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    for module in ("torch", "tensordict"):
        try:
            info[module] = importlib.import_module(module).__version__
        except (ImportError, AttributeError):
            info[module] = None
    return info


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted.path, scalar)`` for the scalar leaves of nested dicts (lists are skipped).

    A timing summary (``median``/``min``/``max``, :func:`kvplane_tools.bench.stats.summarize`) counts
    as its median.

    Examples:
        >>> list(_flatten({"a": {"median": 2.0, "min": 1.0, "max": 3.0}, "b": {"c": 1, "d": [1]}}))
        [('a', 2.0), ('b.c', 1)]
    """
    if isinstance(value, dict):
        if {"median", "min", "max"} <= value.keys():
            yield prefix, value["median"]
            return
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, (bool, int, float, str)) or value is None:
        yield prefix, value


def _headline_first(metrics: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Targets and ratios first (what a reader looks for), then the rest in report order."""
    headline = [m for m in metrics if any(word in m[0] for word in ("target", "ratio", "meets"))]
    return headline + [m for m in metrics if m not in headline]


def _bench_table(suites: dict[str, Any]) -> str:
    rows: list[list[Any]] = []
    for name, outcome in suites.items():
        rows.append([name, outcome["status"], f"{outcome['seconds']:.2f}s", outcome.get("error", "")])
        metrics = _headline_first(list(_flatten(outcome.get("result", {}))))
        for path, value in metrics[:_MAX_TABLE_METRICS]:
            rows.append(["", "", path, value])
        if len(metrics) > _MAX_TABLE_METRICS:
            rows.append(["", "", f"... {len(metrics) - _MAX_TABLE_METRICS} more in the JSON", ""])
    return table(["SUITE", "STATUS", "TIME / METRIC (medians)", "VALUE"], rows)
