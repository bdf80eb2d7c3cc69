"""Checkpoint/restart, early stops, plan garbage collection and worker striding (memory backend)."""

from __future__ import annotations

import itertools
import json
import threading
import time

import pytest

import kvplane
from kvplane import DataPlaneBadRequest, DataPlaneUnavailable
from kvplane.adapters.memory import MemoryDataPlaneClient
from loaders import StreamingDataLoader
from loaders._control import GC_EVERY_STEPS, PlanLog
from loaders._steps import StepProducer
from tests.unit.test_loaders import (
    TASK,
    by_step,
    consume,
    count_claims,
    dataset,
    delivered,
    fill,
    register,
    run_ranks,
)


def _xs(items):
    return sorted(x for xs, _ in items for x in xs)


def _plan_steps(client, pid):
    log = PlanLog(client, pid, TASK)
    return sorted(log.snapshot().plans)


# ------------------------------------------------------------ restart
@pytest.mark.parametrize("checkpoint_after", [1, 5, 8])
def test_restart_from_a_checkpoint_resumes_exactly(client, pid, checkpoint_after):
    """Each rank checkpoints after some micro-batches, trains a few more, "crashes"; fresh objects resume."""
    world, n = 2, 40
    register(client, pid, n)
    fill(client, pid, range(n))
    kw = {"batch_size": 8, "micro_batch_size": 2, "prefetch": 3}

    def first_run(rank):
        loader = StreamingDataLoader(dataset(client, pid, rank, world, **kw))
        it = iter(loader)
        before = consume(it, checkpoint_after)
        state = json.loads(json.dumps(loader.state_dict()))  # what a trainer writes to disk
        lost = consume(it, 3)  # trained after the checkpoint, then the process dies
        return before, state, lost

    runs = run_ranks(world, first_run)

    def second_run(rank):
        loader = StreamingDataLoader(dataset(client, pid, rank, world, **kw))
        loader.load_state_dict(runs[rank][1])
        return consume(loader)

    resumed = run_ranks(world, second_run)
    before = [runs[r][0] for r in range(world)]
    assert delivered(before + resumed) == list(range(n))
    for rank in range(world):  # what was trained after the checkpoint comes again, in the same order
        lost = [xs for xs, _ in runs[rank][2]]
        assert [xs for xs, _ in resumed[rank][: len(lost)]] == lost


def test_state_dict_points_at_the_next_micro_batch(client, pid):
    register(client, pid, 12)
    fill(client, pid, range(12))
    loader = StreamingDataLoader(dataset(client, pid, batch_size=4, micro_batch_size=2))
    assert loader.state_dict()["step"] is None  # before the first iteration: a fresh start
    positions = []
    for _, meta in loader:
        state = loader.state_dict()
        positions.append(
            (
                meta.extra_info["step"],
                meta.extra_info["micro_batch_index"],
                state["step"],
                state["micro_batch"],
            )
        )
    assert positions == [(0, 0, 0, 1), (0, 1, 1, 0), (1, 0, 1, 1), (1, 1, 2, 0), (2, 0, 2, 1), (2, 1, 3, 0)]
    epoch = PlanLog(client, pid, TASK).snapshot().epoch
    assert epoch and dataset(client, pid).state_dict()["epoch"] is None  # a fresh start names no epoch
    assert loader.state_dict() == dataset(client, pid).state_dict() | {
        "step": 4,
        "micro_batch": 0,
        "epoch": epoch,
    }


def test_a_new_loader_continues_after_the_last_finished_step(client, pid, monkeypatch):
    """No state loaded: steps claimed and prefetched by a stopped loader are delivered, not lost."""
    register(client, pid, 40)
    fill(client, pid, range(40))
    first = dataset(client, pid, batch_size=4, micro_batch_size=2, prefetch=3)
    counting = count_claims(first, monkeypatch)
    got = consume(first, 4)  # two whole steps, while the producer claimed ahead
    assert counting.claims > 2
    rest = consume(dataset(client, pid, batch_size=4, micro_batch_size=2))
    assert _xs(got) + _xs(rest) == list(range(40))
    assert min(m.extra_info["step"] for _, m in rest) == 2


def test_a_new_loader_repeats_a_step_left_half_yielded(client, pid):
    """Without a state the resume point is a step boundary: a half-yielded step comes again whole."""
    register(client, pid, 8)
    fill(client, pid, range(8))
    got = consume(dataset(client, pid, batch_size=4, micro_batch_size=2), 3)  # step 0 and half of step 1
    rest = consume(dataset(client, pid, batch_size=4, micro_batch_size=2))
    assert [xs for xs, _ in rest] == [[4, 5], [6, 7]]
    assert _xs(got) == [0, 1, 2, 3, 4, 5]


def test_a_resuming_leader_waits_for_a_plan_listed_before_its_body(client, pid):
    """TransferQueue lists a plan's tags before its body lands: a resuming leader waits for the body."""
    register(client, pid, 12)
    fill(client, pid, range(12))
    first = StreamingDataLoader(dataset(client, pid, batch_size=4, micro_batch_size=2))
    it = iter(first)
    step0 = consume(it, 2)
    state = first.state_dict()
    step1 = consume(it, 2)
    it.close()
    log = PlanLog(client, pid, TASK)
    key, body = "step-000000000001", log.read(1).to_bytes()
    tags = client.list_keys(log.partition_id)[log.partition_id][key]
    client.clear_samples([key], log.partition_id)
    client.put_samples([key], log.partition_id, None, tags=[tags])  # listed, body still in flight
    landing = threading.Timer(0.2, client.put_samples, ([key], log.partition_id, {"plan": [body]}))
    landing.start()
    resumed = StreamingDataLoader(dataset(client, pid, batch_size=4, micro_batch_size=2))
    resumed.load_state_dict(state)
    rest = consume(resumed)
    landing.join()
    assert [xs for xs, _ in rest[:2]] == [xs for xs, _ in step1]  # step 1 replayed as planned
    assert _xs(step0) + _xs(rest) == list(range(12))


def test_a_finished_stream_continues_when_the_partition_is_refilled(client, pid):
    register(client, pid, 4)
    fill(client, pid, range(4))
    assert _xs(consume(dataset(client, pid))) == [0, 1, 2, 3]
    client.clear_samples(None, pid)  # a new round on the same partition and task
    register(client, pid, 4)
    fill(client, pid, range(4, 8))
    assert _xs(consume(dataset(client, pid))) == [4, 5, 6, 7]
    assert _plan_steps(client, pid) == [3]  # round 1's final plan (step 1) went once round 2 began


# ------------------------------------------------------------ state validation
_GOOD = {
    "format": 2,
    "task_name": TASK,
    "dp_rank": 0,
    "dp_world": 1,
    "epoch": "e0",
    "step": 3,
    "micro_batch": 1,
}


@pytest.mark.parametrize(
    "state",
    [
        None,
        [],
        {"step": 3},
        {**_GOOD, "extra": 1},
        {**_GOOD, "format": 3},
        {**_GOOD, "format": 1},
        {**_GOOD, "epoch": None},
        {**_GOOD, "epoch": ""},
        {**_GOOD, "epoch": 7},
        {**_GOOD, "dp_rank": 1, "dp_world": 2},
        {**_GOOD, "task_name": "other"},
        {**_GOOD, "step": -1},
        {**_GOOD, "step": True},
        {**_GOOD, "step": 1.5},
        {**_GOOD, "micro_batch": -2},
        {**_GOOD, "step": None, "micro_batch": 1},
    ],
)
def test_malformed_state_is_rejected(client, pid, state):
    if isinstance(state, dict) and "format" in state:
        state = {**state, "partition_id": pid}
    ds = dataset(client, pid)
    with pytest.raises(ValueError, match="Invalid state_dict") as err:
        ds.load_state_dict(state)
    assert isinstance(err.value, DataPlaneBadRequest)


def test_a_state_for_another_partition_is_rejected(client, pid):
    with pytest.raises(DataPlaneBadRequest, match="belongs to partition 'elsewhere'"):
        dataset(client, pid).load_state_dict({**_GOOD, "partition_id": "elsewhere"})


def test_resuming_past_the_last_micro_batch_of_a_step_is_rejected(client, pid):
    register(client, pid, 8)
    fill(client, pid, range(8))
    consume(dataset(client, pid, batch_size=4), 1)
    ds = dataset(client, pid, batch_size=4)
    epoch = PlanLog(client, pid, TASK).snapshot().epoch
    ds.load_state_dict({**_GOOD, "partition_id": pid, "epoch": epoch, "step": 0, "micro_batch": 5})
    with pytest.raises(DataPlaneBadRequest, match="cannot resume at micro-batch 5"):
        consume(ds)


# ------------------------------------------------------------ plan writes
class _PlanWritesHeldBack(MemoryDataPlaneClient):
    """Each plan write waits ``delay_s`` (or fails when ``fail``); when each was stored is recorded."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        super().__init__()
        self.delay_s, self.fail = delay_s, fail
        self.stored_at: dict[str, float] = {}

    def put_samples(self, sample_ids, partition_id, fields=None, tags=None):
        is_plan = kvplane.is_internal_partition(partition_id) and sample_ids[0].startswith("step-")
        if is_plan:
            time.sleep(self.delay_s)
            if self.fail:
                raise DataPlaneUnavailable("the plan log is unreachable")
        meta = super().put_samples(sample_ids, partition_id, fields, tags)
        if is_plan:
            self.stored_at[sample_ids[0]] = time.monotonic()
        return meta


def test_rows_are_handed_out_only_once_their_plan_is_stored(pid):
    client = _PlanWritesHeldBack(delay_s=0.05)
    register(client, pid, 12)
    fill(client, pid, range(12))
    received = {}
    for _, meta in dataset(client, pid, batch_size=4):
        received.setdefault(meta.extra_info["step"], time.monotonic())
    assert sorted(received) == [0, 1, 2]
    assert all(received[s] >= client.stored_at[f"step-{s:012d}"] for s in received)


def test_a_plan_that_cannot_be_stored_fails_the_step_and_yields_nothing(pid):
    client = _PlanWritesHeldBack(fail=True)
    register(client, pid, 8)
    fill(client, pid, range(8))
    yielded = []
    with pytest.raises(DataPlaneUnavailable, match="plan log is unreachable"):
        for item in dataset(client, pid, batch_size=4):
            yielded.append(item)
    assert yielded == [] and client.stored_at == {}


# ------------------------------------------------------------ garbage collection
def test_plans_are_collected_once_every_rank_is_done(client, pid):
    register(client, pid, 20)
    fill(client, pid, range(20))
    run_ranks(2, lambda r: consume(dataset(client, pid, r, 2)))
    assert _plan_steps(client, pid) == [5]  # only the final plan, which stays until the stream continues
    assert PlanLog(client, pid, TASK).snapshot().gc_below == 6  # 5 steps and the final plan


def test_the_leader_collects_plans_while_streaming(client, pid):
    register(client, pid, 80)
    fill(client, pid, range(80))
    seen = []
    collective = threading.Barrier(2, timeout=30)  # ranks in lockstep, as data-parallel training is

    def body(rank):
        for _ in dataset(client, pid, rank, 2, prefetch=2):
            collective.wait()
            if rank == 0:
                # Collections run in the background; let a started one finish (a loaded machine may
                # take steps to) so the count does not depend on the scheduler.
                for thread in threading.enumerate():
                    if thread.name.startswith("kvplane-gc-"):
                        thread.join(timeout=10)
                        assert not thread.is_alive()
                seen.append(len(_plan_steps(client, pid)))

    run_ranks(2, body)
    assert len(seen) == 20
    # Between collections: the steps since the last, one the follower may still ack, the prefetched ones.
    assert max(seen) <= GC_EVERY_STEPS + 3 < 20


def test_a_checkpoint_keeps_its_plans_after_the_stream_ends(client, pid):
    register(client, pid, 24)
    fill(client, pid, range(24))

    def run(rank):
        loader = StreamingDataLoader(dataset(client, pid, rank, 2, micro_batch_size=1))
        it = iter(loader)
        consume(it, 5)
        state = loader.state_dict()  # step 2, micro-batch 1
        rest = consume(it)
        return state, rest

    runs = run_ranks(2, run)
    assert _plan_steps(client, pid) == [2, 3, 4, 5, 6]  # kept from the oldest checkpoint on

    def again(rank):
        loader = StreamingDataLoader(dataset(client, pid, rank, 2, micro_batch_size=1))
        loader.load_state_dict(runs[rank][0])
        return consume(loader)

    resumed = run_ranks(2, again)
    for rank in range(2):  # the same micro-batches again, from the checkpoint on
        assert [xs for xs, _ in resumed[rank]] == [xs for xs, _ in runs[rank][1]]


def test_resuming_from_a_collected_checkpoint_fails_loudly(client, pid):
    register(client, pid, 24)
    fill(client, pid, range(24))
    loader = StreamingDataLoader(dataset(client, pid, micro_batch_size=2))
    it = iter(loader)
    consume(it, 2)
    old = loader.state_dict()  # step 1
    for _ in range(2):  # two newer checkpoints: the old one's plans may go
        consume(it, 2)
        loader.state_dict()
    consume(it)
    fresh = StreamingDataLoader(dataset(client, pid, micro_batch_size=2))
    fresh.load_state_dict(old)
    with pytest.raises(DataPlaneBadRequest, match="garbage-collected"):
        consume(fresh)


# ------------------------------------------------------------ worker striding
def _run_workers(client, pid, world, workers, n, batch):
    """Each rank runs ``workers[rank]`` producers striding over steps, read round-robin like DataLoader."""

    def body(rank):
        ds = dataset(client, pid, rank, world, batch_size=batch)
        stream, start = ds.open_stream()
        count = workers[rank]
        producers = [
            StepProducer(client, ds.spec, first=start.step + w, stride=count, since=start.step)
            for w in range(count)
        ]

        def in_order():
            for w in itertools.cycle(range(count)):
                batch_ = producers[w].next()
                producers[w].done()
                yield batch_

        try:
            return consume(stream.micro_batches(in_order(), start))
        finally:
            for p in producers:
                p.stop()

    return run_ranks(world, body)


@pytest.mark.parametrize(("workers", "n"), [((2, 2), 40), ((2, 3), 42), ((3, 1), 38), ((4, 2), 7)])
def test_worker_processes_striding_over_steps_deliver_every_sample_once(client, pid, workers, n):
    register(client, pid, n)
    fill(client, pid, range(n))
    per_rank = _run_workers(client, pid, 2, workers, n, batch=4)
    assert delivered(per_rank) == list(range(n))
    for items in per_rank:  # the steps come in order
        steps = [m.extra_info["step"] for _, m in items]
        assert steps == sorted(steps)
    assert sorted(by_step(per_rank[0])) == sorted(by_step(per_rank[1]))
