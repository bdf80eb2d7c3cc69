"""The ``kvplane`` command line (also ``python -m kvplane``).

Core commands here: ``ls``, ``stats``, ``ping``, ``save`` and ``load``; more (such as ``demo`` and
``bench``) are plugged in as :class:`Command` objects from the entry point group
``kvplane.commands``, or exactly the ``commands`` passed to :func:`main`. With a TransferQueue
``--config`` a command *attaches* to the running deployment, never starting or tearing one down;
without ``--config`` it inspects a fresh, empty embedded store (to inspect a live client
in-process, call ``main([...], client=client)``). Exit codes: 0 success; 2 a usage error, found
before any work is done; 1 a failure while working. Either way stderr gets one line.

Design: docs/internals.md#kvplaneclipy--commands-options-and-exit-codes

Examples:
    >>> import torch
    >>> from kvplane.adapters.memory import MemoryDataPlaneClient
    >>> from kvplane.cli import main
    >>> client = MemoryDataPlaneClient()
    >>> tags = [{"group_id": "g0", "committed": True}] * 2
    >>> _ = client.put_samples(["k0", "k1"], "rollouts", {"x": torch.zeros(2, 3)}, tags=tags)
    >>> main(["ls"], client=client, commands={})
    PARTITION  KEYS  GROUPS  DEPTH
    rollouts   2     1       1
    0
    >>> main(["ls", "rollouts", "--tags"], client=client, commands={})
    KEY  TAGS
    k0   {"committed": true, "group_id": "g0"}
    k1   {"committed": true, "group_id": "g0"}
    0
    >>> client.close()
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from kvplane._cli_args import (
    config_source,
    existing_dir,
    integer,
    json_object,
    new_dir,
    non_empty,
    number,
    output_file,
)
from kvplane._client import DataPlaneClient
from kvplane._deps import install_hint, is_missing_dependency, require
from kvplane._errors import DataPlaneBadRequest, DataPlaneError, DataPlaneTimeout, DataPlaneUnavailable

__all__ = [
    "COMMANDS_GROUP",
    "Command",
    "build_parser",
    "config_source",
    "installed_commands",
    "integer",
    "json_default",
    "main",
    "non_empty",
    "number",
    "output_file",
    "table",
]

logger = logging.getLogger(__name__)

#: The entry point group whose objects (:class:`Command`) become ``kvplane`` subcommands.
COMMANDS_GROUP = "kvplane.commands"
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclasses.dataclass(frozen=True)
class Command:
    """One ``kvplane`` subcommand.

    Attributes:
        help: One line for ``kvplane --help``.
        run: Runs the command with the parsed arguments; returns the exit code (``None``: 0). A
            :class:`~kvplane.DataPlaneError` it raises exits 1 with one line on stderr.
        add_arguments: Adds the command's options to its parser (``None``: it has none). Give each
            option a ``type=`` from :mod:`kvplane._cli_args` so that a bad value is a usage error.
        description: The command's own ``--help`` text (default: ``help``).
        check: Checks the parsed options together before ``run`` (e.g. one must divide another);
            a :class:`~kvplane.DataPlaneBadRequest` it raises is a usage error (exit 2).
    """

    help: str
    run: Callable[[argparse.Namespace], int | None]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    description: str | None = None
    check: Callable[[argparse.Namespace], None] | None = None


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (``<prog>: error: ...``), exit 2."""

    def error(self, message: str) -> Any:  # noqa: D102 - argparse's hook
        self.exit(_usage_error(self.prog, message))


def _usage_error(prog: str, message: str) -> int:
    """Print a usage error as one line and return its exit code, 2."""
    print(f"{prog}: error: {message} (see {prog} --help)", file=sys.stderr)
    return 2


# ---------------------------------------------------------------------------------------------- entry point
def main(
    argv: Sequence[str] | None = None,
    *,
    client: DataPlaneClient | None = None,
    commands: Mapping[str, Command] | None = None,
) -> int:
    """Run the CLI and return its exit code (the ``kvplane`` console script exits with it).

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).
        client: Use this client for ``ls``/``stats``/``ping``/``save``/``load`` instead of building
            one (it is not closed); ``--config`` is then not allowed.
        commands: The commands to add to the core ones (default: :func:`installed_commands`).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(installed_commands() if commands is None else commands)
    try:
        args, unknown = parser.parse_known_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: return, never exit the caller
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    prog = f"{parser.prog} {args.command}"
    if unknown and not getattr(args, "lenient", False):
        return _usage_error(prog, f"unrecognized arguments: {' '.join(unknown)}")
    if args.log_level not in _LOG_LEVELS:  # from $KVPLANE_LOG_LEVEL: argparse checks only given values
        levels = ", ".join(_LOG_LEVELS)
        return _usage_error(parser.prog, f"KVPLANE_LOG_LEVEL={args.log_level!r} is not one of {levels}")
    args.injected_client = client
    if args.check is not None:
        try:
            args.check(args)
        except DataPlaneBadRequest as exc:
            return _usage_error(prog, str(exc))
    with _cli_logging(args.log_level):
        try:
            return int(args.handler(args) or 0)
        except DataPlaneError as exc:
            print(f"kvplane: {_error_kind(exc)}: {exc}", file=sys.stderr)
            return 1
        except ModuleNotFoundError as exc:  # a plugged-in command imported an optional package
            if not is_missing_dependency(exc):
                raise  # not an optional package: a broken install or a bug, keep the traceback
            print(
                f"kvplane: missing dependency: {exc.name} is not installed: {install_hint(exc.name or '')}",
                file=sys.stderr,
            )
            return 1
        except KeyboardInterrupt:
            print("kvplane: interrupted", file=sys.stderr)
            return 130


def installed_commands() -> dict[str, Command]:
    """The commands installed distributions declare in the ``kvplane.commands`` entry point group.

    One that cannot be loaded (a stale or broken install) becomes a command that says so when run,
    so the other commands keep working.
    """
    found: dict[str, Command] = {}
    for entry in importlib.metadata.entry_points(group=COMMANDS_GROUP):
        try:
            command = entry.load()
            if not isinstance(command, Command):
                raise TypeError(f"{type(command).__name__} is not a kvplane.cli.Command")
        except Exception as exc:
            command = _unloadable(entry.name, entry.value, exc)
        found.setdefault(entry.name, command)
    return found


def _unloadable(name: str, value: str, exc: Exception) -> Command:
    why = f"{type(exc).__name__}: {exc}"

    def fail(args: argparse.Namespace) -> int:
        raise DataPlaneError(
            f"command {name!r} ({value}) could not be loaded: {why}; reinstall kvplane (pip install -e .)"
        )

    return Command(
        help=f"(not loadable: {why})",
        run=fail,
        add_arguments=lambda parser: parser.set_defaults(lenient=True),  # report the load error
    )


def build_parser(commands: Mapping[str, Command]) -> argparse.ArgumentParser:
    """The argument parser: the core commands (``ls``, ``stats``, ``ping``), then ``commands``.

    Raises:
        DataPlaneBadRequest: A command in ``commands`` takes a core command's name.
    """
    from kvplane import __version__

    clash = sorted(set(commands) & set(CORE_COMMANDS))
    if clash:
        raise DataPlaneBadRequest(f"plugged-in commands {clash} would replace core kvplane commands")
    parser = _Parser(
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
    for name, command in {**CORE_COMMANDS, **commands}.items():
        child = sub.add_parser(name, help=command.help, description=command.description or command.help)
        if command.add_arguments is not None:
            command.add_arguments(child)
        child.set_defaults(handler=command.run, check=command.check)
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
    if is_missing_dependency(exc):
        return "missing dependency"
    if isinstance(exc, (DataPlaneUnavailable, DataPlaneTimeout)):
        return "unavailable"
    if isinstance(exc, DataPlaneBadRequest):
        return "bad request"
    return "error"


_NO_CONFIG_NOTE = (
    "kvplane: note: no --config: this looks at a new, empty embedded store inside this command's own "
    "process (an embedded store is not shared between processes); to inspect a deployment, pass "
    "--config FILE (a data plane YAML, or an example name such as --config transfer_queue)"
)


@contextmanager
def _inspection_client(args: argparse.Namespace) -> Iterator[tuple[DataPlaneClient, str]]:
    """The client to inspect and a label naming its backend; closes it only if it built it."""
    if args.injected_client is not None:
        if args.config is not None:
            raise DataPlaneBadRequest("--config cannot be combined with an explicit client")
        yield args.injected_client, type(args.injected_client).__name__
        return
    from kvplane._config import DataPlaneConfig, ObservabilityConfig
    from kvplane._factory import build_data_plane_client

    if args.config is None:
        print(_NO_CONFIG_NOTE, file=sys.stderr)
    cfg = DataPlaneConfig.load(args.config)  # --config was loaded (validated) while parsing
    # Inspection attaches and observes nothing: no exporter port, no callbacks from the YAML.
    cfg = dataclasses.replace(cfg, observability=ObservabilityConfig())
    label = cfg.display_name
    client = build_data_plane_client(cfg, bootstrap=False)
    try:
        yield client, label
    finally:
        client.close()


@contextmanager
def _inspected(args: argparse.Namespace, *, storage: bool = False) -> Iterator[Any]:
    """What ``ls``/``stats`` inspect: the checkpoint of ``--checkpoint`` (read offline), or a client."""
    if args.checkpoint is None:
        with _inspection_client(args) as (client, _label):
            yield client
        return
    if args.injected_client is not None:
        raise DataPlaneBadRequest("--checkpoint cannot be combined with an explicit client")
    from kvplane._checkpoint_view import CheckpointView

    yield CheckpointView(args.checkpoint, storage=storage)


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True, default=json_default))


def json_default(value: Any) -> Any:
    """JSON for what reports and tags commonly hold: numpy/torch scalars and arrays, sets, dataclasses
    (``json.dumps(doc, default=json_default)``; for plugged-in commands too).

    Examples:
        >>> import torch
        >>> json.dumps({"n": torch.tensor(3), "s": {"b", "a"}}, default=json_default)
        '{"n": 3, "s": ["a", "b"]}'
    """
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


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces (the last column is not padded; ``None`` is ``-``).

    Examples:
        >>> print(table(["NAME", "VALUE"], [["ratio", 0.97123], ["missing", None]]))
        NAME     VALUE
        ratio    0.9712
        missing  -
    """
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
        return json.dumps(value, sort_keys=True, default=json_default)
    return str(value)


# ---------------------------------------------------------------------------------------------- ls
def _cmd_ls(args: argparse.Namespace) -> int:
    with _inspected(args) as client:
        if args.partition is not None and not args.groups:
            return _ls_keys(client, args)
        listing = client.list_keys(args.partition)
        if args.partition is None and not (args.tags or args.groups):
            summary = {p: _partition_summary(client, p, len(keys)) for p, keys in sorted(listing.items())}
            if args.json:
                _print_json(summary)
            elif not summary:
                print(_NOTHING)
            else:
                rows = [[p, s["keys"], s["groups"], s["depth"]] for p, s in summary.items()]
                print(table(["PARTITION", "KEYS", "GROUPS", "DEPTH"], rows))
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
    if not doc:
        print(_NOTHING)
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
                "size_bytes",
            ]
            rows = [[g[f] for f in fields] + [_age(g["age_s"])] for g in items]
            print(table([*headers, "AGE_S"], rows))
            ageless = sum(1 for g in items if g["age_s"] is None)
            if ageless:
                print(
                    f"({ageless} group(s) carry no created_at tag, so their age is unknown: "
                    "evict_stale ages them from when it first sees them)"
                )
        elif args.tags:
            print(table(["KEY", "TAGS"], list(items.items())))
        else:
            print("\n".join(items))
    return 0


_NOTHING = "(no partitions)"


def _ls_keys(client: Any, args: argparse.Namespace) -> int:
    """A partition's keys (with ``--tags``, their tags), one cursor page at a time."""
    cursor, first, shown, doc = 0, True, 0, {}
    while True:
        cursor, page = client.list_keys(args.partition, cursor=cursor, count=args.count, match=args.match)
        items = page.get(args.partition, {})
        shown += len(items)
        if args.json:
            doc.update(items)
        elif items and args.tags:
            lines = table(["KEY", "TAGS"], list(items.items())).splitlines()
            print("\n".join(lines if first else lines[1:]))
            first = False
        elif items:
            print("\n".join(items))
        if cursor == 0:
            break
    if args.json:
        _print_json({args.partition: doc if args.tags else list(doc)})
    elif not shown:
        print(f"(partition {args.partition!r} has no keys{'' if args.match is None else ' matching'})")
    return 0


def _partition_summary(client: Any, partition: str, n_keys: int) -> dict[str, int]:
    groups = client.list_metadata(partition)
    return {"keys": n_keys, "groups": len(groups), "depth": client.depth(partition)}


def _group_record(group: Any) -> dict[str, Any]:
    record = dataclasses.asdict(group)
    record["num_keys"] = len(group.keys)
    record["is_complete"] = group.is_complete
    record["age_s"] = None if group.created_at is None else time.time() - group.created_at
    return record


def _age(age_s: float | None) -> str:
    return "unknown" if age_s is None else f"{age_s:.1f}"


# ---------------------------------------------------------------------------------------------- stats
def _cmd_stats(args: argparse.Namespace) -> int:
    from kvplane._observability import MetricsDataPlaneClient

    if args.checkpoint is not None:
        return _checkpoint_stats(args)

    exporter = None
    if args.prometheus:
        require("prometheus_client", purpose="kvplane stats --prometheus")
        from kvplane._prometheus import PrometheusExporter

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
        print(table(["STAT", "VALUE"], rows))
    return 0


def _checkpoint_stats(args: argparse.Namespace) -> int:
    with _inspected(args, storage=True) as view:
        doc = view.stats()
    if args.json:
        _print_json(doc)
        return 0
    keys = ("checkpoint", "storage_saved", "partitions", "keys", "groups", "depth", "tensor_bytes")
    print(table(["STAT", "VALUE"], [[k, doc[k]] for k in keys] + [["user_metadata", doc["user_metadata"]]]))
    parts = doc["by_partition"]
    if not parts:
        print("\n" + _NOTHING)
        return 0
    rows = [[p, s["keys"], s["groups"], s["depth"], s["num_samples"]] for p, s in parts.items()]
    print("\n" + table(["PARTITION", "KEYS", "GROUPS", "DEPTH", "NUM_SAMPLES"], rows))
    fields = [(p, f, v) for p, s in parts.items() for f, v in s["fields"].items()]
    rows = [[p, f, v["kind"], v["rows"], v["bytes"]] for p, f, v in fields]
    if rows:
        print("\n" + table(["PARTITION", "FIELD", "KIND", "ROWS", "BYTES"], rows))
    rows = [[p, t, v["claimed"], v["claimed_total"]] for p, s in parts.items() for t, v in s["tasks"].items()]
    if rows:
        print("\n" + table(["PARTITION", "TASK", "CLAIMED", "CLAIMED_TOTAL"], rows))
    return 0


# ---------------------------------------------------------------------------------------------- save, load
def _cmd_save(args: argparse.Namespace) -> int:
    with _inspection_client(args) as (client, label):
        client.save_checkpoint(args.dir, include_storage=not args.no_storage, metadata=args.metadata)
    print(f"saved {label} to {args.dir} ({'without' if args.no_storage else 'with'} storage)")
    return 0


def _cmd_load(args: argparse.Namespace) -> int:
    with _inspection_client(args) as (client, label):
        client.load_checkpoint(args.dir)
    print(f"loaded {args.dir} into {label}")
    return 0


def _check_attached(args: argparse.Namespace) -> None:
    """``save``/``load`` act on a deployment they attach to: an embedded store here would be empty."""
    if args.injected_client is not None:
        return
    if args.config is None:
        raise DataPlaneBadRequest(
            f"{args.command} needs --config FILE naming the deployment to attach to (e.g. --config "
            "transfer_queue); an embedded store lives inside its own process: call "
            f"kvplane.{args.command}_checkpoint(DIR) there"
        )
    if args.config.impl == "embedded":
        raise DataPlaneBadRequest(
            f"--config names the embedded backend, whose store lives inside the process that made it (this "
            f"command's own would be empty): call kvplane.{args.command}_checkpoint(DIR) in that process"
        )


def _check_stats(args: argparse.Namespace) -> None:
    if args.checkpoint is not None and args.prometheus:
        raise DataPlaneBadRequest(
            "--prometheus reports a live backend; it cannot be combined with --checkpoint"
        )


# ---------------------------------------------------------------------------------------------- ping
def _cmd_ping(args: argparse.Namespace) -> int:
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


# ---------------------------------------------------------------------------------------------- registry
def _inspect_arguments(parser: Any) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        type=config_source,
        help="a data plane YAML or an example name (e.g. transfer_queue); default: a new, empty "
        "embedded store in this process",
    )


def _inspect_or_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    _inspect_arguments(source)
    source.add_argument(
        "--checkpoint",
        metavar="DIR",
        type=existing_dir,
        help="inspect this checkpoint directory offline instead (no backend is started)",
    )


def _ls_arguments(parser: argparse.ArgumentParser) -> None:
    _inspect_or_checkpoint_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "partition", nargs="?", type=non_empty, help="list this partition's keys (default: list partitions)"
    )
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--tags", action="store_true", help="show each key's tags")
    shown.add_argument("--groups", action="store_true", help="show rollout groups instead of keys")
    parser.add_argument(
        "--count",
        type=integer(minimum=1, maximum=1_000_000),
        default=1000,
        help="key slots per listing page (default 1000)",
    )
    parser.add_argument("--match", type=non_empty, metavar="PREFIX", help="only keys starting with PREFIX")


def _check_ls(args: argparse.Namespace) -> None:
    if args.partition is None and args.match is not None:
        raise DataPlaneBadRequest("--match lists one partition's keys: name the partition")
    if args.groups and args.match is not None:
        raise DataPlaneBadRequest("--match filters keys, not --groups")


def _stats_arguments(parser: argparse.ArgumentParser) -> None:
    _inspect_or_checkpoint_arguments(parser)
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON instead of a table")
    output.add_argument("--prometheus", action="store_true", help="print Prometheus text exposition")


def _ping_arguments(parser: argparse.ArgumentParser) -> None:
    _inspect_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a line")
    parser.add_argument(
        "--timeout",
        type=number(minimum=0, maximum=_MAX_TIMEOUT_S, include_minimum=False),
        default=5.0,
        metavar="S",
        help=f"deadline in seconds, > 0 and <= {_MAX_TIMEOUT_S:g} (default 5)",
    )


_MAX_TIMEOUT_S = 86400.0  # a day: beyond any sensible ping, far below threading.TIMEOUT_MAX


def _save_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dir", metavar="DIR", type=new_dir, help="the checkpoint directory (replaced if it is one)"
    )
    _attach_argument(parser)
    parser.add_argument(
        "--metadata",
        metavar="JSON",
        type=json_object,
        help="a JSON object kept in the checkpoint's metadata.json",
    )
    parser.add_argument(
        "--no-storage", action="store_true", help="save keys, tags, registrations and claims, not the values"
    )


def _load_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", type=existing_dir, help="the checkpoint directory")
    _attach_argument(parser)


def _attach_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        type=config_source,
        help="the deployment to attach to: a data plane YAML or an example name (required; not embedded)",
    )


#: kvplane's own commands (plugged-in commands cannot replace them).
CORE_COMMANDS: dict[str, Command] = {
    "ls": Command("list partitions, keys, tags or groups", _cmd_ls, _ls_arguments, check=_check_ls),
    "stats": Command(
        "backend inventory, capabilities and latency", _cmd_stats, _stats_arguments, check=_check_stats
    ),
    "ping": Command("check that the backend answers", _cmd_ping, _ping_arguments),
    "save": Command(
        "save the attached deployment's store to a checkpoint directory", _cmd_save, _save_arguments,
        check=_check_attached,
    ),
    "load": Command(
        "replace the attached deployment's store with a checkpoint's", _cmd_load, _load_arguments,
        check=_check_attached,
    ),
}
