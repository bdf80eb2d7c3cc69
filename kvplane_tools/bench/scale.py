"""Metadata at scale: group questions, cursor pages and clears against the number of keys stored.

:func:`bench_scale` fills a partition with ``n`` tiny tagged keys (``tiny_batch``: groups of 8,
committed, in puts of 10,000) for each ``n`` of a sweep and times, as medians over repeats,
``depth``, ``select_groups``, the first and a middle 1,000-key cursor page, ``list_metadata`` and
``clear_samples(None)``. :func:`slopes` fits ``log t = a + b log n`` per operation: ``b`` near 0 is
constant time, near 1 linear. :func:`overhead_per_key` measures the embedded backend's own bytes
per key with ``tracemalloc`` (everything it allocates except tensor storage; keys and tag values
are the caller's and allocated before). :func:`plot` draws the sweeps on log-log axes.

Examples:
    >>> from kvplane import build_data_plane_client
    >>> client = build_data_plane_client({"impl": "embedded"})
    >>> rows = bench_scale(client, [1000, 4000], repeats=1)
    >>> [r["n_keys"] for r in rows], sorted(slopes(rows))[:3]
    ([1000, 4000], ['clear_s', 'cursor_first_page_s', 'cursor_page_s'])
"""

from __future__ import annotations

import math
import time
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

from kvplane import DataPlaneClient
from kvplane.replay import select_groups
from kvplane_tools.batches import tiny_batch
from kvplane_tools.bench.stats import measure

__all__ = ["bench_scale", "overhead_per_key", "plot", "report", "slopes", "targets"]

PUT_BATCH = 10_000
PAGE = 1_000
PARTITION = "bench-scale"
#: The issue's targets at 1M keys (seconds).
TARGETS_1M = {
    "depth_s": 0.05,
    "select_groups_s": 0.05,
    "cursor_page_s": 0.05,
    "cursor_first_page_s": 0.05,
    "list_metadata_s": 1.0,
}


def _fill(client: DataPlaneClient, n: int) -> float:
    keys, td, tags = tiny_batch(n)
    start = time.perf_counter()
    for i in range(0, n, PUT_BATCH):
        client.put_samples(
            keys[i : i + PUT_BATCH], PARTITION, td[i : i + PUT_BATCH], tags=tags[i : i + PUT_BATCH]
        )
    return time.perf_counter() - start


def _middle_cursor(client: DataPlaneClient, n: int) -> int:
    """A cursor about half way through the partition (pages of 10% of the keys to get there)."""
    cursor, seen = 0, 0
    while True:
        cursor, page = client.list_keys(PARTITION, cursor=cursor, count=max(PAGE, n // 10))
        seen += len(page.get(PARTITION, {}))
        if cursor == 0 or seen >= n // 2:
            return cursor


def bench_scale(client: DataPlaneClient, counts: Sequence[int], repeats: int = 5) -> list[dict[str, Any]]:
    """One row per key count: ``put_s`` (all puts, once) and medians of each metadata operation."""
    rows = []
    for n in counts:
        client.clear_samples(None, PARTITION)
        put_s = _fill(client, n)
        middle = _middle_cursor(client, n)
        ops: dict[str, Callable[[], Any]] = {
            "depth_s": lambda: client.depth(PARTITION),
            "select_groups_s": lambda: select_groups(client, PARTITION, current_version=1, max_staleness=0),
            "cursor_first_page_s": lambda: client.list_keys(PARTITION, cursor=0, count=PAGE),
            "cursor_page_s": lambda at=middle: client.list_keys(PARTITION, cursor=at, count=PAGE),
            "list_metadata_s": lambda: client.list_metadata(PARTITION),
        }
        client.depth(PARTITION)  # the summaries exist from here on (a TransferQueue reader builds them)
        row: dict[str, Any] = {"n_keys": n, "put_s": round(put_s, 7)}
        row.update({name: measure(fn, repeats=repeats) for name, fn in ops.items()})
        row["depth"] = client.depth(PARTITION)
        start = time.perf_counter()
        client.clear_samples(None, PARTITION)
        row["clear_s"] = round(time.perf_counter() - start, 7)
        rows.append(row)
    return rows


def report(client: DataPlaneClient, *, quick: bool, clear_target_s: float | None = None) -> dict[str, Any]:
    """The sweep (1k-10k keys when ``quick``, else 1k-1M), its slopes and the 1M-key targets."""
    rows = bench_scale(client, [1000, 10_000] if quick else [1000, 10_000, 100_000, 1_000_000])
    return {"rows": rows, "slopes": slopes(rows), "targets": targets(rows, clear_target_s=clear_target_s)}


def _seconds(value: Any) -> float:
    return value["median"] if isinstance(value, dict) else float(value)


def slopes(rows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Per operation, the least-squares slope of log(seconds) against log(keys) (``None``: < 2 sizes)."""
    names = [k for k in rows[0] if k.endswith("_s")] if rows else []
    out: dict[str, float | None] = {}
    for name in sorted(names):
        points = [(math.log(r["n_keys"]), math.log(max(_seconds(r[name]), 1e-7))) for r in rows]
        if len(points) < 2:
            out[name] = None
            continue
        mx = sum(x for x, _ in points) / len(points)
        my = sum(y for _, y in points) / len(points)
        var = sum((x - mx) ** 2 for x, _ in points)
        out[name] = round(sum((x - mx) * (y - my) for x, y in points) / var, 3) if var else None
    return out


def targets(rows: Sequence[dict[str, Any]], *, clear_target_s: float | None = None) -> dict[str, bool | None]:
    """Whether the 1M-key row meets each target (``None`` when the sweep stopped below 1M keys)."""
    big = [r for r in rows if r["n_keys"] >= 1_000_000]
    wanted = dict(TARGETS_1M, **({"clear_s": clear_target_s} if clear_target_s is not None else {}))
    return {
        f"{name}_1M<={limit:g}s": (_seconds(big[0][name]) <= limit if big else None)
        for name, limit in wanted.items()
    }


def overhead_per_key(n: int = 100_000) -> float:
    """Bytes the embedded backend allocates per key beyond tensor storage (keys and tags pre-made)."""
    from kvplane.adapters.memory import MemoryDataPlaneClient

    keys, td, tags = tiny_batch(n)
    batches = [
        (keys[i : i + PUT_BATCH], td[i : i + PUT_BATCH], tags[i : i + PUT_BATCH])
        for i in range(0, n, PUT_BATCH)
    ]
    client = MemoryDataPlaneClient()
    try:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for k, t, g in batches:
                client.put_samples(k, "p", t, tags=g)
            client.depth("p")
            used = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        return round((used - client.retained_nbytes()) / n, 1)
    finally:
        client.close()


def plot(sweeps: dict[str, Sequence[dict[str, Any]]], path: str) -> None:
    """Seconds against keys, log-log, one panel per backend (``sweeps``: backend -> rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sweeps), figsize=(6 * len(sweeps), 4.5), squeeze=False)
    for ax, (backend, rows) in zip(axes[0], sweeps.items(), strict=True):
        fitted = slopes(rows)
        for name in fitted:
            ax.plot(
                [r["n_keys"] for r in rows],
                [max(_seconds(r[name]), 1e-7) for r in rows],
                marker="o",
                label=f"{name[:-2]} (slope {fitted[name]})",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("keys stored")
        ax.set_ylabel("seconds (median)")
        ax.set_title(backend)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
