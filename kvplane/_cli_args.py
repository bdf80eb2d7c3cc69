"""Argument types for ``kvplane`` commands: every value is checked while the command line is parsed.

A :class:`~kvplane.cli.Command` passes these as ``type=`` to ``parser.add_argument``; a bad value is
then a usage error (exit 2, one line naming the option) before the command does any work. Numbers
must be finite and in range; an output file's directory must exist and take a new file; a config is
loaded (and so validated) on the spot; a directory to read must exist, one to write must have an
existing parent.

Examples:
    >>> import argparse
    >>> steps = integer(minimum=1)
    >>> steps("12")
    12
    >>> steps("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be an integer >= 1, got '0'
    >>> number(minimum=0, maximum=1, include_maximum=False)("1.0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be a number >= 0 and < 1, got '1.0'
    >>> config_source("transfer_queue").impl
    'transfer_queue'
    >>> json_object('{"step": 10}')
    {'step': 10}
    >>> json_object("[1]")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be a JSON object, got '[1]'
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kvplane._config import DataPlaneConfig
from kvplane._errors import DataPlaneBadRequest

__all__ = [
    "config_source",
    "existing_dir",
    "integer",
    "json_object",
    "new_dir",
    "non_empty",
    "number",
    "output_file",
]


def integer(*, minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    """An argument type for an integer in ``[minimum, maximum]`` (either bound may be left open)."""
    bounds = _bounds(minimum, maximum, True, True)

    def parse(value: str) -> int:
        try:
            result = int(value)
        except ValueError:
            result = None
        if (
            result is None
            or (minimum is not None and result < minimum)
            or (maximum is not None and result > maximum)
        ):
            raise argparse.ArgumentTypeError(f"must be an integer{bounds}, got {value!r}")
        return result

    return parse


def number(
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    include_minimum: bool = True,
    include_maximum: bool = True,
) -> Callable[[str], float]:
    """An argument type for a finite number between ``minimum`` and ``maximum``."""
    bounds = _bounds(minimum, maximum, include_minimum, include_maximum)

    def parse(value: str) -> float:
        try:
            result = float(value)
        except ValueError:
            result = math.nan
        ok = math.isfinite(result)
        if ok and minimum is not None:
            ok = result >= minimum if include_minimum else result > minimum
        if ok and maximum is not None:
            ok = result <= maximum if include_maximum else result < maximum
        if not ok:
            raise argparse.ArgumentTypeError(f"must be a number{bounds}, got {value!r}")
        return result

    return parse


def _bounds(minimum: float | None, maximum: float | None, include_min: bool, include_max: bool) -> str:
    parts = []
    if minimum is not None:
        parts.append(f"{'>=' if include_min else '>'} {minimum:g}")
    if maximum is not None:
        parts.append(f"{'<=' if include_max else '<'} {maximum:g}")
    return (" " + " and ".join(parts)) if parts else ""


def non_empty(value: str) -> str:
    """An argument type for a non-empty string (a partition name, a suite name)."""
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def config_source(value: str) -> DataPlaneConfig:
    """An argument type for ``--config``: a YAML path or an example's name, loaded and validated.

    The rule for names is :func:`kvplane._config.resolve_config_path`'s.
    """
    try:
        return DataPlaneConfig.load(value)
    except DataPlaneBadRequest as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def output_file(*suffixes: str) -> Callable[[str], Path]:
    """An argument type for a file the command writes when it is done (e.g. ``--output``, ``--plot``).

    Checked up front: the suffix is one of ``suffixes`` (any when none is given), the path is not a
    directory, its directory exists and a file can be created in it, and an existing file is writable.
    """
    allowed = tuple(s.lower() for s in suffixes)

    def parse(value: str) -> Path:
        if not value:
            raise argparse.ArgumentTypeError("must be a file path")
        path = Path(value).expanduser()
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{value!r} is a directory, not a file")
        if allowed and path.suffix.lower() not in allowed:
            raise argparse.ArgumentTypeError(f"must end in {' or '.join(allowed)}, got {value!r}")
        parent = path.parent
        if not parent.is_dir():
            raise argparse.ArgumentTypeError(f"directory {str(parent)!r} does not exist (for {value!r})")
        if path.exists() and not os.access(path, os.W_OK):
            raise argparse.ArgumentTypeError(f"{value!r} is not writable")
        try:  # a real probe: permissions, read-only mounts and root all answer truthfully
            with tempfile.NamedTemporaryFile(dir=parent, prefix=".kvplane-probe-"):
                pass
        except OSError as exc:
            raise argparse.ArgumentTypeError(
                f"cannot write in {str(parent)!r}: {exc.strerror or exc}"
            ) from exc
        return path

    return parse


def existing_dir(value: str) -> Path:
    """An argument type for a directory that must exist (a checkpoint to load or inspect).

    A directory whose save died between its renames exists as ``<dir>.old`` only; that is accepted
    too (loading reads it, as ``load_checkpoint`` does).
    """
    path = Path(value).expanduser()
    if not value or not (path.is_dir() or path.with_name(path.name + ".old").is_dir()):
        raise argparse.ArgumentTypeError(f"directory {value!r} does not exist")
    return path


def new_dir(value: str) -> Path:
    """An argument type for a directory the command (re)writes: not a file, its parent exists."""
    path = Path(value).expanduser()
    if not value or path.is_file():
        raise argparse.ArgumentTypeError(
            f"{value!r} is a file, not a directory" if value else "must be a path"
        )
    if not path.resolve().parent.is_dir():
        raise argparse.ArgumentTypeError(f"directory {str(path.parent)!r} does not exist (for {value!r})")
    return path


def json_object(value: str) -> dict[str, Any]:
    """An argument type for a JSON object (``--metadata '{"step": 10}'``)."""
    try:
        doc = json.loads(value)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {value!r}")
    return doc
