"""StreamingDataset / StreamingDataLoader on the memory backend, DP ranks as threads sharing one client.

The helpers at the top are shared with the other ``test_loaders_*`` modules.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch

from kvplane import DataPlaneBadRequest, DataPlaneClient, DataPlaneTimeout, KVBatchMeta
from loaders import StreamingDataLoader, StreamingDataset

TASK = "train"
Item = tuple[list[int], KVBatchMeta]


# ------------------------------------------------------------ helpers
def register(client: DataPlaneClient, pid: str, num_samples: int | None) -> None:
    client.register_partition(pid, ["x"], num_samples=num_samples, consumer_tasks=[TASK])


def fill(client: DataPlaneClient, pid: str, ids: range, *, lengths: list[int] | None = None) -> None:
    """Write samples ``s{i}`` with ``x = i`` (and ``seq_len`` tags from ``lengths``)."""
    tags = None if lengths is None else [{"seq_len": lengths[i]} for i in ids]
    client.put_samples([f"s{i}" for i in ids], pid, {"x": torch.tensor(list(ids))}, tags=tags)


def dataset(client: Any, pid: str, rank: int = 0, world: int = 1, **kw: Any) -> StreamingDataset:
    kw.setdefault("batch_size", 4)
    kw.setdefault("timeout_s", 10.0)
    return StreamingDataset(
        client, partition_id=pid, task_name=TASK, fields=["x"], dp_rank=rank, dp_world=world, **kw
    )


def consume(
    loader: Any, limit: int | None = None, *, on_item: Callable[[], None] | None = None
) -> list[Item]:
    """``(x values, meta)`` of each micro-batch (up to ``limit``), checking that rows match the meta."""
    out: list[Item] = []
    if limit == 0:
        return out
    for td, meta in loader:
        xs = td["x"].tolist() if "x" in td.keys() else []
        assert [f"s{x}" for x in xs] == meta.sample_ids
        out.append((xs, meta))
        if on_item is not None:
            on_item()
        if limit is not None and len(out) == limit:
            break
    return out


def run_ranks(world: int, body: Callable[[int], Any], timeout_s: float = 60.0) -> list[Any]:
    """``body(rank)`` for every rank, each in its own thread; re-raises the first error."""
    with ThreadPoolExecutor(world) as pool:
        return list(pool.map(body, range(world), timeout=timeout_s))


def loader_ranks(client: Any, pid: str, world: int, **kw: Any) -> list[list[Item]]:
    """Every rank consumes its StreamingDataLoader to the end."""
    return run_ranks(world, lambda r: consume(StreamingDataLoader(dataset(client, pid, r, world, **kw))))


def delivered(per_rank: list[list[Item]]) -> list[int]:
    return sorted(x for items in per_rank for xs, _ in items for x in xs)


def by_step(items: list[Item]) -> dict[int, list[Item]]:
    steps: dict[int, list[Item]] = {}
    for xs, meta in items:
        steps.setdefault(meta.extra_info["step"], []).append((xs, meta))
    return steps


def lognormal_lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [max(1, int(rng.lognormvariate(6.0, 0.8))) for _ in range(n)]


# ------------------------------------------------------------ exactly once
@pytest.mark.parametrize(
    ("world", "batch", "n", "mbs"), [(1, 4, 12, None), (2, 6, 30, 2), (3, 6, 31, 1), (4, 8, 50, 3)]
)
def test_every_sample_is_delivered_exactly_once_across_ranks(client, pid, world, batch, n, mbs):
    register(client, pid, n)
    fill(client, pid, range(n))
    per_rank = loader_ranks(client, pid, world, batch_size=batch, micro_batch_size=mbs)
    assert delivered(per_rank) == list(range(n))


def test_per_step_shards_are_disjoint_and_token_balanced(client, pid):
    world, batch, n = 4, 64, 256
    lengths = lognormal_lengths(n)
    register(client, pid, n)
    fill(client, pid, range(n), lengths=lengths)
    per_rank = loader_ranks(client, pid, world, batch_size=batch, balance="tokens")
    steps = [by_step(items) for items in per_rank]
    assert sorted(steps[0]) == [0, 1, 2, 3]
    for step in steps[0]:
        shards = [{x for xs, _ in steps[r][step] for x in xs} for r in range(world)]
        union = set().union(*shards)
        assert sum(map(len, shards)) == len(union) == batch  # disjoint and complete
        loads = [sum(lengths[x] for x in shard) for shard in shards]
        # The same step split contiguously (NeMo-RL's default) for comparison.
        ordered = sorted(union)
        contiguous = [sum(lengths[x] for x in ordered[r * 16 : (r + 1) * 16]) for r in range(world)]
        assert max(loads) <= max(contiguous)
        assert max(loads) / (sum(loads) / world) <= 1.05
        for r in range(world):  # the meta's lengths are the samples' tags
            for xs, meta in steps[r][step]:
                assert meta.sequence_lengths == [lengths[x] for x in xs]
    assert delivered(per_rank) == list(range(n))


@pytest.mark.parametrize(
    "kw",
    [
        {"micro_batch_size": 3},
        {"balance": "tokens", "micro_batch_size": 2},
        {
            "sequence_packing_args": {
                "algorithm": "modified_first_fit_decreasing",
                "max_tokens_per_microbatch": 2048,
            }
        },
        {"dynamic_batching_args": {"max_tokens_per_microbatch": 2048, "sequence_length_round": 64}},
        {
            "balance": "tokens",
            "sequence_packing_args": {"algorithm": "first_fit_decreasing", "max_tokens_per_microbatch": 2048},
        },
    ],
    ids=["micro", "balanced-micro", "packing", "dynamic", "balanced-packing"],
)
def test_every_rank_yields_the_same_number_of_micro_batches_per_step(client, pid, kw):
    world, n = 4, 70  # the last step (6 samples) is short and not a multiple of the world
    lengths = lognormal_lengths(n, seed=1)
    register(client, pid, n)
    fill(client, pid, range(n), lengths=lengths)
    per_rank = loader_ranks(client, pid, world, batch_size=16, **kw)
    steps = [by_step(items) for items in per_rank]
    assert all(sorted(s) == sorted(steps[0]) for s in steps)
    for step in steps[0]:
        counts = {len(steps[r][step]) for r in range(world)}
        assert len(counts) == 1
        for r in range(world):
            metas = [meta for _, meta in steps[r][step]]
            assert [m.extra_info["micro_batch_index"] for m in metas] == list(range(len(metas)))
            assert {m.extra_info["num_micro_batches"] for m in metas} == counts
            if "micro_batch_size" in kw:
                assert all(m.size <= kw["micro_batch_size"] for m in metas)
            if "sequence_packing_args" in kw:
                assert all(sum(m.sequence_lengths) <= 2048 for m in metas)
    assert delivered(per_rank) == list(range(n))


def test_packed_micro_batches_carry_the_shard_plan(client, pid):
    n = 32
    lengths = lognormal_lengths(n, seed=2)
    register(client, pid, n)
    fill(client, pid, range(n), lengths=lengths)
    packing = {"algorithm": "modified_first_fit_decreasing", "max_tokens_per_microbatch": 4096}
    per_rank = loader_ranks(client, pid, 2, batch_size=16, sequence_packing_args=packing)
    for items in per_rank:
        for step_items in by_step(items).values():
            for xs, meta in step_items:
                index = meta.extra_info["micro_batch_index"]
                start, end = meta.extra_info["micro_batch_indices"][0][index]
                assert end - start == len(xs)
                assert meta.extra_info["micro_batch_lengths"][0][index] == sum(lengths[x] for x in xs)
                assert meta.extra_info["elem_counts_per_gb"] == [sum(len(x) for x, _ in step_items)]


# ------------------------------------------------------------ finite / streaming
@pytest.mark.parametrize("world", [1, 2, 4])
def test_finite_stream_of_10_with_batch_4_ends_with_all_10_delivered(client, pid, world):
    register(client, pid, 10)
    fill(client, pid, range(10))
    per_rank = loader_ranks(client, pid, world, batch_size=4)
    assert delivered(per_rank) == list(range(10))
    step_sizes = {}
    for items in per_rank:
        for xs, meta in items:
            step_sizes[meta.extra_info["step"]] = step_sizes.get(meta.extra_info["step"], 0) + len(xs)
    assert step_sizes == {0: 4, 1: 4, 2: 2}
    assert client.check_consumption_status(pid, [TASK])


def test_finite_stream_waits_for_the_short_last_batch_to_be_produced(client, pid):
    register(client, pid, 10)
    fill(client, pid, range(8))
    late = threading.Timer(0.2, lambda: fill(client, pid, range(8, 10)))
    late.start()
    per_rank = loader_ranks(client, pid, 2, batch_size=4)
    late.join()
    assert delivered(per_rank) == list(range(10))


def test_streaming_mode_follows_a_producer_thread(client, pid):
    world, batch, chunks, chunk = 2, 4, 10, 6
    register(client, pid, None)

    def produce() -> None:
        for c in range(chunks):
            fill(client, pid, range(c * chunk, (c + 1) * chunk))
            time.sleep(0.01)

    producer = threading.Thread(target=produce)
    producer.start()
    steps = chunks * chunk // batch
    per_rank = run_ranks(
        world,
        lambda r: consume(StreamingDataLoader(dataset(client, pid, r, world, batch_size=batch)), limit=steps),
    )
    producer.join()
    assert delivered(per_rank) == list(range(chunks * chunk))


def test_streaming_leader_times_out_without_producers(client, pid):
    register(client, pid, None)
    with pytest.raises(DataPlaneTimeout, match="became ready"):
        consume(dataset(client, pid, timeout_s=0.3))


def test_follower_times_out_without_a_leader(client, pid):
    register(client, pid, 4)
    fill(client, pid, range(4))
    with pytest.raises(DataPlaneTimeout, match="no plan for step 0"):
        consume(dataset(client, pid, rank=1, world=2, timeout_s=0.3))


# ------------------------------------------------------------ prefetch
class CountingClient:
    """Counts non-empty claims of data of a wrapped client (everything else passes through; claims in
    kvplane's own partitions, e.g. a plan log's GC lease, are not counted)."""

    def __init__(self, inner: DataPlaneClient) -> None:
        self.inner = inner
        self.claims = 0

    def claim_meta(self, *args: Any, **kwargs: Any) -> KVBatchMeta:
        meta = self.inner.claim_meta(*args, **kwargs)
        self.claims += meta.size > 0 and not meta.partition_id.startswith("__kvplane__")
        return meta

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def count_claims(ds: StreamingDataset, monkeypatch: pytest.MonkeyPatch) -> CountingClient:
    """Make ``ds`` use a claim-counting wrapper of its client."""
    counting = CountingClient(ds.source.get())
    monkeypatch.setattr(ds.source, "get", lambda: counting)
    return counting


@pytest.mark.parametrize("prefetch", [1, 2, 3])
def test_claimed_but_unyielded_steps_never_exceed_prefetch(client, pid, prefetch, monkeypatch):
    register(client, pid, 40)
    fill(client, pid, range(40))
    ds = dataset(client, pid, batch_size=4, micro_batch_size=2, prefetch=prefetch)
    counting = count_claims(ds, monkeypatch)
    ahead = []
    finished_steps = 0
    deadline = time.monotonic() + 20
    for _, meta in ds:
        # A slow trainer: the producer runs as far ahead as it may (waited for, so a loaded machine
        # cannot make it look slower than it is), then gets a moment more to overshoot, if it would.
        while counting.claims < min(finished_steps + prefetch, 10) and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.005)
        info = meta.extra_info
        in_flight = counting.claims - finished_steps  # the current step counts
        ahead.append(in_flight)
        if info["micro_batch_index"] + 1 == info["num_micro_batches"]:
            finished_steps += 1
    assert max(ahead) == prefetch
    assert finished_steps == counting.claims == 10


# ------------------------------------------------------------ ranks and sources
def test_dp_rank_and_world_default_from_torch_distributed(client, pid, tmp_path, monkeypatch):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        ds = StreamingDataset(client, partition_id=pid, task_name=TASK, fields=["x"], batch_size=4)
        assert (ds.dp_rank, ds.dp_world) == (0, 1)
        monkeypatch.setattr(dist, "get_rank", lambda: 2)
        monkeypatch.setattr(dist, "get_world_size", lambda: 4)
        ds = StreamingDataset(client, partition_id=pid, task_name=TASK, fields=["x"], batch_size=4)
        assert (ds.dp_rank, ds.dp_world) == (2, 4)
    finally:
        dist.destroy_process_group()
    ds = StreamingDataset(client, partition_id=pid, task_name=TASK, fields=["x"], batch_size=4)
    assert (ds.dp_rank, ds.dp_world) == (0, 1)


@pytest.mark.parametrize(("rank", "world"), [(2, 2), (-1, 2), (0, 0), (1.0, 2)])
def test_invalid_rank_is_rejected(client, pid, rank, world):
    with pytest.raises(DataPlaneBadRequest, match="Invalid rank|dp_world"):
        dataset(client, pid, rank=rank, world=world)


def test_invalid_rank_message_follows_distributed_sampler(client, pid):
    with pytest.raises(ValueError, match=r"^Invalid rank 3, rank should be in the interval \[0, 1\]$"):
        dataset(client, pid, rank=3, world=2)


@pytest.mark.parametrize(
    "kw",
    [
        {"batch_size": 6, "world": 4},
        {"micro_batch_size": 0},
        {
            "micro_batch_size": 2,
            "sequence_packing_args": {"algorithm": "concatenative", "max_tokens_per_microbatch": 8},
        },
        {"balance": "bytes"},
        {"equal_count": True},
        {"sequence_packing_args": {"algorithm": "nope", "max_tokens_per_microbatch": 8}},
        {"prefetch": 0},
        {"timeout_s": 0},
        {"fields": "x"},
        {"partition_id": ""},
    ],
)
def test_bad_arguments_are_rejected_at_construction(client, pid, kw):
    kw = dict(kw)
    world = kw.pop("world", 2)
    args = {
        "partition_id": pid,
        "task_name": TASK,
        "fields": ["x"],
        "batch_size": 4,
        "dp_rank": 0,
        "dp_world": world,
    }
    args.update(kw)
    with pytest.raises(DataPlaneBadRequest):
        StreamingDataset(client, **args)


def test_memory_backend_with_worker_processes_is_refused_with_an_explanation(client, pid):
    with pytest.raises(DataPlaneBadRequest, match="embedded memory backend lives in one process"):
        StreamingDataLoader(dataset(client, pid), num_workers=1)
    with pytest.raises(DataPlaneBadRequest, match="embedded memory backend lives in one process"):
        StreamingDataLoader(dataset({"impl": "memory"}, pid), num_workers=2)


def test_a_memory_config_reads_the_process_default_store(pid):
    import kvplane

    kvplane.close()
    try:
        default = kvplane.init()
        register(default, pid, 6)
        fill(default, pid, range(6))
        assert delivered([consume(StreamingDataLoader(dataset({"impl": "memory"}, pid)))]) == list(range(6))
    finally:
        kvplane.close()


def test_ranks_with_different_dp_world_are_refused(client, pid):
    register(client, pid, 8)
    fill(client, pid, range(8))
    consume(dataset(client, pid, rank=0, world=1), limit=1)  # plans for dp_world=1 now exist
    with pytest.raises(DataPlaneBadRequest, match="dp_world"):
        consume(dataset(client, pid, rank=1, world=2, timeout_s=2.0))
