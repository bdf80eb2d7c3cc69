"""Which TransferQueue backends a bench run measures, each run so that one failing spares the rest.

TransferQueue parts of a suite run only when asked: the environment variable ``KVPLANE_BENCH_TQ``
names backends (``simple``, ``mooncake_cpu``), comma-separated.

Examples:
    >>> from kvplane_tools.bench.backends import per_backend
    >>> def measure(backend):
    ...     if backend == "mooncake_cpu":
    ...         raise RuntimeError("no master")
    ...     return {"ok": True}
    >>> per_backend(["simple", "mooncake_cpu"], measure)
    {'simple': {'ok': True}, 'mooncake_cpu': {'status': 'error', 'error': 'RuntimeError: no master'}}
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["TQ_BACKENDS_ENV", "per_backend", "requested_backends"]

logger = logging.getLogger(__name__)

#: The environment variable naming the TransferQueue backends to measure.
TQ_BACKENDS_ENV = "KVPLANE_BENCH_TQ"


def requested_backends() -> list[str]:
    """The backends ``KVPLANE_BENCH_TQ`` names, in order (none when it is unset or empty)."""
    return [b.strip() for b in os.environ.get(TQ_BACKENDS_ENV, "").split(",") if b.strip()]


def per_backend(backends: Sequence[str], measure: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """``measure(backend)`` for each backend; one that raises reports ``{"status": "error", ...}``.

    ``kvplane bench`` exits non-zero when any part of a suite reports that status.
    """
    report: dict[str, Any] = {}
    for backend in backends:
        try:
            report[backend] = measure(backend)
        except Exception as exc:
            logger.warning("bench on TransferQueue %r failed", backend, exc_info=True)
            report[backend] = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
    return report
