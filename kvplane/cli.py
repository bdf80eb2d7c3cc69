"""The ``kvplane`` command line (also ``python -m kvplane``).

Subcommands:

- ``kvplane demo``: the main job, a GRPO-style data flow. kvplane never imports ``loaders``, so the
  demo (which drives the loaders) is a command plugged in by the distribution: the entry point
  ``demo`` of the group ``kvplane.commands`` (``loaders.demo``), loaded only when asked for.
- ``kvplane bench [--suite NAME ...] [--quick] [--output FILE.json]``: run the benchmark suites found
  in :mod:`kvplane.bench` (every module with a ``run(*, quick=False) -> dict``); print one JSON
  document to stdout (or ``--output``) and a short table to stderr. Exit 1 if a suite failed.
- ``kvplane ls [PARTITION] [--tags] [--groups]``: partitions with key, group and depth counts; with a
  partition, its keys (``--tags``: with their tags; ``--groups``: its rollout groups).
- ``kvplane stats [--prometheus]``: inventory, capabilities and ping latency of the backend
  (``--prometheus``: the same as Prometheus text exposition).
- ``kvplane ping [--timeout S]``: ``PONG`` or exit 1 with ``unavailable: ...``.

``ls``, ``stats`` and ``ping`` take ``--config FILE`` (a data plane YAML) and ``--json``. With a
TransferQueue config they *attach* to the running deployment (``bootstrap=False``): they never start
or tear one down, and the config's observability settings are ignored. Without ``--config`` they
inspect a fresh embedded backend, which is empty (the embedded backend lives inside one process);
to inspect a live client in-process, call ``main([...], client=client)``.

A kvplane error ends the command with exit code 1 and one line on stderr (``kvplane: <kind>:
<message>``); usage errors exit 2. ``--log-level`` (or ``KVPLANE_LOG_LEVEL``) attaches a stderr
handler to the ``kvplane`` logger for the duration of the command; the library itself never
configures logging.

Examples:
    >>> import torch
    >>> from kvplane.adapters.memory import MemoryDataPlaneClient
    >>> from kvplane.cli import main
    >>> client = MemoryDataPlaneClient()
    >>> tags = [{"group_id": "g0", "committed": True}] * 2
    >>> _ = client.put_samples(["k0", "k1"], "rollouts", {"x": torch.zeros(2, 3)}, tags=tags)
    >>> main(["ls"], client=client)
    PARTITION  KEYS  GROUPS  DEPTH
    rollouts   2     1       1
    0
    >>> main(["ls", "rollouts", "--tags"], client=client)
    KEY  TAGS
    k0   {"committed": true, "group_id": "g0"}
    k1   {"committed": true, "group_id": "g0"}
    0
    >>> client.close()
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import importlib.metadata
import json
import logging
import os
import pkgutil
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kvplane.client import DataPlaneClient
from kvplane.errors import DataPlaneBadRequest, DataPlaneError, DataPlaneTimeout, DataPlaneUnavailable

__all__ = ["bench_suites", "build_parser", "main"]

logger = logging.getLogger(__name__)

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_MAX_TABLE_METRICS = 12


# ---------------------------------------------------------------------------------------------- entry point
def main(argv: Sequence[str] | None = None, *, client: DataPlaneClient | None = None) -> int:
    """Run the CLI and return its exit code (the ``kvplane`` console script exits with it).

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).
        client: Inspect this client with ``ls``/``stats``/``ping`` instead of building one (it is not
            closed); ``--config`` is then not allowed.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(with_demo_arguments="demo" in argv)
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown and not getattr(args, "lenient", False):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as exc:  # --help, --version and usage errors: return, never exit the caller
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    args.injected_client = client
    with _cli_logging(args.log_level):
        try:
            return int(args.handler(args) or 0)
        except DataPlaneError as exc:
            print(f"kvplane: {_error_kind(exc)}: {exc}", file=sys.stderr)
            return 1
        except ModuleNotFoundError as exc:
            if "pip install" not in str(exc):
                raise
            print(f"kvplane: missing dependency: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("kvplane: interrupted", file=sys.stderr)
            return 130


COMMANDS_GROUP = "kvplane.commands"


def load_command(name: str) -> Any:
    """The module an installed distribution plugs in as ``kvplane <name>``, or ``None``.

    It must define ``run(args) -> int`` and may define ``add_arguments(parser)``.
    """
    for entry in importlib.metadata.entry_points(group=COMMANDS_GROUP, name=name):
        return entry.load()
    return None


def build_parser(*, with_demo_arguments: bool = False) -> argparse.ArgumentParser:
    """The argument parser; ``with_demo_arguments`` loads the demo command to add its options."""
    from kvplane import __version__

    parser = argparse.ArgumentParser(
        prog="kvplane", description="kvplane: the data plane for RL post-training (inspect, demo, benchmark)."
    )
    parser.add_argument("--version", action="version", version=f"kvplane {__version__}")
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=_LOG_LEVELS,
        default=os.environ.get("KVPLANE_LOG_LEVEL", "WARNING").upper(),
        help="log level of the kvplane loggers for this command (default: $KVPLANE_LOG_LEVEL or WARNING)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="run the quickstart demo", description="Run the kvplane quickstart demo."
    )
    if with_demo_arguments:
        command = load_command("demo")
        if command is None:  # let the handler say what is missing instead of "unrecognized arguments"
            demo.set_defaults(lenient=True)
        elif hasattr(command, "add_arguments"):
            command.add_arguments(demo)
    demo.set_defaults(handler=_cmd_demo)

    bench = sub.add_parser("bench", help="run benchmark suites, print JSON", description=_cmd_bench.__doc__)
    bench.add_argument(
        "--suite", action="append", metavar="NAME", help="a suite to run (repeatable; default: all)"
    )
    bench.add_argument("--quick", action="store_true", help="small sizes and few repeats (smoke run)")
    bench.add_argument("--output", metavar="FILE.json", help="write the JSON here instead of stdout")
    bench.add_argument("--list", action="store_true", help="list the suites and exit")
    bench.set_defaults(handler=_cmd_bench)

    inspect = argparse.ArgumentParser(add_help=False)
    inspect.add_argument(
        "--config", metavar="FILE", help="a data plane YAML (default: a fresh embedded backend)"
    )
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")

    ls = sub.add_parser("ls", parents=[inspect], help="list partitions, keys, tags or groups")
    ls.add_argument("partition", nargs="?", help="list this partition's keys (default: list partitions)")
    ls.add_argument("--tags", action="store_true", help="show each key's tags")
    ls.add_argument("--groups", action="store_true", help="show rollout groups instead of keys")
    ls.set_defaults(handler=_cmd_ls)

    stats = sub.add_parser("stats", parents=[inspect], help="backend inventory, capabilities and latency")
    stats.add_argument("--prometheus", action="store_true", help="print Prometheus text exposition")
    stats.set_defaults(handler=_cmd_stats)

    ping = sub.add_parser("ping", parents=[inspect], help="check that the backend answers")
    ping.add_argument(
        "--timeout", type=float, default=5.0, metavar="S", help="deadline in seconds (default 5)"
    )
    ping.set_defaults(handler=_cmd_ping)
    return parser


# ---------------------------------------------------------------------------------------------- plumbing
@contextmanager
def _cli_logging(level: str) -> Iterator[None]:
    """Send ``kvplane`` log records at ``level`` and above to stderr while the command runs."""
    package_logger = logging.getLogger("kvplane")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    previous = package_logger.level
    package_logger.addHandler(handler)
    package_logger.setLevel(level)
    try:
        yield
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous)


def _error_kind(exc: DataPlaneError) -> str:
    if isinstance(exc, (DataPlaneUnavailable, DataPlaneTimeout)):
        return "unavailable"
    if isinstance(exc, DataPlaneBadRequest):
        return "bad request"
    return "error"


@contextmanager
def _inspection_client(args: argparse.Namespace) -> Iterator[tuple[DataPlaneClient, str]]:
    """The client to inspect and a label naming its backend; closes it only if it built it."""
    if args.injected_client is not None:
        if args.config is not None:
            raise DataPlaneBadRequest("--config cannot be combined with an explicit client")
        yield args.injected_client, type(args.injected_client).__name__
        return
    from kvplane.config import DataPlaneConfig, ObservabilityConfig
    from kvplane.factory import build_data_plane_client

    cfg = DataPlaneConfig.load(args.config)
    # Inspection attaches and observes nothing: no exporter port, no callbacks from the YAML.
    cfg = dataclasses.replace(cfg, observability=ObservabilityConfig())
    label = cfg.impl if cfg.backend is None else f"{cfg.impl}/{cfg.backend}"
    client = build_data_plane_client(cfg, bootstrap=False)
    try:
        yield client, label
    finally:
        client.close()


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True, default=_json_default))


def _json_default(value: Any) -> Any:
    """JSON for what suites and tags commonly hold: numpy/torch scalars and arrays, sets, dataclasses."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    for method in ("item", "tolist"):
        convert = getattr(value, method, None)
        if callable(convert):
            try:
                return convert()
            except (TypeError, ValueError, RuntimeError):
                continue
    return str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces (the last column is not padded)."""
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i < len(row) - 1 else c for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    )


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, default=_json_default)
    return str(value)


# ---------------------------------------------------------------------------------------------- demo
def _cmd_demo(args: argparse.Namespace) -> int:
    command = load_command("demo")
    if command is None:
        raise DataPlaneError(
            f"the demo is not part of this installation (no {COMMANDS_GROUP!r} entry point named 'demo'; "
            "reinstall kvplane with pip install -e .)"
        )
    return int(command.run(args) or 0)


# ---------------------------------------------------------------------------------------------- bench
BENCH_GROUP = "kvplane.bench"


def _suite_modules() -> dict[str, str]:
    """Suite name -> module: the modules of :mod:`kvplane.bench` that define a top-level ``run``
    (found by reading the sources, so helpers such as ``stats`` are skipped and nothing is imported),
    plus suites other packages plug in through the ``kvplane.bench`` entry point group (``loader``:
    kvplane never imports loaders)."""
    import kvplane.bench

    modules = {}
    for info in pkgutil.iter_modules(kvplane.bench.__path__):
        if info.ispkg or info.name.startswith("_"):
            continue
        spec = info.module_finder.find_spec(info.name, None)  # type: ignore[call-arg]
        if spec is not None and spec.origin and _defines_run(spec.origin):
            modules[info.name] = f"kvplane.bench.{info.name}"
    for entry in importlib.metadata.entry_points(group=BENCH_GROUP):
        modules.setdefault(entry.name, entry.value)
    return modules


def bench_suites() -> list[str]:
    """The benchmark suites, sorted.

    Examples:
        >>> "stats" in bench_suites(), {"kv", "balance", "loader"} <= set(bench_suites())
        (False, True)
    """
    return sorted(_suite_modules())


def _defines_run(path: str) -> bool:
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=path)
    except (OSError, SyntaxError, UnicodeDecodeError):
        return True  # let running it report the problem instead of hiding the suite
    return any(isinstance(node, ast.FunctionDef) and node.name == "run" for node in tree.body)


def _selected_suites(requested: list[str] | None) -> list[str]:
    available = bench_suites()
    if not requested:
        return available
    names = [n.strip() for item in requested for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise DataPlaneBadRequest(f"unknown bench suite(s) {unknown}; available: {available}")
    return list(dict.fromkeys(names))


def _run_suite(name: str, *, quick: bool) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        run: Callable[..., dict[str, Any]] = importlib.import_module(_suite_modules()[name]).run
        result = run(quick=quick)
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


def _cmd_bench(args: argparse.Namespace) -> int:
    """Run benchmark suites and report JSON (ratios measured side by side in one run)."""
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    import kvplane

    if args.list:
        print("\n".join(bench_suites()))
        return 0
    names = _selected_suites(args.suite)
    if not names:
        raise DataPlaneBadRequest("no benchmark suites are installed in kvplane.bench")
    disable = True if os.environ.get("KVPLANE_DISABLE_PROGRESS_BARS") else None  # None: off when not a TTY
    suites: dict[str, Any] = {}
    with logging_redirect_tqdm(loggers=[logging.getLogger("kvplane")]):
        bar = tqdm(names, desc="kvplane bench", unit="suite", disable=disable, file=sys.stderr)
        for name in bar:
            bar.set_postfix_str(name)
            suites[name] = _run_suite(name, quick=args.quick)
    doc = {
        "kvplane_version": kvplane.__version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "host": _host_info(),
        "suites": suites,
    }
    text = json.dumps(doc, indent=2, default=_json_default)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    else:
        print(text)
    print(_bench_table(suites), file=sys.stderr)
    if args.output:
        print(f"wrote {args.output}", file=sys.stderr)
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

    A timing summary (``median``/``min``/``max``, :func:`kvplane.bench.stats.summarize`) counts as its median.
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
    return _table(["SUITE", "STATUS", "TIME / METRIC (medians)", "VALUE"], rows)


# ---------------------------------------------------------------------------------------------- ls
def _cmd_ls(args: argparse.Namespace) -> int:
    with _inspection_client(args) as (client, _label):
        listing = client.list_keys(args.partition)
        if args.partition is None and not (args.tags or args.groups):
            summary = {p: _partition_summary(client, p, len(keys)) for p, keys in sorted(listing.items())}
            if args.json:
                _print_json(summary)
            elif not summary:
                print("(no partitions)")
            else:
                rows = [[p, s["keys"], s["groups"], s["depth"]] for p, s in summary.items()]
                print(_table(["PARTITION", "KEYS", "GROUPS", "DEPTH"], rows))
            return 0
        partitions = [args.partition] if args.partition is not None else sorted(listing)
        if args.groups:
            doc: dict[str, Any] = {p: [_group_record(g) for g in client.list_metadata(p)] for p in partitions}
        elif args.tags:
            doc = {p: dict(sorted(listing.get(p, {}).items())) for p in partitions}
        else:
            doc = {p: sorted(listing.get(p, {})) for p in partitions}
    if args.json:
        _print_json(doc)
        return 0
    for i, (partition, items) in enumerate(doc.items()):
        if len(doc) > 1:
            print(("\n" if i else "") + f"# {partition}")
        if not items:
            print(f"(partition {partition!r} has no {'groups' if args.groups else 'keys'})")
        elif args.groups:
            headers = ["GROUP", "KEYS", "EXPECTED", "COMMITTED", "COMPLETE", "WEIGHT_VERSION", "SIZE_BYTES"]
            fields = [
                "group_id",
                "num_keys",
                "expected_num_keys",
                "committed",
                "is_complete",
                "weight_version",
            ]
            print(_table(headers, [[g[f] for f in fields] + [g["size_bytes"]] for g in items]))
        elif args.tags:
            print(_table(["KEY", "TAGS"], list(items.items())))
        else:
            print("\n".join(items))
    return 0


def _partition_summary(client: DataPlaneClient, partition: str, n_keys: int) -> dict[str, int]:
    groups = client.list_metadata(partition)
    return {"keys": n_keys, "groups": len(groups), "depth": client.depth(partition)}


def _group_record(group: Any) -> dict[str, Any]:
    record = dataclasses.asdict(group)
    record["num_keys"] = len(group.keys)
    record["is_complete"] = group.is_complete
    return record


# ---------------------------------------------------------------------------------------------- stats
def _cmd_stats(args: argparse.Namespace) -> int:
    from kvplane.observability import MetricsDataPlaneClient

    exporter = None
    if args.prometheus:
        from kvplane.prometheus import PrometheusExporter

        exporter = PrometheusExporter()
    with _inspection_client(args) as (inner, label):
        client = MetricsDataPlaneClient(inner)
        if exporter is not None:
            exporter.track(client)
        start = time.perf_counter()
        client.ping()
        ping_ms = (time.perf_counter() - start) * 1000.0
        listing = client.list_keys()
        keys = {p: len(k) for p, k in sorted(listing.items())}
        groups = {p: client.list_metadata(p) for p in keys}
        depth = {p: client.depth(p) for p in keys}
        capabilities = dataclasses.asdict(client.get_capabilities())
    sizes = [g.size_bytes for gs in groups.values() for g in gs if g.size_bytes is not None]
    doc = {
        "backend": label,
        "ping_ms": round(ping_ms, 3),
        "partitions": len(keys),
        "keys": sum(keys.values()),
        "groups": sum(len(g) for g in groups.values()),
        "depth": sum(depth.values()),
        "group_size_bytes": sum(sizes) if sizes else None,
        "capabilities": capabilities,
        "by_partition": {p: {"keys": keys[p], "groups": len(groups[p]), "depth": depth[p]} for p in keys},
        "inspection_ops": client.snapshot()["ops_by_op"],
    }
    if exporter is not None:
        exporter.set_inventory(keys, depth)
        sys.stdout.write(exporter.exposition())
    elif args.json:
        _print_json(doc)
    else:
        enabled = [name.removeprefix("supports_") for name, on in capabilities.items() if on]
        rows = [[k, doc[k]] for k in ("backend", "ping_ms", "partitions", "keys", "groups", "depth")]
        rows.append(["group_size_bytes", doc["group_size_bytes"]])
        rows.append(["capabilities", ", ".join(enabled) or "none"])
        print(_table(["STAT", "VALUE"], rows))
    return 0


# ---------------------------------------------------------------------------------------------- ping
def _cmd_ping(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        raise DataPlaneBadRequest(f"--timeout must be positive, got {args.timeout}")
    try:
        with _inspection_client(args) as (client, label):
            start = time.perf_counter()
            client.ping(timeout_s=args.timeout)
            ms = (time.perf_counter() - start) * 1000.0
    except DataPlaneBadRequest:
        raise  # a bad config or bad arguments, not an unavailable backend
    except DataPlaneError as exc:
        if args.json:
            _print_json({"ok": False, "error": str(exc)})
        raise DataPlaneUnavailable(str(exc)) from exc
    if args.json:
        _print_json({"ok": True, "backend": label, "ms": round(ms, 3)})
    else:
        print(f"PONG ({label}, {ms:.2f} ms)")
    return 0
