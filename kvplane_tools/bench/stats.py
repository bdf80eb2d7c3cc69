"""Timing helpers shared by every benchmark suite: medians with their spread.

Examples:
    >>> from kvplane_tools.bench.stats import measure, summarize
    >>> summarize([3.0, 1.0, 2.0])
    {'median': 2.0, 'min': 1.0, 'max': 3.0, 'n': 3}
    >>> measure(lambda: None, repeats=3, warmup=1)["n"]
    3
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["measure", "ratio", "summarize"]


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and count of ``values``."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def measure(
    fn: Callable[[], Any],
    *,
    repeats: int = 5,
    warmup: int = 1,
    setup: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Seconds per call of ``fn``: ``summarize`` over ``repeats`` timed calls after ``warmup`` calls.

    ``setup`` (untimed) runs before every call, warm-up included.
    """
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    times = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return summarize(times)


def ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator`` rounded to 3 places, or ``None`` when the denominator is 0."""
    return round(numerator / denominator, 3) if denominator else None
