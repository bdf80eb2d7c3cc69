"""Optional dependencies: which ``kvplane[extra]`` installs each one, and a typed error when it is missing.

kvplane's core needs torch, tensordict, numpy, PyYAML and tqdm; everything else comes with an extra
(``pyproject.toml``). :func:`require` checks, without importing anything, that the modules a feature
needs are importable and otherwise raises :class:`~kvplane.DataPlaneUnavailable` whose message ends
with the ``pip install`` line (its ``__cause__`` is the ``ModuleNotFoundError``, which is how the CLI
tells a missing dependency from an unreachable backend).

Examples:
    >>> require("yaml", purpose="reading configs")           # installed: returns quietly
    >>> install_hint("matplotlib")
    "pip install 'kvplane[plot]'"
    >>> require("no_such_module_kvplane", purpose="this example")
    Traceback (most recent call last):
    ...
    kvplane._errors.DataPlaneUnavailable: this example needs 'no_such_module_kvplane', which is not installed
"""

from __future__ import annotations

import importlib.util

from kvplane._errors import DataPlaneUnavailable

__all__ = ["EXTRAS", "install_hint", "is_missing_dependency", "missing", "require"]

#: Importable top-level module → the kvplane extra that installs it.
EXTRAS: dict[str, str] = {
    "transfer_queue": "transferqueue",
    "ray": "transferqueue",
    "psutil": "transferqueue",
    "zmq": "transferqueue",
    "mooncake": "mooncake",
    "prometheus_client": "metrics",
    "matplotlib": "plot",
}


def install_hint(module: str) -> str | None:
    """The ``pip install`` line that provides ``module`` (a dotted name counts by its top level)."""
    extra = EXTRAS.get(module.partition(".")[0])
    return None if extra is None else f"pip install 'kvplane[{extra}]'"


def missing(module: str, purpose: str, cause: BaseException | None = None) -> DataPlaneUnavailable:
    """The error that says ``purpose`` needs ``module`` and how to install it."""
    hint = install_hint(module)
    message = f"{purpose} needs {module!r}, which is not installed" + (f": {hint}" if hint else "")
    error = DataPlaneUnavailable(message)
    error.__cause__ = cause if cause is not None else ModuleNotFoundError(message, name=module)
    return error


def require(*modules: str, purpose: str) -> None:
    """Raise unless every one of ``modules`` (top-level names) can be imported.

    Raises:
        DataPlaneUnavailable: One is missing; the message names it, ``purpose`` and the install hint.
    """
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a broken or None entry in sys.modules: not importable
            found = False
        if not found:
            raise missing(module, purpose)


def is_missing_dependency(exc: BaseException) -> bool:
    """Whether ``exc`` reports a missing optional dependency (itself or its cause, with a known module)."""
    for candidate in (exc, exc.__cause__):
        if isinstance(candidate, ModuleNotFoundError) and candidate.name and install_hint(candidate.name):
            return True
    return False
