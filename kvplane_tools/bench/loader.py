"""Loader suite: delivered samples/s against a raw ``get_samples`` of the same batch, and latency.

On the embedded backend: ``throughput`` (the loader's steady-state samples/s over a raw read's,
target ≥ 0.9), ``latency`` (a put reaching a waiting consumer, p99 target < 50 ms) and
``first_batch`` (``iter(loader)`` to the first micro-batch with 0 and 2 DataLoader workers; the
embedded backend refuses workers, and TransferQueue's workers are spawned and attach). With
``KVPLANE_BENCH_TQ=simple`` (or ``columnar``; never in quick mode), ``transfer_queue`` also sets
kvplane's loader over TransferQueue against raw ``kv_batch_get`` and TransferQueue's own loader. On
a shared 2-core machine the figures move by ±50% between runs: compare ratios from one run, never
across runs.

Design: docs/internals.md#kvplane_toolsbenchloaderpy--the-loader-suite

Examples:
    >>> from kvplane_tools.bench import loader
    >>> report = loader.run(quick=True)
    >>> sorted(report)
    ['first_batch', 'latency', 'targets', 'throughput', 'transfer_queue']
    >>> report["first_batch"]["num_workers_2"]["refused"]       # the embedded store is in-process
    'num_workers=2 needs a backend that DataLoader worker processes can reach'
    >>> report["throughput"]["dp1"]["delivered"] == report["throughput"]["dp1"]["expected"]
    True
    >>> report["throughput"]["dp1"]["exactly_once"], report["transfer_queue"]
    (True, {'skipped': 'quick mode never starts Ray'})
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import torch

from kvplane import DataPlaneBadRequest, DataPlaneClient, build_data_plane_client, td_nbytes
from kvplane_tools.batches import grpo_batch
from kvplane_tools.bench.backends import TQ_BACKENDS_ENV, per_backend, requested_backends
from kvplane_tools.bench.stats import ratio, summarize
from kvplane_tools.bench.tq import bench_config, bench_deployment, interleave, paired_ratio
from loaders import StreamingDataLoader, StreamingDataset

__all__ = ["bench_first_batch", "bench_latency", "bench_throughput", "bench_transfer_queue", "run"]

logger = logging.getLogger(__name__)

TASK = "bench"
#: The backends the loader comparison runs on (see :func:`_tq_backend`).
TQ_LOADER_BACKENDS = ("simple", "columnar")
#: The producer's pause before each put in the TransferQueue latency run: on TransferQueue the
#: loader's bookkeeping after a step (the progress acknowledgement, and every 8th step a plan
#: collection on a helper thread) can outlast the embedded run's 10 ms, and the target's measure
#: needs the consumer waiting.
TQ_LATENCY_GAP_S = 0.05


def _run_threads(world: int, body: Callable[[int], Any]) -> list[Any]:
    """``body(rank)`` per rank in its own thread (the loader's waits have deadlines); errors re-raised."""
    with ThreadPoolExecutor(world) as pool:
        return list(pool.map(body, range(world)))


def _deliver_once(
    client: DataPlaneClient,
    fields: list[str],
    n: int,
    world: int,
    partition: str,
    *,
    task: str = TASK,
    **loader_kw: Any,
) -> tuple[list[float], list[str]]:
    """Every rank receives every sample of ``partition`` claimed for ``task``, in steps of ``n``.

    Returns when each step was complete on every rank (seconds from the start) and the ids delivered.
    """
    start = time.perf_counter()

    def rank(r: int) -> tuple[list[float], int]:
        ds = StreamingDataset(
            client,
            partition_id=partition,
            task_name=task,
            fields=fields,
            batch_size=n,
            dp_rank=r,
            dp_world=world,
            **loader_kw,
        )
        marks: list[float] = []
        ids: list[str] = []
        for _, meta in ds:
            ids.extend(meta.sample_ids)
            if meta.extra_info["micro_batch_index"] + 1 == meta.extra_info["num_micro_batches"]:
                marks.append(time.perf_counter() - start)
        return marks, ids

    per_rank = _run_threads(world, rank)
    marks = [max(step) for step in zip(*(m for m, _ in per_rank), strict=True)]
    return marks, [i for _, ids in per_rank for i in ids]


def _raw_gets(
    get: Callable[[list[str], str, list[str]], Any],
    partition: str,
    batches: list[list[str]],
    fields: list[str],
    *,
    hold: bool = False,
) -> list[float]:
    """``get(ids, partition, fields)`` per batch (``get_samples``, or raw ``kv_batch_get``); when each
    returned, from the start. ``hold`` keeps each result until the next one has arrived, as a
    trainer's loop variable does (a batch is then allocated while the previous one is alive)."""
    start = time.perf_counter()
    marks = []
    for ids in batches:
        batch = get(ids, partition, fields)  # held, this stays alive until the next get returns
        if not hold:
            del batch
        marks.append(time.perf_counter() - start)
    return marks


def _exactly_once(ids: Sequence[Any], expected: int) -> bool:
    """``ids`` are ``expected`` deliveries of as many distinct samples: none lost, none twice.

    Examples:
        >>> _exactly_once(["a", "b"], 2), _exactly_once(["a", "a"], 2), _exactly_once(["a"], 2)
        (True, False, False)
    """
    return len(ids) == expected == len(set(ids))


def _split(marks: list[float], warm: int) -> dict[str, float]:
    """A run's seconds from its step marks: the whole run, and its steady state (the steps after ``warm``).

    Examples:
        >>> _split([2.0, 3.0, 4.0, 5.0], 1)
        {'whole': 5.0, 'steady': 3.0}
    """
    return {"whole": marks[-1], "steady": marks[-1] - marks[warm - 1]}


def _one_repeat(
    client: DataPlaneClient, partition: str, steps: int, rep: int, world: int, loader_kw: dict[str, Any]
) -> tuple[dict[str, list[float]], list[str]]:
    """Fill ``partition`` with ``steps`` GRPO batches; the two raw reads and the loader, in rotation."""
    keys, td, tags = grpo_batch()
    n, fields = len(keys), list(td.keys())
    client.register_partition(partition, fields, num_samples=steps * n, consumer_tasks=[TASK])
    batches = [[f"{k}-{s}" for k in keys] for s in range(steps)]
    for ids in batches:
        client.put_samples(ids, partition, td, tags=tags)
    delivered: list[str] = []

    def loader() -> list[float]:
        nonlocal delivered
        marks, delivered = _deliver_once(client, fields, n, world, partition, **loader_kw)
        return marks

    def raw_caller() -> list[float]:
        return _raw_gets(client.get_samples, partition, batches, fields)

    def raw_thread() -> list[float]:
        return _run_threads(1, lambda _: raw_caller())[0]

    def raw_held() -> list[float]:
        return _raw_gets(client.get_samples, partition, batches, fields, hold=True)

    runs = {"raw_caller": raw_caller, "raw_thread": raw_thread, "raw_held": raw_held, "loader": loader}
    order = list(runs)[rep % len(runs) :] + list(runs)[: rep % len(runs)]
    try:
        return {what: runs[what]() for what in order}, delivered
    finally:
        client.clear_samples(None, partition)
        client.clear_samples(None, StreamingDataset.plan_partition_id(partition, TASK))


def bench_throughput(client: DataPlaneClient, *, steps: int, repeats: int) -> dict[str, Any]:
    """Raw ``get_samples`` of ``steps`` GRPO batches, one after the other, vs the loader delivering them.

    Each repeat fills a partition with ``steps`` batches, then, in an order that rotates between
    repeats, reads them raw from the calling thread (each batch dropped before the next read), raw
    from a fresh thread (glibc gives threads their own allocator arenas), raw keeping each batch
    until the next has arrived (``raw_held``, as any consumer that holds its batch while the next one
    is read: without the store's reused read buffers each batch landed in fresh pages, which the
    kernel faults in and zeroes), and lets the loader deliver them; a first, untimed repeat warms up.
    Rates are reported for the whole run and for the *steady state* (the steps after the first
    quarter).
    ``ratio_vs_raw_get`` is the steady-state rate over the faster of the two dropping raw reads';
    ``ratio_vs_raw_held`` over the holding one's.
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
        whole: dict[str, list[float]] = {"raw_caller": [], "raw_thread": [], "raw_held": [], "loader": []}
        steady: dict[str, list[float]] = {what: [] for what in whole}
        delivered: list[str] = []
        once = []
        for rep in range(repeats + 1):
            marks, delivered = _one_repeat(client, f"bench-loader-{name}-{rep}", steps, rep, world, kw)
            once.append(_exactly_once(delivered, steps * n))
            if rep:  # the first repeat warms up
                for what, m in marks.items():
                    seconds = _split(m, warm)
                    whole[what].append(seconds["whole"])
                    steady[what].append(seconds["steady"])
        rate = {what: round(steps * n / summarize(v)["median"]) for what, v in whole.items()}
        steady_rate = {what: round((steps - warm) * n / summarize(v)["median"]) for what, v in steady.items()}
        report[name] = {
            "dp_world": world,
            **kw,
            "delivered": len(delivered),
            "expected": steps * n,
            "exactly_once": all(once),
            "samples_per_s": rate,
            "steady_samples_per_s": steady_rate,
            "whole_run_ratio_vs_raw_get": ratio(rate["loader"], max(rate["raw_caller"], rate["raw_thread"])),
            "ratio_vs_raw_get": ratio(
                steady_rate["loader"], max(steady_rate["raw_caller"], steady_rate["raw_thread"])
            ),
            "ratio_vs_raw_held": ratio(steady_rate["loader"], steady_rate["raw_held"]),
        }
    return report


def bench_latency(
    client: DataPlaneClient, *, samples: int, world: int, gap_s: float = 0.01
) -> dict[str, Any]:
    """Producer put → consumer receipt, per sample, with ``world`` ranks waiting on a stream.

    The producer pauses ``gap_s`` before each put, so that every consumer is back to waiting (it
    must exceed a step's bookkeeping after the yield, or the latency includes it).
    """
    partition = f"bench-loader-latency-dp{world}"
    client.register_partition(partition, ["x"], num_samples=None, consumer_tasks=[TASK])
    put_at: dict[str, float] = {}
    got_at: dict[str, float] = {}
    steps = samples // world
    ready = threading.Barrier(world + 1, timeout=60)

    def consumer(rank: int) -> None:
        ds = StreamingDataset(
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
            time.sleep(gap_s)  # let every consumer go back to waiting
            keys = [f"l{step}-{r}" for r in range(world)]
            start = time.perf_counter()
            for key in keys:
                put_at[key] = start
            client.put_samples(keys, partition, {"x": torch.zeros(world, 8)})

    _run_threads(world + 1, lambda i: producer(i) if i == world else consumer(i))
    client.clear_samples(None, partition)
    client.clear_samples(None, StreamingDataset.plan_partition_id(partition, TASK))
    lat = sorted((got_at[k] - put_at[k]) * 1e3 for k in put_at)
    return {
        "dp_world": world,
        "samples": len(lat),
        "p50_ms": round(lat[len(lat) // 2], 3),
        "p99_ms": round(lat[max(0, int(len(lat) * 0.99) - 1)], 3),
        "max_ms": round(lat[-1], 3),
    }


def bench_first_batch(
    client: DataPlaneClient, source: Any, *, num_workers: int, repeats: int
) -> dict[str, Any]:
    """Seconds from ``iter(loader)`` to the first micro-batch of a fresh ``StreamingDataLoader``.

    ``client`` writes one GRPO batch per repeat into a fresh partition; the loader reads it through
    ``source`` (a client object, or a config that ``num_workers`` spawned worker processes attach
    with: their start, imports and attach are what this measures). A source that cannot have
    workers (the embedded backend) reports the loader's refusal instead of a time.
    """
    keys, td, tags = grpo_batch()
    fields = list(td.keys())
    seconds: list[float] = []
    for rep in range(repeats):
        partition = f"bench-loader-first-w{num_workers}-{rep}-{uuid.uuid4().hex[:6]}"
        client.register_partition(partition, fields, num_samples=len(keys), consumer_tasks=[TASK])
        client.put_samples(keys, partition, td, tags=tags)
        try:
            dataset = StreamingDataset(
                source, partition_id=partition, task_name=TASK, fields=fields, batch_size=len(keys)
            )
            try:
                loader = StreamingDataLoader(
                    dataset, num_workers=num_workers, multiprocessing_context="spawn"
                )
            except DataPlaneBadRequest as exc:
                return {"num_workers": num_workers, "refused": str(exc).split(":")[0]}
            start = time.perf_counter()
            it = iter(loader)
            next(it)
            seconds.append(time.perf_counter() - start)
            for _ in it:  # to the end: the workers stop, the plans are collected
                pass
        finally:
            client.clear_samples(None, partition)
            client.clear_samples(None, StreamingDataset.plan_partition_id(partition, TASK))
    return {"num_workers": num_workers, "repeats": repeats, "first_batch_s": summarize(seconds)}


# ---------------------------------------------------------------------------------------------- TransferQueue
def _batch_marks(seconds: Sequence[float], sizes: Sequence[int], n: int) -> list[float]:
    """When each ``n``-sample batch was complete, from per-micro-batch arrival times and sizes.

    Examples:
        >>> _batch_marks([0.1, 0.2, 0.3, 0.4], [2, 2, 2, 2], 4)
        [0.2, 0.4]
    """
    marks, rows = [], 0
    for at, size in zip(seconds, sizes, strict=True):
        rows += size
        if rows % n == 0:
            marks.append(at)
    return marks


#: Ratio name → (candidate, baseline): the candidate's throughput over the baseline's, per round.
TQ_RATIOS = {
    "kvplane_dp1_vs_raw_kv_batch_get": ("kvplane_dp1", "raw_kv_batch_get"),
    "kvplane_dp1_micro64_vs_raw_kv_batch_get": ("kvplane_dp1_micro64", "raw_kv_batch_get"),
    "kvplane_dp1_vs_tq_loader": ("kvplane_dp1", "tq_loader"),
    "kvplane_dp1_micro64_vs_tq_loader_micro64": ("kvplane_dp1_micro64", "tq_loader_micro64"),
    "tq_loader_vs_raw_kv_batch_get": ("tq_loader", "raw_kv_batch_get"),
}


def bench_tq_throughput(
    client: DataPlaneClient, raw: Any, tq_loader: Any, *, steps: int, repeats: int
) -> dict[str, Any]:
    """Raw ``kv_batch_get``, kvplane's loader and TransferQueue's loader on one pre-filled partition.

    ``raw`` and ``tq_loader`` are :mod:`~kvplane_tools.bench.raw_tq`'s ``RawKV`` and
    ``RawStreamingLoader`` on ``client``'s deployment. The partition gets ``steps`` GRPO batches once;
    every round (the first warms up) runs each contender over all of them, in an order that rotates
    between rounds (:func:`kvplane_tools.bench.tq.interleave`), each loader pass under a task name of
    its own.
    """
    keys, td, tags = grpo_batch()
    n, fields, expected = len(keys), list(td.keys()), steps * len(keys)
    warm = max(1, steps // 4)
    partition = f"bench-loader-tq-{uuid.uuid4().hex[:8]}"
    batches = [[f"{k}-{s}" for k in keys] for s in range(steps)]
    passes = itertools.count()
    delivered: dict[str, list[int]] = defaultdict(list)
    once: dict[str, list[bool]] = defaultdict(list)

    def record(name: str, ids: Sequence[Any]) -> None:
        delivered[name].append(len(ids))
        once[name].append(_exactly_once(ids, expected))

    def kvplane_loader(name: str, **kw: Any) -> Callable[[], dict[str, float]]:
        def one_pass() -> dict[str, float]:
            task = f"{name}-{next(passes)}"
            try:
                marks, ids = _deliver_once(client, fields, n, 1, partition, task=task, **kw)
            finally:
                client.clear_samples(None, StreamingDataset.plan_partition_id(partition, task))
            record(name, ids)
            return _split(marks, warm)

        return one_pass

    def tq_streaming_loader(name: str, micro_batch_size: int) -> Callable[[], dict[str, float]]:
        def one_pass() -> dict[str, float]:
            got = tq_loader.deliver(
                partition, f"{name}-{next(passes)}", fields, batch_size=n, micro_batch_size=micro_batch_size
            )
            record(name, got.global_indexes)
            return _split(_batch_marks(got.seconds, got.sizes, n), warm)

        return one_pass

    contenders = {
        "raw_kv_batch_get": lambda: _split(_raw_gets(raw.get, partition, batches, fields), warm),
        "kvplane_dp1": kvplane_loader("kvplane_dp1"),
        "kvplane_dp1_micro64": kvplane_loader("kvplane_dp1_micro64", micro_batch_size=64),
        "tq_loader": tq_streaming_loader("tq_loader", n),
        "tq_loader_micro64": tq_streaming_loader("tq_loader_micro64", 64),
    }
    client.register_partition(partition, fields, num_samples=expected, consumer_tasks=[])
    try:
        for ids in batches:
            client.put_samples(ids, partition, td, tags=tags)
        times = interleave(contenders, repeats=repeats)
    finally:
        client.clear_samples(None, partition)
    return {
        "batch": {
            "samples": n,
            "bytes": td_nbytes(td),
            "steps_per_run": steps,
            "steady_state_from_step": warm,
        },
        "rounds": repeats,
        **_tq_rates_and_ratios(times, n, steps, warm),
        "deliveries": {
            name: {"expected": expected, "delivered": delivered[name], "exactly_once": all(once[name])}
            for name in delivered
        },
    }


def _tq_rates_and_ratios(
    times: dict[str, dict[str, list[float]]], n: int, steps: int, warm: int
) -> dict[str, Any]:
    """Median samples/s per contender (whole run, steady state) and the paired ratios of :data:`TQ_RATIOS`."""

    def ratios(part: str) -> dict[str, Any]:
        return {
            name: paired_ratio(times[base][part], times[cand][part])
            for name, (cand, base) in TQ_RATIOS.items()
        }

    return {
        "samples_per_s": {w: round(steps * n / summarize(t["whole"])["median"]) for w, t in times.items()},
        "steady_samples_per_s": {
            w: round((steps - warm) * n / summarize(t["steady"])["median"]) for w, t in times.items()
        },
        "ratios": ratios("steady"),
        "whole_run_ratios": ratios("whole"),
    }


def bench_transfer_queue(
    backend: str = "simple", *, small: bool = False, client: DataPlaneClient | None = None
) -> dict[str, Any]:
    """The loader on TransferQueue: throughput next to raw ``kv_batch_get`` and TransferQueue's own
    loader (:func:`bench_tq_throughput`), and producer → consumer latency (:func:`bench_latency`).

    TransferQueue's ``StreamingDataset`` runs on the deployment's sampler, TransferQueue's default
    ``SequentialSampler`` in polling mode, not the ``RankAwareSampler`` its docs pair it with:
    kvplane's claims cannot run on that one (see ``RawStreamingLoader``), and with one
    consumer per ``dp_rank`` both samplers hand out the same batches (the report's ``tq_sampler``).

    Args:
        backend: ``simple`` or ``columnar`` (MooncakeStore is not measured: :func:`_tq_backend`).
        small: Few steps, rounds and latency samples (a smoke run: the e2e test).
        client: A TransferQueue client bootstrapped in this process to measure on (its deployment
            stays up); by default the bench opens its own deployment and tears it down afterwards.

    Raises:
        DataPlaneBadRequest: ``backend`` is not measured here, or ``client`` is not a TransferQueue
            client of this process.
        DataPlaneUnavailable: The deployment cannot start.

    Examples:
        >>> bench_transfer_queue(client=build_data_plane_client({"impl": "embedded"}))
        Traceback (most recent call last):
        ...
        kvplane._errors.DataPlaneBadRequest: the raw TransferQueue baseline needs a TransferQueue client, ...
    """
    if backend not in TQ_LOADER_BACKENDS:
        raise DataPlaneBadRequest(
            f"the loader bench measures {list(TQ_LOADER_BACKENDS)} only, got {backend!r}"
        )
    from kvplane_tools.bench.raw_tq import RawKV, RawStreamingLoader

    with bench_deployment(backend, client) as (tq_client, bootstrap_s):
        raw, tq_loader = RawKV(tq_client), RawStreamingLoader(tq_client)
        logger.info("loader bench on TransferQueue %s (sampler %s)", raw.storage_backend, tq_loader.sampler)
        report: dict[str, Any] = {
            "storage_backend": raw.storage_backend,
            "config": bench_config(backend) if client is None else None,
            "bootstrap_s": bootstrap_s,
            "tq_sampler": tq_loader.sampler,
            "throughput": bench_tq_throughput(
                tq_client, raw, tq_loader, steps=3 if small else 24, repeats=1 if small else 6
            ),
            "latency_gap_s": TQ_LATENCY_GAP_S,
            "latency": _latencies(tq_client, 20 if small else 200, TQ_LATENCY_GAP_S),
            "latency_gap_10ms": _latencies(tq_client, 20 if small else 200, 0.01),
            "first_batch": _tq_first_batch(tq_client, 1 if small else 3),
        }
    report["targets"] = _tq_targets(report)
    return report


def _tq_targets(report: dict[str, Any]) -> dict[str, bool]:
    ratios = report["throughput"]["ratios"]
    vs_tq = [
        ratios[name]["median"]
        for name in ("kvplane_dp1_vs_tq_loader", "kvplane_dp1_micro64_vs_tq_loader_micro64")
    ]
    return {
        "loader_ratio_vs_raw_get>=0.9": ratios["kvplane_dp1_vs_raw_kv_batch_get"]["median"] >= 0.9,
        "loader_ratio_vs_tq_streaming_dataloader>=2": min(vs_tq) >= 2,
        "producer_to_consumer_p99<50ms": all(v["p99_ms"] < 50 for v in report["latency"].values()),
    }


def _tq_backend(backend: str) -> dict[str, Any]:
    """One requested backend's report, or why it is not measured.

    Examples:
        >>> _tq_backend("mooncake_cpu")["skipped"][:67]
        "the loader comparison runs on ['simple', 'columnar'] only: Transfer"
    """
    if backend not in TQ_LOADER_BACKENDS:
        return {
            "skipped": f"the loader comparison runs on {list(TQ_LOADER_BACKENDS)} only: TransferQueue's "
            "StreamingDataset opens a storage client per dataset, which on MooncakeStore would mount a "
            "memory segment of its own"
        }
    return bench_transfer_queue(backend)


def _tq_first_batch(client: Any, repeats: int) -> dict[str, Any]:
    """:func:`bench_first_batch` on TransferQueue with 0 and 2 workers (they attach to this Ray)."""
    import ray

    source = replace(client._cfg, ray_address=ray.get_runtime_context().gcs_address)
    return {
        f"num_workers_{w}": bench_first_batch(client, source, num_workers=w, repeats=repeats) for w in (0, 2)
    }


def _latencies(client: DataPlaneClient, samples: int, gap_s: float = 0.01) -> dict[str, Any]:
    """:func:`bench_latency` with one rank and with two (threads)."""
    return {f"dp{w}": bench_latency(client, samples=samples, world=w, gap_s=gap_s) for w in (1, 2)}


def _transfer_queue_section(quick: bool) -> dict[str, Any]:
    """The TransferQueue comparison per backend ``KVPLANE_BENCH_TQ`` names (never in quick mode)."""
    if quick:
        return {"skipped": "quick mode never starts Ray"}
    backends = requested_backends()
    if not backends:
        return {"skipped": f"set {TQ_BACKENDS_ENV}=simple to request the TransferQueue comparison"}
    return per_backend(backends, _tq_backend)


def run(*, quick: bool = False) -> dict[str, Any]:
    """The loader suite on the embedded backend, and on TransferQueue when asked (module docstring)."""
    client = build_data_plane_client({"impl": "embedded"})
    try:
        throughput = bench_throughput(client, steps=3 if quick else 24, repeats=1 if quick else 4)
        latency = _latencies(client, 20 if quick else 200)
        first_batch = {
            f"num_workers_{w}": bench_first_batch(client, client, num_workers=w, repeats=1 if quick else 3)
            for w in (0, 2)
        }
    finally:
        client.close()
    transfer_queue = _transfer_queue_section(quick)
    targets = {
        "embedded_loader_ratio_vs_raw_get>=0.9": throughput["dp1"]["ratio_vs_raw_get"] >= 0.9,
        "embedded_producer_to_consumer_p99<50ms": all(v["p99_ms"] < 50 for v in latency.values()),
    }
    for backend, result in transfer_queue.items():
        if isinstance(result, dict):
            targets.update({f"tq_{backend}_{name}": met for name, met in result.get("targets", {}).items()})
    return {
        "throughput": throughput,
        "latency": latency,
        "first_batch": first_batch,
        "transfer_queue": transfer_queue,
        "targets": targets,
    }
