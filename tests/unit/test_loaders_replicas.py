"""Replica groups (processes sharing a dp_rank), empty micro-batches' schema, TransferQueue's arguments.

Ranks and replicas are threads sharing one memory client; the broadcast mode runs two spawned
processes joined by a gloo process group.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import pytest
import torch
from tensordict import TensorDict

from kvplane import DataPlaneBadRequest
from loaders import StreamingDataLoader, StreamingDataset
from loaders._control import PlanLog

from .test_loaders import TASK, consume, fill, register

DEADLINE_S = 120


def replica(
    client: Any, pid: str, rank: int, world: int, k: int, kw_world: int = 2, **kw: Any
) -> StreamingDataset:
    kw.setdefault("batch_size", 4)
    kw.setdefault("timeout_s", 10.0)
    return StreamingDataset(
        client,
        partition_id=pid,
        task_name=TASK,
        fields=["x"],
        dp_rank=rank,
        dp_world=world,
        replica_rank=k,
        replica_world=kw_world,
        **kw,
    )


def run_all(fns: list[Any]) -> list[Any]:
    with ThreadPoolExecutor(len(fns)) as pool:
        return [f.result(timeout=DEADLINE_S) for f in [pool.submit(fn) for fn in fns]]


def trace(items: list[tuple[list[int], Any]]) -> list[tuple[int, int, list[int]]]:
    return [(m.extra_info["step"], m.extra_info["micro_batch_index"], xs) for xs, m in items]


# ------------------------------------------------------------ mode (a): replicas read the same plan
def test_replicas_of_a_dp_rank_get_identical_micro_batches_and_each_sample_goes_to_one_dp_rank(client):
    register(client, "p", 38)  # 4 full steps of 8 and a short one of 6
    fill(client, "p", range(38))
    topology = [(0, 0), (0, 1), (1, 0), (1, 1)]  # (dp_rank, replica_rank): TransferQueue's [0, 0, 1, 1]
    got = run_all(
        [
            (lambda r=r, k=k: consume(replica(client, "p", r, 2, k, batch_size=8, micro_batch_size=2)))
            for r, k in topology
        ]
    )
    traces = [trace(items) for items in got]
    assert traces[0] == traces[1] and traces[2] == traces[3]  # identical, in the same order
    assert len(traces[0]) == len(traces[2])  # equal micro-batch counts across DP ranks
    delivered = sorted(x for t in (traces[0], traces[2]) for _, _, xs in t for x in xs)
    assert delivered == list(range(38))  # exactly once per DP group
    snap = PlanLog(client, "p", TASK).snapshot()
    assert sorted(snap.acks) == [(0, 0), (0, 1), (1, 0), (1, 1)]  # one progress record per replica
    assert {a["progress"] for a in snap.acks.values()} == {6}  # all finished: steps 0-4 and the final 5


def test_plans_are_kept_until_the_slowest_replica_has_read_them(client):
    register(client, "p", 80)  # 20 steps: past several garbage collections
    fill(client, "p", range(80))
    leader = consume(replica(client, "p", 0, 1, 0))
    late = consume(replica(client, "p", 0, 1, 1))  # starts after the leader finished
    assert trace(late) == trace(leader) and len(leader) == 20


def test_a_second_leader_of_a_step_is_a_typed_error_not_an_overwrite(client):
    register(client, "p", None)
    fill(client, "p", range(40))
    first = iter(StreamingDataLoader(replica(client, "p", 0, 1, 0, kw_world=1)))
    assert next(first)[0]["x"].tolist() == [0, 1, 2, 3]  # steps 0 and 1 claimed and planned
    second = iter(StreamingDataLoader(replica(client, "p", 0, 1, 0, kw_world=1)))  # a misconfigured peer
    assert [next(second)[0]["x"].tolist() for _ in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert next(first)[0]["x"].tolist() == [4, 5, 6, 7]
    with pytest.raises(DataPlaneBadRequest, match="two leaders on one stream: the plan of step 2"):
        next(first)  # its own claim of step 2 meets the second leader's plan
    assert PlanLog(client, "p", TASK).read(2).shards[0].sample_ids == ["s8", "s9", "s10", "s11"]  # kept


def test_each_replica_resumes_exactly_from_its_own_state_dict(client):
    register(client, "p", 48)
    fill(client, "p", range(48))
    ds = {k: replica(client, "p", 0, 1, k, micro_batch_size=2) for k in range(2)}
    lead = StreamingDataLoader(ds[0])
    whole = consume(lead)  # replica 0 runs through (24 micro-batches)
    lagging = StreamingDataLoader(ds[1])
    before = consume(lagging, 7)
    state = lagging.state_dict()
    consume(lagging, 3)  # work a crash loses
    assert state["step"] == 3 and state["micro_batch"] == 1
    restarted = StreamingDataLoader(replica(client, "p", 0, 1, 1, micro_batch_size=2))
    restarted.load_state_dict(state)
    after = consume(restarted)
    assert trace(before + after) == trace(whole)


def test_replica_arguments_are_checked(client):
    with pytest.raises(DataPlaneBadRequest, match="replica_rank 2"):
        replica(client, "p", 0, 1, 2)
    with pytest.raises(DataPlaneBadRequest, match="replica_world must be a positive integer"):
        replica(client, "p", 0, 1, 0, kw_world=0)
    with pytest.raises(DataPlaneBadRequest, match="needs an initialised torch.distributed"):
        StreamingDataset(
            client, partition_id="p", task_name=TASK, fields=["x"], batch_size=2, replica_group=object()
        )


# ------------------------------------------------------------ empty micro-batches
def test_a_rank_with_no_rows_gets_every_field_with_zero_rows_and_its_schema(client):
    client.register_partition("p", ["x", "emb", "ids"], num_samples=3, consumer_tasks=[TASK])
    ids = torch.nested.nested_tensor([torch.arange(i + 1) for i in range(3)], layout=torch.jagged)
    rows = TensorDict(
        {"x": torch.arange(3), "emb": torch.ones(3, 2, 5, dtype=torch.bfloat16), "ids": ids}, [3]
    )
    client.put_samples(["s0", "s1", "s2"], "p", rows)
    fields = ["x", "emb", "ids"]

    def run(rank: int) -> list[TensorDict]:
        ds = StreamingDataset(
            client,
            partition_id="p",
            task_name=TASK,
            fields=fields,
            batch_size=2,
            dp_rank=rank,
            dp_world=2,
            timeout_s=10.0,
        )
        return [td for td, _ in ds]

    rank0, rank1 = run_all([lambda: run(0), lambda: run(1)])
    assert len(rank0) == len(rank1) == 2  # the short last step: 1 sample for rank 0, none for rank 1
    empty = rank1[1]
    assert empty.batch_size == torch.Size([0]) and set(empty.keys()) == set(fields)
    assert empty["x"].dtype == torch.int64 and empty["x"].shape == (0,)
    assert empty["emb"].dtype == torch.bfloat16 and empty["emb"].shape == (0, 2, 5)
    ids = empty["ids"]  # jagged: read as one row of another shard reads (here dense), with 0 rows
    assert ids.dtype == torch.int64 and ids.shape[0] == 0
    padded = ids.to_padded_tensor(0) if ids.is_nested else ids
    model = torch.nn.Linear(5, 1)  # a DDP rank still runs forward and backward on it
    loss = model(empty["emb"].float()).sum() + torch.nn.Embedding(4, 3)(padded).sum()
    loss.backward()
    assert model.weight.grad is not None and float(model.weight.grad.abs().sum()) == 0.0


# ------------------------------------------------------------ TransferQueue's arguments
def tq_dataset(client: Any, pid: str, dp_rank: int, **kw: Any) -> StreamingDataset:
    kw.setdefault("batch_size", 2)
    kw.setdefault("micro_batch_size", 2)
    return StreamingDataset(
        config=client,
        data_fields=["x"],
        partition_id=pid,
        task_name=TASK,
        dp_rank=dp_rank,
        timeout_s=10.0,
        **kw,
    )


def test_transfer_queue_batches_are_per_dp_rank_and_shared_by_its_replicas(client):
    register(client, "p", 24)
    fill(client, "p", range(24))
    topology = [0, 0, 1, 1, 2, 2]
    got = run_all(
        [
            (
                lambda r=r, k=i % 2: consume(
                    tq_dataset(client, "p", r, replica_rank=k, replica_world=2, batch_size=4)
                )
            )
            for i, r in enumerate(topology)
        ]
    )
    # dp_ranks claim independently (a fast one may take every batch); replicas see the same ones
    assert all(trace(got[i]) == trace(got[i + 1]) for i in (0, 2, 4))
    assert all(len(xs) == 2 for items in got for xs, _ in items)  # batch_size 4 per dp_rank, micro 2
    assert sorted(x for i in (0, 2, 4) for xs, _ in got[i] for x in xs) == list(range(24))
    assert all(m.extra_info["dp_rank"] == topology[i] for i in range(6) for _, m in got[i])


def test_should_check_consumption_status_ends_an_unregistered_partition(client):
    fill(client, "free", range(6))
    ds = tq_dataset(client, "free", 0, should_check_consumption_status=True)
    assert [xs for xs, _ in consume(ds)] == [[0, 1], [2, 3], [4, 5]]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"fetch_batch_fn": len}, "fetch_batch_fn is not supported"),
        ({"process_batch_fn": len}, "process_batch_fn is not supported"),
        ({"dp_world": 2}, "dp_world does not apply"),
        ({"dp_rank": -1}, "must be an integer >= 0"),
        ({"should_check_consumption_status": "yes"}, "must be a bool"),
    ],
)
def test_transfer_queue_arguments_are_checked(client, kw, match):
    kw = {"dp_rank": 0, **kw}
    with pytest.raises(DataPlaneBadRequest, match=match):
        StreamingDataset(
            config=client, data_fields=["x"], partition_id="p", task_name=TASK, batch_size=2, **kw
        )


def test_source_and_fields_are_given_once(client):
    with pytest.raises(DataPlaneBadRequest, match="source .* or config="):
        StreamingDataset(client, config=client, partition_id="p", task_name=TASK, fields=["x"], batch_size=2)
    with pytest.raises(DataPlaneBadRequest, match="fields= .* or data_fields="):
        StreamingDataset(
            client, partition_id="p", task_name=TASK, fields=["x"], data_fields=["x"], batch_size=2
        )
    with pytest.raises(DataPlaneBadRequest, match="persistent_workers"):
        StreamingDataLoader(tq_dataset(client, "p", 0), persistent_workers=True)


def test_the_loader_applies_collate_fn_to_each_micro_batch(client):
    register(client, "p", 4)
    fill(client, "p", range(4))
    loader = StreamingDataLoader(
        tq_dataset(client, "p", 0), collate_fn=lambda item: item[0]["x"].sum().item()
    )
    assert list(loader) == [1, 5]


# ------------------------------------------------------------ mode (b): broadcast in a replica group
def _broadcast_member(rank: int, init_file: str) -> list[Any]:
    import torch.distributed as dist

    import kvplane

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        client = kvplane.init()  # only the source has data: the receiver never reads
        if rank == 0:
            register(client, "p", 10)
            fill(client, "p", range(10))
        ds = StreamingDataset(
            client,
            partition_id="p",
            task_name=TASK,
            fields=["x"],
            batch_size=4,
            micro_batch_size=2,
            dp_rank=0,
            dp_world=1,
            replica_group=dist.group.WORLD,
        )
        loader = StreamingDataLoader(ds)
        seen = [(meta.extra_info["step"], td["x"].tolist()) for td, meta in loader]
        return [seen, loader.state_dict(), len(client.list_keys().get("p", {}))]
    finally:
        kvplane.close()
        dist.destroy_process_group()


def test_a_replica_group_broadcasts_from_its_rank_0():
    init_file = os.path.join(tempfile.mkdtemp(), "pg")
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=ctx) as pool:
        futures = [pool.submit(_broadcast_member, r, init_file) for r in range(2)]
        source, receiver = [f.result(timeout=DEADLINE_S) for f in futures]
    assert source[0] == receiver[0] == [(0, [0, 1]), (0, [2, 3]), (1, [4, 5]), (1, [6, 7]), (2, [8, 9])]
    assert source[1]["step"] == 4 and receiver[1]["step"] == 3  # the receiver never sees the final plan
    assert (source[2], receiver[2]) == (10, 0)


def test_unnumbered_transfer_queue_replicas_take_seats_and_the_first_leads(client):
    register(client, "p", 48)  # 12 steps of 4: past a garbage collection
    fill(client, "p", range(48))
    first = tq_dataset(client, "p", 1, batch_size=4)
    head = consume(first, 4)  # two whole steps
    second = tq_dataset(client, "p", 1, batch_size=4)  # joins while the first's plans are all kept
    whole, rest = run_all([lambda: consume(second), lambda: consume(first)])
    assert trace(head + rest) == trace(whole) and len(whole) == 24
    snap = PlanLog(client, "p", TASK, group=1).snapshot()
    assert (first._seat, second._seat, snap.seats, sorted(snap.acks)) == (0, 1, 2, [(0, 0), (0, 1)])
    assert consume(first) == []  # it keeps its seat: the stream has ended
    with pytest.raises(DataPlaneBadRequest, match="took seat 2 .* after the plans below step 13"):
        consume(tq_dataset(client, "p", 1, batch_size=4))  # too late to see what its peers saw
