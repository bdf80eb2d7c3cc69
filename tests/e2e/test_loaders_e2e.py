"""The loaders on TransferQueue: DP ranks in separate processes, DataLoader workers, restarts, replicas.

Ranks run in spawned processes (each attaches with ``bootstrap=False`` from the deployment's worker
config), a producer writes from a third, and the test checks what every rank received: every
sample exactly once, disjoint balanced shards per step, the same number of micro-batches per step
on every rank, no duplicates with two DataLoader workers, and an exact resume in new processes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from kvplane.adapters.transfer_queue import TransferQueueDataPlaneClient

from .conftest import Deployment
from .workers import check_rows, index_of, key_of, produce, sample_batch

TIMEOUT_S = 300
TASK = "train"
FIELDS = ["x", "emb", "ids", "text"]


def _spawn_pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    """Three spawned processes (two ranks and a producer), reused across tests and backends."""
    with _spawn_pool(3) as executor:
        yield executor


# ------------------------------------------------------------ code the rank processes run
def run_rank(
    cfg: dict[str, Any],
    pid: str,
    rank: int,
    world: int,
    loader_kw: dict[str, Any],
    *,
    num_workers: int = 0,
    state: dict[str, Any] | None = None,
    checkpoint_after: int | None = None,
    then: int = 0,
    plain: bool = False,
) -> dict[str, Any]:
    """Iterate a rank's StreamingDataLoader; check every row; report what was received.

    With ``plain``, iterate ``torch.utils.data.DataLoader(dataset, batch_size=None)`` instead (no
    collate_fn; its worker 0 delivers the stream).

    With ``checkpoint_after``, take ``state_dict()`` after that many micro-batches, receive ``then``
    more (work a crash would lose) and stop.
    """
    from loaders import StreamingDataLoader, StreamingDataset

    dataset = StreamingDataset(
        cfg,
        partition_id=pid,
        task_name=TASK,
        fields=FIELDS,
        dp_rank=rank,
        dp_world=world,
        timeout_s=120.0,
        **loader_kw,
    )
    if plain:
        from torch.utils.data import DataLoader

        context = "spawn" if num_workers else None  # DataLoader refuses a context without workers
        loader: Any = DataLoader(
            dataset, batch_size=None, num_workers=num_workers, multiprocessing_context=context
        )
    else:
        loader = StreamingDataLoader(dataset, num_workers=num_workers, multiprocessing_context="spawn")
    if state is not None:
        loader.load_state_dict(state)
    items: list[dict[str, Any]] = []
    saved = None
    for td, meta in loader:
        check_rows(meta.sample_ids, td)
        info = meta.extra_info
        items.append(
            {
                "ids": meta.sample_ids,
                "lengths": meta.sequence_lengths,
                "step": info["step"],
                "micro": info["micro_batch_index"],
                "count": info["num_micro_batches"],
            }
        )
        if checkpoint_after is not None and len(items) == checkpoint_after:
            saved = loader.state_dict()
        if checkpoint_after is not None and len(items) == checkpoint_after + then:
            break
    return {"items": items, "state": saved}


# ------------------------------------------------------------ checks
def _received(results: list[dict[str, Any]]) -> list[str]:
    return sorted(k for r in results for item in r["items"] for k in item["ids"])


def _steps(result: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    steps: dict[int, list[dict[str, Any]]] = {}
    for item in result["items"]:
        steps.setdefault(item["step"], []).append(item)
    return steps


def _fill(client: TransferQueueDataPlaneClient, pid: str, n: int) -> None:
    idx = list(range(n))
    tags = [{"seq_len": i % 5 + 1, "group_id": f"g{i // 4}"} for i in idx]
    client.put_samples([key_of(i) for i in idx], pid, sample_batch(idx), tags=tags)


# ------------------------------------------------------------ tests
def test_two_rank_processes_and_a_producer_get_each_sample_once_in_balanced_shards(
    deployment: Deployment, client: TransferQueueDataPlaneClient, pid: str, pool: ProcessPoolExecutor
):
    n, batch = 70, 8  # 8 full steps and a short last one of 6
    client.register_partition(pid, FIELDS, num_samples=n, consumer_tasks=[TASK])
    kw = {"batch_size": batch, "balance": "tokens", "micro_batch_size": 2}
    ranks = [pool.submit(run_rank, deployment.worker_config, pid, r, 2, kw) for r in range(2)]
    producer = pool.submit(produce, deployment.worker_config, pid, n, 8, 0.05)

    producer.result(timeout=TIMEOUT_S)
    results = [r.result(timeout=TIMEOUT_S) for r in ranks]

    assert _received(results) == [key_of(i) for i in range(n)]  # exactly once across ranks
    per_rank = [_steps(r) for r in results]
    assert sorted(per_rank[0]) == sorted(per_rank[1]) == list(range(9))
    for step in per_rank[0]:
        shards = [[k for item in per_rank[r][step] for k in item["ids"]] for r in range(2)]
        assert not set(shards[0]) & set(shards[1])
        assert len(per_rank[0][step]) == len(per_rank[1][step])  # same micro-batch count
        assert {item["count"] for r in range(2) for item in per_rank[r][step]} == {len(per_rank[0][step])}
        loads = [sum(index_of(k) % 5 + 1 for k in shard) for shard in shards]
        assert max(loads) <= sum(loads) / 2 + 5  # balanced to within the longest sample
    assert client.check_consumption_status(pid, [TASK])


@pytest.mark.parametrize("workers", [(2, 2), (2, 0)], ids=["both-2", "2-and-0"])
def test_two_dataloader_workers_deliver_no_duplicates(
    deployment: Deployment, client: TransferQueueDataPlaneClient, pid: str, pool: ProcessPoolExecutor, workers
):
    n = 44  # 5 full steps of 8 and a short one of 4
    client.register_partition(pid, FIELDS, num_samples=n, consumer_tasks=[TASK])
    _fill(client, pid, n)
    kw = {"batch_size": 8, "micro_batch_size": 2}
    ranks = [
        pool.submit(run_rank, deployment.worker_config, pid, r, 2, kw, num_workers=workers[r])
        for r in range(2)
    ]
    results = [r.result(timeout=TIMEOUT_S) for r in ranks]

    assert _received(results) == [key_of(i) for i in range(n)]
    for result in results:  # steps arrive in order, each micro-batch once
        order = [(item["step"], item["micro"]) for item in result["items"]]
        assert order == sorted(set(order))
    assert [len(v) for v in _steps(results[0]).values()] == [len(v) for v in _steps(results[1]).values()]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_plain_dataloader_without_collate_fn_delivers_each_sample_once_in_order(
    deployment: Deployment,
    client: TransferQueueDataPlaneClient,
    pid: str,
    pool: ProcessPoolExecutor,
    num_workers: int,
):
    n = 44
    client.register_partition(pid, FIELDS, num_samples=n, consumer_tasks=[TASK])
    _fill(client, pid, n)
    kw = {"batch_size": 8, "micro_batch_size": 2}
    ranks = [
        pool.submit(run_rank, deployment.worker_config, pid, r, 2, kw, num_workers=num_workers, plain=True)
        for r in range(2)
    ]
    results = [r.result(timeout=TIMEOUT_S) for r in ranks]
    assert _received(results) == [key_of(i) for i in range(n)]
    for result in results:  # worker 0 delivers every micro-batch, in order
        order = [(item["step"], item["micro"]) for item in result["items"]]
        assert order == sorted(set(order)) and len(order) == 11  # 5 steps of 2 micro-batches, 1 short


def test_a_checkpoint_resumes_exactly_in_new_processes(
    deployment: Deployment, client: TransferQueueDataPlaneClient, pid: str, pool: ProcessPoolExecutor
):
    n = 48
    client.register_partition(pid, FIELDS, num_samples=n, consumer_tasks=[TASK])
    _fill(client, pid, n)
    kw = {"batch_size": 8, "micro_batch_size": 2, "prefetch": 3}
    first = [
        pool.submit(
            run_rank, deployment.worker_config, pid, r, 2, kw, num_workers=2 * r, checkpoint_after=5, then=3
        )
        for r in range(2)
    ]
    crashed = [f.result(timeout=TIMEOUT_S) for f in first]

    with _spawn_pool(2) as fresh:  # the restarted trainer: new processes, new loader objects
        second = [
            fresh.submit(run_rank, deployment.worker_config, pid, r, 2, kw, state=crashed[r]["state"])
            for r in range(2)
        ]
        resumed = [f.result(timeout=TIMEOUT_S) for f in second]

    before = [{"items": c["items"][:5]} for c in crashed]
    assert _received(before + resumed) == [key_of(i) for i in range(n)]  # nothing lost or repeated
    for r in range(2):  # what the crashed run trained after its checkpoint comes first again
        lost = [item["ids"] for item in crashed[r]["items"][5:]]
        assert [item["ids"] for item in resumed[r]["items"][: len(lost)]] == lost


# ------------------------------------------------------------ replica groups: dp_rank = [0, 0, 1, 1]
TOPOLOGY = [0, 0, 1, 1]  # the dp_rank of each process, TransferQueue tutorial 06's


@pytest.fixture(scope="module")
def pool4() -> Iterator[ProcessPoolExecutor]:
    """Five spawned processes: four consumers and a producer."""
    with _spawn_pool(5) as executor:
        yield executor


def run_replica(cfg: dict[str, Any], pid: str, dp_rank: int, replica_rank: int) -> list[Any]:
    """One of two replicas of a dp_rank (dp_world 2): ``(step, micro, ids)`` of each micro-batch."""
    from loaders import StreamingDataLoader, StreamingDataset

    dataset = StreamingDataset(
        cfg,
        partition_id=pid,
        task_name=TASK,
        fields=FIELDS,
        batch_size=8,
        micro_batch_size=2,
        dp_rank=dp_rank,
        dp_world=2,
        replica_rank=replica_rank,
        replica_world=2,
        timeout_s=120.0,
    )
    out = []
    for td, meta in StreamingDataLoader(dataset):
        check_rows(meta.sample_ids, td)
        out.append((meta.extra_info["step"], meta.extra_info["micro_batch_index"], meta.sample_ids))
    return out


def test_replicas_of_a_dp_rank_in_four_processes_get_identical_micro_batches(
    deployment: Deployment, client: TransferQueueDataPlaneClient, pid: str, pool4: ProcessPoolExecutor
):
    n = 38  # 4 full steps of 8, a short last one of 6
    client.register_partition(pid, FIELDS, num_samples=n, consumer_tasks=[TASK])
    cfg = deployment.worker_config
    ranks = [pool4.submit(run_replica, cfg, pid, r, i % 2) for i, r in enumerate(TOPOLOGY)]
    producer = pool4.submit(produce, cfg, pid, n, 8, 0.05)

    producer.result(timeout=TIMEOUT_S)
    got = [r.result(timeout=TIMEOUT_S) for r in ranks]

    assert got[0] == got[1] and got[2] == got[3]  # identical micro-batches, in the same order
    assert len(got[0]) == len(got[2])  # equal micro-batch counts across DP ranks
    delivered = sorted(k for i in (0, 2) for _, _, ids in got[i] for k in ids)
    assert delivered == [key_of(i) for i in range(n)]  # exactly once per DP group
    assert client.check_consumption_status(pid, [TASK])


def run_tutorial_06_worker(cfg: dict[str, Any], pid: str, dp_rank: int, max_steps: int = 5) -> list[int]:
    """Tutorial 06's ``update_worker`` with TransferQueue's arguments, ``num_workers=2`` included."""
    from loaders import StreamingDataLoader, StreamingDataset

    dataset = StreamingDataset(
        config=cfg,
        batch_size=2,
        micro_batch_size=2,
        data_fields=["x"],
        partition_id=pid,
        task_name=TASK,
        dp_rank=dp_rank,
        should_check_consumption_status=False,
    )
    dataloader = StreamingDataLoader(
        dataset=dataset, num_workers=2, prefetch_factor=2, multiprocessing_context="spawn"
    )
    consumed, step = [], 0
    for batch, _meta in dataloader:
        consumed.extend(batch["x"].view(-1).tolist())
        step += 1
        if step >= max_steps:
            break
    del dataloader
    return consumed


def test_tutorial_06_replicas_with_two_dataloader_workers_see_identical_data(
    deployment: Deployment, pid: str, pool4: ProcessPoolExecutor
):
    cfg = deployment.worker_config
    producer = pool4.submit(produce, cfg, pid, 40, 4, 0.02)  # more than 5 steps x 2 samples x 2 dp_ranks
    workers = [pool4.submit(run_tutorial_06_worker, cfg, pid, r) for r in TOPOLOGY]

    producer.result(timeout=TIMEOUT_S)
    got = [w.result(timeout=TIMEOUT_S) for w in workers]

    assert all(len(g) == 10 for g in got)
    assert got[0] == got[1] and got[2] == got[3]
    assert not set(got[0]) & set(got[2])


EXIT_SCRIPT = """
import json, logging, sys
from loaders import StreamingDataLoader, StreamingDataset
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(name)s %(message)s")
if __name__ == "__main__":  # spawned DataLoader workers import this module; ``it`` is still a global
    cfg, pid = json.loads(sys.argv[1]), sys.argv[2]
    ds = StreamingDataset(cfg, partition_id=pid, task_name="train", fields=["x"], batch_size=4, timeout_s=600)
    it = iter(StreamingDataLoader(ds, num_workers=2, multiprocessing_context="spawn"))
    print(next(it)[0]["x"].tolist(), flush=True)
    raise RuntimeError("training failed")
"""


def test_an_open_iterator_with_two_workers_does_not_hang_the_exit(
    deployment: Deployment, client: TransferQueueDataPlaneClient, pid: str, tmp_path
):
    client.register_partition(pid, ["x"], num_samples=None, consumer_tasks=[TASK])
    client.put_samples([f"s{i}" for i in range(12)], pid, {"x": torch.arange(12)})
    script = tmp_path / "train.py"
    script.write_text(EXIT_SCRIPT)
    root = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(
        [sys.executable, str(script), json.dumps(deployment.worker_config), pid],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": root},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "RuntimeError: training failed" in done.stderr
    assert "interpreter exit" in done.stderr, done.stderr[-3000:]


# ------------------------------------------------------------ DDP end to end: 2 DP x 2 TP replicas, gloo
def run_ddp_rank(
    cfg: dict[str, Any],
    pid: str,
    rank: int,
    init_file: str,
    mode: str,
    *,
    checkpoint_after: int | None = None,
    then: int = 0,
    state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Global rank ``rank`` = 2·dp_rank + tp_rank: train a tiny model under DDP over its DP group.

    With ``checkpoint_after``, save the loader's and the model's state after that many micro-batches,
    train ``then`` more (work the crash loses) and stop; ``state`` resumes from such a checkpoint.
    """
    from datetime import timedelta

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from loaders import StreamingDataLoader, StreamingDataset

    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=4, timeout=timedelta(seconds=120)
    )
    try:
        dp_groups = [dist.new_group([0, 2]), dist.new_group([1, 3])]  # same tp_rank: DDP peers
        tp_groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]  # same dp_rank: replicas
        dp_group, tp_group = dp_groups[rank % 2], tp_groups[rank // 2]
        replicas = (
            {"replica_group": tp_group}
            if mode == "broadcast"
            else {"replica_rank": rank % 2, "replica_world": 2}
        )
        dataset = StreamingDataset(
            cfg,
            partition_id=pid,
            task_name=TASK,
            fields=["x", "emb"],
            batch_size=8,
            micro_batch_size=2,
            dp_group=dp_group,
            timeout_s=120.0,
            **replicas,
        )
        torch.manual_seed(0)
        model = DistributedDataParallel(torch.nn.Linear(3, 1), process_group=dp_group)
        optim = torch.optim.SGD(model.parameters(), lr=0.01)
        loader = StreamingDataLoader(dataset)
        if state is not None:
            model.load_state_dict(state["model"])
            loader.load_state_dict(state["loader"])
        seen, saved = [], None
        for td, meta in loader:
            loss = ((model(td["emb"].float()).squeeze(-1) - td["x"].float() / 40) ** 2).sum()
            optim.zero_grad()
            loss.backward()  # an empty micro-batch still takes part in the all-reduce
            optim.step()
            seen.append((meta.extra_info["step"], meta.extra_info["micro_batch_index"], meta.sample_ids))
            if len(seen) == checkpoint_after:
                saved = {"loader": loader.state_dict(), "model": dict(model.state_dict())}
            if checkpoint_after is not None and len(seen) == checkpoint_after + then:
                break  # the job dies: every rank of the collective stops here
        params = [p.detach().clone().view(-1).tolist() for p in model.parameters()]
        return {"seen": seen, "params": params, "dp_rank": dataset.dp_rank, "state": saved}
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mode", ["plan", "broadcast"])
def test_ddp_with_tensor_parallel_replicas_trains_on_each_sample_once_per_dp_group(
    deployment: Deployment,
    client: TransferQueueDataPlaneClient,
    pid: str,
    pool4: ProcessPoolExecutor,
    tmp_path,
    mode: str,
):
    n = 33  # 4 full steps of 8 and a short last one of 1: dp_rank 1 gets an empty micro-batch
    client.register_partition(pid, ["x", "emb"], num_samples=n, consumer_tasks=[TASK])
    cfg, init_file = deployment.worker_config, str(tmp_path / "pg")
    ranks = [pool4.submit(run_ddp_rank, cfg, pid, r, init_file, mode) for r in range(4)]
    producer = pool4.submit(produce, cfg, pid, n, 8, 0.05)  # writing while the ranks train

    producer.result(timeout=TIMEOUT_S)
    got = [r.result(timeout=TIMEOUT_S) for r in ranks]

    assert [g["dp_rank"] for g in got] == [0, 0, 1, 1]
    assert got[0]["seen"] == got[1]["seen"] and got[2]["seen"] == got[3]["seen"]  # identical per TP group
    assert len(got[0]["seen"]) == len(got[2]["seen"])  # equal micro-batch counts: no all-reduce hang
    assert any(not ids for _, _, ids in got[0]["seen"] + got[2]["seen"])  # the short step left one empty
    delivered = sorted(k for i in (0, 2) for _, _, ids in got[i]["seen"] for k in ids)
    assert delivered == [key_of(i) for i in range(n)]  # exactly once per DP group
    assert got[0]["params"] == got[1]["params"] == got[2]["params"] == got[3]["params"]


@pytest.mark.parametrize("mode", ["plan", "broadcast"])
def test_ddp_with_replicas_resumes_every_process_exactly_from_its_state_dict(
    deployment: Deployment,
    client: TransferQueueDataPlaneClient,
    pid: str,
    pool4: ProcessPoolExecutor,
    tmp_path,
    mode: str,
):
    n, k = 33, 5  # checkpoint inside step 2 (micro-batches of 2 rows, 2 per rank per step)
    client.register_partition(pid, ["x", "emb"], num_samples=n, consumer_tasks=[TASK])
    cfg = deployment.worker_config
    first = [
        pool4.submit(run_ddp_rank, cfg, pid, r, str(tmp_path / "pg1"), mode, checkpoint_after=k, then=2)
        for r in range(4)
    ]
    producer = pool4.submit(produce, cfg, pid, n, 8, 0.05)
    producer.result(timeout=TIMEOUT_S)
    crashed = [f.result(timeout=TIMEOUT_S) for f in first]

    with _spawn_pool(4) as fresh:  # the restarted job: new processes, each from its own state
        second = [
            fresh.submit(run_ddp_rank, cfg, pid, r, str(tmp_path / "pg2"), mode, state=crashed[r]["state"])
            for r in range(4)
        ]
        resumed = [f.result(timeout=TIMEOUT_S) for f in second]

    runs = [crashed[r]["seen"][:k] + resumed[r]["seen"] for r in range(4)]
    assert runs[0] == runs[1] and runs[2] == runs[3]  # identical per TP group across the restart
    assert len(runs[0]) == len(runs[2])
    delivered = sorted(key for i in (0, 2) for _, _, ids in runs[i] for key in ids)
    assert delivered == [key_of(i) for i in range(n)]  # nothing lost or repeated per DP group
    for r in range(4):  # what the crash lost comes first again
        assert resumed[r]["seen"][:2] == crashed[r]["seen"][k:]
    assert all(resumed[r]["params"] == resumed[0]["params"] for r in range(4))
