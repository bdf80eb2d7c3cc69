"""Step plans (how a claimed batch is split) and the plan log (the control partition), without threads."""

from __future__ import annotations

import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from kvplane import DataPlaneBadRequest, DataPlaneError, DataPlaneTimeout, KVBatchMeta
from kvplane.adapters.memory import MemoryDataPlaneClient
from loaders._control import PlanLog, plan_partition_id
from loaders._plan import ShardOptions, StepPlan, even_bounds, plan_step
from tests.unit.test_loaders import TASK, consume, dataset, run_ranks

PACKING = {"algorithm": "modified_first_fit_decreasing", "max_tokens_per_microbatch": 1024}
DYNAMIC = {"max_tokens_per_microbatch": 1024, "sequence_length_round": 64}


def _meta(n: int, lengths: list[int] | None = None, tags: bool = True) -> KVBatchMeta:
    lengths = lengths if lengths is not None else [(37 * i) % 500 + 10 for i in range(n)]
    return KVBatchMeta(
        "p",
        "t",
        [f"s{i}" for i in range(n)],
        fields=["x"],
        sequence_lengths=lengths,
        tags=[{"seq_len": n_, "group_id": f"g{i // 2}"} for i, n_ in enumerate(lengths)] if tags else None,
    )


def _ids(plan: StepPlan) -> list[list[str]]:
    return [s.sample_ids for s in plan.shards]


@pytest.mark.parametrize("n", [1, 3, 8, 10, 13])
@pytest.mark.parametrize(
    "options",
    [
        ShardOptions(),
        ShardOptions(micro_batch_size=2),
        ShardOptions(balance="tokens", micro_batch_size=3),
        ShardOptions(balance="flops", equal_count=True),
        ShardOptions(sequence_packing_args=PACKING),
        ShardOptions(dynamic_batching_args=DYNAMIC),
        ShardOptions(balance="tokens", sequence_packing_args=PACKING),
    ],
    ids=["plain", "micro", "tokens", "flops-equal", "packing", "dynamic", "tokens-packing"],
)
def test_a_plan_covers_the_batch_once_with_equal_micro_batch_counts(n, options):
    meta = _meta(n)
    plan = plan_step(7, meta, 4, options)
    ids = [i for shard in _ids(plan) for i in shard]
    assert sorted(ids) == sorted(meta.sample_ids) and len(ids) == n
    counts = {len(s.bounds) for s in plan.shards}
    assert counts == {plan.num_micro_batches} and plan.num_micro_batches >= 1
    for shard in plan.shards:  # bounds tile each shard in order
        edges = [b for lo_hi in shard.bounds for b in lo_hi]
        assert edges[0] == 0 and edges[-1] == len(shard.sample_ids)
        assert all(a == b for a, b in zip(edges[1:-1:2], edges[2:-1:2], strict=True))
        lengths = dict(zip(meta.sample_ids, meta.sequence_lengths, strict=True))
        assert shard.sequence_lengths == [lengths[i] for i in shard.sample_ids]
        assert [t["seq_len"] for t in shard.tags] == shard.sequence_lengths
    if options.micro_batch_size:
        assert all(hi - lo <= options.micro_batch_size for s in plan.shards for lo, hi in s.bounds)
    if options.sequence_packing_args:
        for shard in plan.shards:
            sums = [sum(shard.sequence_lengths[lo:hi]) for lo, hi in shard.bounds]
            assert sums == shard.extra_info["micro_batch_lengths"][0]
            assert all(total <= 1024 for total in sums)
            assert shard.extra_info["elem_counts_per_gb"] == [len(shard.sample_ids)]


def test_without_packing_the_loader_owns_micro_batching():
    plan = plan_step(0, _meta(8), 2, ShardOptions(balance="tokens"))
    for shard in plan.shards:
        assert not {"micro_batch_indices", "micro_batch_lengths", "elem_counts_per_gb"} & set(
            shard.extra_info
        )
        assert shard.bounds == [[0, 4]]


def test_leftovers_go_to_the_first_ranks_or_to_the_least_loaded_ones():
    meta = _meta(6, lengths=[100, 100, 100, 100, 5, 7])
    plain = plan_step(0, meta, 4, ShardOptions())
    assert _ids(plain) == [["s0", "s4"], ["s1", "s5"], ["s2"], ["s3"]]
    meta = _meta(6, lengths=[400, 10, 10, 10, 5, 7])
    balanced = plan_step(0, meta, 4, ShardOptions(balance="tokens"))
    loads = [sum(s.sequence_lengths) for s in balanced.shards]
    assert max(loads) == 400  # the leftovers avoided the rank holding the long sample
    assert sorted(len(s.sample_ids) for s in balanced.shards) == [1, 1, 2, 2]


def test_packed_leftovers_form_one_extra_micro_batch_on_every_rank():
    meta = _meta(5, lengths=[100, 200, 300, 400, 77])
    plan = plan_step(
        0, meta, 4, ShardOptions(sequence_packing_args={**PACKING, "sequence_length_pad_multiple": 64})
    )
    assert plan.num_micro_batches == 2
    extra = [s.bounds[-1] for s in plan.shards]
    assert extra == [[1, 2], [1, 1], [1, 1], [1, 1]]
    assert plan.shards[0].extra_info["micro_batch_lengths"][0][-1] == 128  # 77 padded to 64
    assert [s.extra_info["micro_batch_lengths"][0][-1] for s in plan.shards[1:]] == [0, 0, 0]


def test_fewer_samples_than_ranks_leave_some_ranks_empty():
    plan = plan_step(0, _meta(2), 4, ShardOptions(micro_batch_size=4))
    assert _ids(plan) == [["s0"], ["s1"], [], []]
    assert plan.num_micro_batches == 1 and plan.shards[3].bounds == [[0, 0]]


def test_samples_without_lengths_split_plainly_but_not_balanced():
    meta = KVBatchMeta("p", "t", [f"s{i}" for i in range(6)], fields=["x"])
    plan = plan_step(0, meta, 2, ShardOptions(micro_batch_size=2))
    assert _ids(plan) == [["s0", "s1", "s2"], ["s3", "s4", "s5"]]
    assert plan.shards[0].sequence_lengths is None and plan.shards[0].bounds == [[0, 2], [2, 3]]
    with pytest.raises(DataPlaneBadRequest, match="seq_len"):
        plan_step(0, meta, 2, ShardOptions(balance="tokens"))


def test_group_tag_keeps_groups_on_one_rank():
    plan = plan_step(0, _meta(16), 4, ShardOptions(balance="tokens", group_tag="group_id"))
    for shard in plan.shards:
        groups = [t["group_id"] for t in shard.tags]
        assert all(groups.count(g) == 2 for g in groups)


def test_micro_batch_meta_says_where_it_belongs():
    plan = plan_step(3, _meta(8), 2, ShardOptions(sequence_packing_args=PACKING))
    meta = plan.micro_batch_meta("p", "t", dp_rank=1, index=0)
    lo, hi = plan.shards[1].bounds[0]
    assert meta.sample_ids == plan.shards[1].sample_ids[lo:hi]
    assert meta.fields == ["x"] and meta.partition_id == "p" and meta.task_name == "t"
    info = meta.extra_info
    assert (info["step"], info["micro_batch_index"], info["dp_rank"], info["dp_world"]) == (3, 0, 1, 2)
    assert info["num_micro_batches"] == plan.num_micro_batches
    assert info["micro_batch_indices"] == plan.shards[1].extra_info["micro_batch_indices"]


def test_plans_round_trip_and_reject_what_cannot_be_stored():
    plan = plan_step(2, _meta(6), 2, ShardOptions(balance="tokens", micro_batch_size=2))
    assert StepPlan.from_bytes(plan.to_bytes()) == plan
    assert StepPlan.from_bytes(StepPlan.terminal(9, 2).to_bytes()) == StepPlan.terminal(9, 2)
    meta = _meta(2)
    meta.tags[0]["blob"] = threading.Lock()
    with pytest.raises(DataPlaneBadRequest, match="picklable"):
        plan_step(0, meta, 2, ShardOptions()).to_bytes()
    for blob in (b"not a pickle", pickle.dumps({"format": 99}), pickle.dumps([1])):
        with pytest.raises(DataPlaneError, match="unreadable step plan"):
            StepPlan.from_bytes(blob)


def test_plan_tags_keep_their_values_and_types():
    tags = [{"seq_len": 3, "group_id": "g0", "span": (1, 2)}, {"seq_len": 4, "extra": [1.5, None]}]
    meta = KVBatchMeta("p", "t", ["a", "b"], fields=["x"], tags=tags)
    back = StepPlan.from_bytes(plan_step(0, meta, 1, ShardOptions()).to_bytes())
    assert back.shards[0].tags == tags and back.shards[0].tags[0]["span"] == (1, 2)


@pytest.mark.parametrize(("rows", "parts"), [(0, 1), (5, 2), (7, 3), (2, 4), (12, 4)])
def test_even_bounds_tile_the_rows_with_sizes_differing_by_at_most_one(rows, parts):
    bounds = even_bounds(rows, parts)
    sizes = [hi - lo for lo, hi in bounds]
    assert len(bounds) == parts and sum(sizes) == rows and max(sizes) - min(sizes) <= 1
    assert bounds[0][0] == 0 and all(bounds[i][1] == bounds[i + 1][0] for i in range(parts - 1))


# ------------------------------------------------------------ plan log
def _wait(log: PlanLog, step: int, since: int = 0, timeout: float = 2.0, body: bool = True, stop=None):
    return log.wait(
        step,
        since=since,
        dp_world=2,
        deadline=time.monotonic() + timeout,
        poll_interval_s=0.005,
        stop=stop or threading.Event(),
        body=body,
    )


def test_the_control_partition_is_named_after_the_stream(client):
    log = PlanLog(client, "rollouts", "train")
    assert log.partition_id == plan_partition_id("rollouts", "train") == "__kvplane__/plans/rollouts:train"
    log.write(StepPlan.terminal(0, 2))
    assert "step-000000000000" in client.list_keys(log.partition_id)[log.partition_id]


def test_a_waiting_reader_gets_the_plan_as_soon_as_it_is_written(client):
    log = PlanLog(client, "p", "t")
    plan = plan_step(0, _meta(4), 2, ShardOptions())
    threading.Timer(0.05, log.write, args=(plan,)).start()
    assert _wait(log, 0) == plan


def test_an_earlier_final_plan_ends_the_wait_but_not_one_before_the_start(client):
    log = PlanLog(client, "p", "t")
    log.write(StepPlan.terminal(3, 2))
    assert _wait(log, 5, since=2).final
    with pytest.raises(DataPlaneTimeout, match="no plan for step 5"):
        _wait(log, 5, since=4, timeout=0.05)


def test_a_stopped_wait_returns_none(client):
    stop = threading.Event()
    threading.Timer(0.05, stop.set).start()
    assert _wait(PlanLog(client, "p", "t"), 0, stop=stop) is None


def test_garbage_collection_waits_for_every_rank_and_keeps_checkpoints(client):
    log = PlanLog(client, "p", "t")
    for step in range(6):
        log.write(StepPlan(step, 2))
    log.ack(0, progress=5)
    assert log.collect_garbage(2) == 0 and sorted(log.snapshot().plans) == list(range(6))  # rank 1 unknown
    log.ack(1, progress=4, checkpoint=2, previous_checkpoint=1)
    assert log.collect_garbage(2) == 1 and sorted(log.snapshot().plans) == [1, 2, 3, 4, 5]
    log.ack(1, checkpoint=4, previous_checkpoint=3)
    assert log.collect_garbage(2) == 3 and sorted(log.snapshot().plans) == [3, 4, 5]
    with pytest.raises(DataPlaneBadRequest, match="garbage-collected"):
        _wait(log, 2)
    assert not _wait(log, 2, body=False).final  # a collected plan existed and was not final


class _ClearRecorder(MemoryDataPlaneClient):
    """Records every clear of a plan log, with the keys it named that were already gone.

    Listings are slowed down, so concurrent collectors would overlap if nothing serialised them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.clears: list[list[str]] = []
        self.missing: list[str] = []

    def list_keys(self, partition_id=None):
        listed = super().list_keys(partition_id)
        if partition_id is not None and partition_id.startswith("__kvplane__/plans/"):
            time.sleep(0.005)
        return listed

    def clear_samples(self, sample_ids, partition_id):
        if sample_ids is not None and partition_id.startswith("__kvplane__/plans/"):
            present = set(super().list_keys(partition_id).get(partition_id, {}))
            self.clears.append(list(sample_ids))
            self.missing += [k for k in sample_ids if k not in present]
        super().clear_samples(sample_ids, partition_id)


def test_concurrent_collectors_clear_only_keys_that_exist():
    """Every rank collects when its iteration ends: collections must not clear a key twice."""
    client = _ClearRecorder()
    log = PlanLog(client, "p", "t")
    for step in range(20):
        log.write(StepPlan(step, 2))
    log.ack(0, progress=14)
    log.ack(1, progress=14)
    collectors = 6
    start = threading.Barrier(collectors, timeout=10)

    def collect(_: int) -> int:
        start.wait()  # all list the same plans at once
        return PlanLog(client, "p", "t").collect_garbage(2)

    with ThreadPoolExecutor(collectors) as pool:
        floors = list(pool.map(collect, range(collectors)))
    assert client.missing == [] and client.clears  # something was collected, never a missing key
    final = PlanLog(client, "p", "t").collect_garbage(2)
    assert final == max(floors) == 14 and sorted(log.snapshot().plans) == list(range(14, 20))
    assert client.missing == []
    cleared = [k for keys in client.clears for k in keys if k.startswith("step-")]
    assert sorted(cleared) == [f"step-{s:012d}" for s in range(14)]  # each plan cleared exactly once


def test_two_ranks_ending_together_clear_only_keys_that_exist(pid):
    """The loader's own cleanup (background and end-of-stream collections) over a whole stream."""
    client = _ClearRecorder()
    client.register_partition(pid, ["x"], num_samples=90, consumer_tasks=[TASK])
    client.put_samples([f"s{i}" for i in range(90)], pid, {"x": torch.arange(90)})
    run_ranks(2, lambda r: consume(dataset(client, pid, r, 2, batch_size=4)))
    assert client.clears and client.missing == []
    assert sorted(PlanLog(client, pid, TASK).snapshot().plans) == [23]  # only the final plan is left


def test_a_plan_listed_before_its_body_is_stored_is_polled_again(client):
    """TransferQueue publishes a put's tags before its data; a reader must wait for the body."""
    log = PlanLog(client, "p", "t")
    plan = plan_step(0, _meta(4), 2, ShardOptions())
    tags = [{"step": 0, "final": False, "writer": log.writer}]  # the writer's own put, tags first
    client.put_samples(["step-000000000000"], log.partition_id, None, tags=tags)
    threading.Timer(0.05, log.write, args=(plan,)).start()
    assert _wait(log, 0) == plan
