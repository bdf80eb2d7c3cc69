"""Loader suite: delivered samples/s against a raw ``get_samples`` of the same batch, and latency.

Measured side by side in one run on the embedded backend:

- ``throughput``: several GRPO batches of ``perf_baselines.md`` (512 samples: int64 [512, 4096],
  f32 [512, 4096], f32 [512]; 24 MiB each) read raw (one ``get_samples`` per batch: the call
  ``kv_batch_get`` makes) and delivered by a ``StreamingDataset`` (claim, plan, fetch,
  micro-batches), with one rank, with one rank cut into 64-sample micro-batches, and with two ranks
  (threads) that each fetch half. ``ratio_vs_raw_get`` is the loader's steady-state delivered
  samples/s over the faster raw read's (target ≥ 0.9; the consumer does no work, so nothing hides
  the loader's own cost); ``whole_run_ratio_vs_raw_get`` includes the start-up steps (see
  :func:`bench_throughput`). On a shared 2-core machine these figures move by ±50% from run to
  run: compare ratios from one run, never across runs.
- ``latency``: a consumer waits in the loader on a streaming partition (``num_samples=None``,
  ``batch_size`` one sample per rank) while a producer writes one sample at a time; the time from
  the start of the put to the consumer receiving the row, p50/p99 (target < 50 ms). With two ranks
  the follower learns the plan by polling, so its latency includes the poll interval.

The TransferQueue comparison (the same measurements through the TransferQueue adapter, and against
TransferQueue's own ``StreamingDataLoader``) is not written yet; ``transfer_queue`` says so. Quick
mode never starts Ray.

This suite lives in ``loaders`` (which depends on kvplane, never the reverse); ``kvplane bench
--suite loader`` finds it through the ``kvplane.bench`` entry point the distribution declares.

Examples:
    >>> from loaders import bench
    >>> report = bench.run(quick=True)
    >>> sorted(report)
    ['latency', 'targets', 'throughput', 'transfer_queue']
    >>> report["throughput"]["dp1"]["delivered"] == report["throughput"]["dp1"]["expected"]
    True
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from kvplane.bench.kv import grpo_batch
from kvplane.bench.stats import ratio, summarize
from kvplane.client import DataPlaneClient
from kvplane.codec import td_nbytes
from kvplane.factory import build_data_plane_client
from loaders.dataset import StreamingDataset

__all__ = ["bench_latency", "bench_throughput", "run"]

TASK = "bench"


def _run_threads(world: int, body: Callable[[int], Any]) -> list[Any]:
    """``body(rank)`` per rank in its own thread (the loader's waits have deadlines); errors re-raised."""
    with ThreadPoolExecutor(world) as pool:
        return list(pool.map(body, range(world)))


def _deliver_once(
    client: DataPlaneClient, fields: list[str], n: int, world: int, partition: str, **loader_kw: Any
) -> tuple[list[float], int]:
    """Every rank receives every sample of ``partition`` in steps of ``n``.

    Returns when each step was complete on every rank (seconds from the start) and the sample count.
    """
    streaming_dataset = StreamingDataset
    start = time.perf_counter()

    def rank(r: int) -> tuple[list[float], int]:
        ds = streaming_dataset(
            client,
            partition_id=partition,
            task_name=TASK,
            fields=fields,
            batch_size=n,
            dp_rank=r,
            dp_world=world,
            **loader_kw,
        )
        marks, count = [], 0
        for td, meta in ds:
            count += td.batch_size[0]
            if meta.extra_info["micro_batch_index"] + 1 == meta.extra_info["num_micro_batches"]:
                marks.append(time.perf_counter() - start)
        return marks, count

    per_rank = _run_threads(world, rank)
    marks = [max(step) for step in zip(*(m for m, _ in per_rank), strict=True)]
    return marks, sum(c for _, c in per_rank)


def _raw_gets(
    client: DataPlaneClient, partition: str, batches: list[list[str]], fields: list[str]
) -> list[float]:
    """One ``get_samples`` per batch (as ``kv_batch_get`` does); when each returned, from the start."""
    start = time.perf_counter()
    marks = []
    for ids in batches:
        client.get_samples(ids, partition, fields)
        marks.append(time.perf_counter() - start)
    return marks


def _one_repeat(
    client: DataPlaneClient, partition: str, steps: int, rep: int, world: int, loader_kw: dict[str, Any]
) -> tuple[dict[str, list[float]], int]:
    """Fill ``partition`` with ``steps`` GRPO batches; the two raw reads and the loader, in rotation."""
    keys, td, tags = grpo_batch()
    n, fields = len(keys), list(td.keys())
    client.register_partition(partition, fields, num_samples=steps * n, consumer_tasks=[TASK])
    batches = [[f"{k}-{s}" for k in keys] for s in range(steps)]
    for ids in batches:
        client.put_samples(ids, partition, td, tags=tags)
    delivered = 0

    def loader() -> list[float]:
        nonlocal delivered
        marks, delivered = _deliver_once(client, fields, n, world, partition, **loader_kw)
        return marks

    def raw_caller() -> list[float]:
        return _raw_gets(client, partition, batches, fields)

    def raw_thread() -> list[float]:
        return _run_threads(1, lambda _: raw_caller())[0]

    runs = {"raw_caller": raw_caller, "raw_thread": raw_thread, "loader": loader}
    order = list(runs)[rep % 3 :] + list(runs)[: rep % 3]
    try:
        return {what: runs[what]() for what in order}, delivered
    finally:
        client.clear_samples(None, partition)
        client.clear_samples(None, StreamingDataset.plan_partition_id(partition, TASK))


def bench_throughput(client: DataPlaneClient, *, steps: int, repeats: int) -> dict[str, Any]:
    """Raw ``get_samples`` of ``steps`` GRPO batches, one after the other, vs the loader delivering them.

    Each repeat fills a partition with ``steps`` batches, then, in an order that rotates between
    repeats, reads them raw from the calling thread, reads them raw from a fresh thread (the loader
    fetches from one; glibc gives threads their own allocator arenas, whose page faults differ), and
    lets the loader deliver them; a first, untimed repeat warms up. Rates are reported for the whole
    run and for the *steady state* (the steps after the first quarter): the loader keeps up to
    ``prefetch`` + 1 batches alive where a raw loop keeps one, so its first steps fault in more fresh
    pages, a one-off cost that a long training run does not see. ``ratio_vs_raw_get`` is the
    steady-state rate over the faster raw read's.
    """
    keys, td, _ = grpo_batch()
    n = len(keys)
    warm = max(1, steps // 4)
    report: dict[str, Any] = {
        "batch": {
            "samples": n,
            "bytes": td_nbytes(td),
            "steps_per_run": steps,
            "steady_state_from_step": warm,
        }
    }
    variants = {"dp1": (1, {}), "dp1_micro64": (1, {"micro_batch_size": 64}), "dp2_threads": (2, {})}
    for name, (world, kw) in variants.items():
        whole: dict[str, list[float]] = {"raw_caller": [], "raw_thread": [], "loader": []}
        steady: dict[str, list[float]] = {what: [] for what in whole}
        delivered = 0
        for rep in range(repeats + 1):
            marks, delivered = _one_repeat(client, f"bench-loader-{name}-{rep}", steps, rep, world, kw)
            if rep:  # the first repeat warms up
                for what, m in marks.items():
                    whole[what].append(m[-1])
                    steady[what].append(m[-1] - m[warm - 1])
        rate = {what: round(steps * n / summarize(v)["median"]) for what, v in whole.items()}
        steady_rate = {what: round((steps - warm) * n / summarize(v)["median"]) for what, v in steady.items()}
        report[name] = {
            "dp_world": world,
            **kw,
            "delivered": delivered,
            "expected": steps * n,
            "samples_per_s": rate,
            "steady_samples_per_s": steady_rate,
            "whole_run_ratio_vs_raw_get": ratio(rate["loader"], max(rate["raw_caller"], rate["raw_thread"])),
            "ratio_vs_raw_get": ratio(
                steady_rate["loader"], max(steady_rate["raw_caller"], steady_rate["raw_thread"])
            ),
        }
    return report


def bench_latency(client: DataPlaneClient, *, samples: int, world: int) -> dict[str, Any]:
    """Producer put → consumer receipt, per sample, with ``world`` ranks waiting on a stream."""
    streaming_dataset = StreamingDataset
    partition = f"bench-loader-latency-dp{world}"
    client.register_partition(partition, ["x"], num_samples=None, consumer_tasks=[TASK])
    put_at: dict[str, float] = {}
    got_at: dict[str, float] = {}
    steps = samples // world
    ready = threading.Barrier(world + 1, timeout=60)

    def consumer(rank: int) -> None:
        ds = streaming_dataset(
            client,
            partition_id=partition,
            task_name=TASK,
            fields=["x"],
            batch_size=world,
            dp_rank=rank,
            dp_world=world,
            timeout_s=30.0,
            poll_interval_s=0.005,
        )
        it = iter(ds)
        ready.wait()
        for _ in range(steps):
            _, meta = next(it)
            now = time.perf_counter()
            for key in meta.sample_ids:
                got_at[key] = now
        it.close()

    def producer(_: int) -> None:
        ready.wait()
        for step in range(steps):
            time.sleep(0.01)  # let every consumer go back to waiting
            keys = [f"l{step}-{r}" for r in range(world)]
            start = time.perf_counter()
            for key in keys:
                put_at[key] = start
            client.put_samples(keys, partition, {"x": torch.zeros(world, 8)})

    _run_threads(world + 1, lambda i: producer(i) if i == world else consumer(i))
    client.clear_samples(None, partition)
    client.clear_samples(None, streaming_dataset.plan_partition_id(partition, TASK))
    lat = sorted((got_at[k] - put_at[k]) * 1e3 for k in put_at)
    return {
        "dp_world": world,
        "samples": len(lat),
        "p50_ms": round(lat[len(lat) // 2], 3),
        "p99_ms": round(lat[max(0, int(len(lat) * 0.99) - 1)], 3),
        "max_ms": round(lat[-1], 3),
    }


def _transfer_queue_section(quick: bool) -> dict[str, Any]:
    """The TransferQueue comparison: not written yet (and never started in quick mode)."""
    if quick:
        return {"skipped": "quick mode never starts Ray"}
    if not os.environ.get("KVPLANE_BENCH_TQ"):
        return {"skipped": "set KVPLANE_BENCH_TQ=simple to request the TransferQueue comparison"}
    return {"skipped": "the TransferQueue loader comparison is not implemented yet"}


def run(*, quick: bool = False) -> dict[str, Any]:
    """The loader suite on the embedded backend (see the module docstring)."""
    client = build_data_plane_client(None)
    try:
        throughput = bench_throughput(client, steps=3 if quick else 24, repeats=1 if quick else 4)
        latency = {f"dp{w}": bench_latency(client, samples=20 if quick else 200, world=w) for w in (1, 2)}
    finally:
        client.close()
    return {
        "throughput": throughput,
        "latency": latency,
        "transfer_queue": _transfer_queue_section(quick),
        "targets": {
            "loader_ratio_vs_raw_get>=0.9": throughput["dp1"]["ratio_vs_raw_get"] >= 0.9,
            "producer_to_consumer_p99<50ms": all(v["p99_ms"] < 50 for v in latency.values()),
        },
    }
