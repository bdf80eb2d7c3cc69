"""The example data plane configs that ship with kvplane, found by name from any directory.

``embedded`` (the default backend), ``transfer_queue`` (TransferQueue on Ray, SimpleStorage) and
``mooncake`` (TransferQueue with MooncakeStore over TCP). Anything that takes a config accepts the
bare name (``kvplane.init("transfer_queue")``, ``kvplane ls --config transfer_queue``); the rule
that tells a name from a path is :func:`kvplane._config.resolve_config_path`'s.

Examples:
    >>> import kvplane.examples
    >>> kvplane.examples.names()
    ['embedded', 'mooncake', 'transfer_queue']
    >>> kvplane.examples.path("transfer_queue").name
    'transfer_queue.yaml'
    >>> kvplane.examples.path("nope")
    Traceback (most recent call last):
    ...
    kvplane._errors.DataPlaneBadRequest: no example config named 'nope' (examples: embedded, ...)
"""

from __future__ import annotations

from pathlib import Path

from kvplane._errors import DataPlaneBadRequest

__all__ = ["names", "path"]

_DIR = Path(__file__).resolve().parent
_SUFFIX = ".yaml"


def names() -> list[str]:
    """The example configs' names, sorted."""
    return sorted(p.name.removesuffix(_SUFFIX) for p in _DIR.glob(f"*{_SUFFIX}"))


def path(name: str) -> Path:
    """The absolute path of the example config ``name`` (``kvplane/examples/<name>.yaml``).

    Raises:
        DataPlaneBadRequest: There is no example of that name (the message lists them).
    """
    if not isinstance(name, str) or name not in names():
        raise DataPlaneBadRequest(f"no example config named {name!r} (examples: {', '.join(names())})")
    return _DIR / f"{name}{_SUFFIX}"
