"""TransferQueue 0.1.11's tutorial 06 (``tutorial/06_streaming_dataloader.py``) on the embedded backend.

The tutorial's ``generate_worker``/``update_worker``/``start_all_*``/``main`` logic, kept line for line
where it can be. What differs, and why:

- imports: ``import kvplane as tq`` and ``from loaders import StreamingDataLoader, StreamingDataset``
  (kvplane has no ``RankAwareSampler``: replicas of a ``dp_rank`` share its plans by themselves);
- init: ``tq.init()`` starts the embedded backend instead of Ray plus a TransferQueue config with
  ``RankAwareSampler``/``polling_mode``; each worker's ``config`` is ``{"impl": "memory"}`` (the
  process-default store) instead of ``ray.get(controller.get_config.remote())``;
- workers are threads instead of Ray tasks (the embedded store lives in one process), so
  ``num_workers=2`` becomes ``0`` (DataLoader worker processes would see an empty store; on
  TransferQueue the tutorial's ``num_workers=2`` runs, see tests/e2e/test_loaders_e2e.py);
- the producer writes with ``tq.kv_batch_put(keys, ...)``: kvplane's writes name their keys, where
  TransferQueue's ``client.put(data, partition_id=...)`` assigns indexes;
- ``time.sleep(5)`` per batch is 0.01 s, and results are checked instead of printed.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from tensordict import TensorDict

import kvplane as tq
from loaders import StreamingDataLoader, StreamingDataset

DEADLINE_S = 120


def generate_worker(rank_id: int, num_samples: int = 20) -> None:
    tq.init()
    for i in range(num_samples):
        seq_id = i + (rank_id * 10000)
        data = TensorDict(
            {"input_ids": torch.full((1, 16), seq_id, dtype=torch.long), "meta_idx": torch.tensor([seq_id])},
            batch_size=1,
        )
        tq.kv_batch_put([f"seq-{seq_id}"], partition_id="train", fields=data)  # TQ: tq_client.put(data, ...)


def update_worker(rank_id: int, dp_rank: int, max_steps: int = 5) -> dict:
    tq.init()
    config = {"impl": "memory"}  # TQ: ray.get(controller.get_config.remote())
    dataset = StreamingDataset(
        config=config,
        batch_size=2,
        micro_batch_size=2,
        data_fields=["meta_idx"],
        partition_id="train",
        task_name="update_task",
        dp_rank=dp_rank,
        should_check_consumption_status=False,
    )
    dataloader = StreamingDataLoader(
        dataset=dataset,
        num_workers=0,  # TQ: 2 (worker processes cannot reach the embedded store)
        prefetch_factor=2,
    )
    consumed_ids = []
    step = 0
    for batch, _batch_meta in dataloader:  # TQ: batch_meta
        ids = batch["meta_idx"].view(-1).tolist()
        consumed_ids.extend(ids)
        time.sleep(0.01)  # TQ: 5
        step += 1
        if step >= max_steps:
            break
    del dataloader
    return {"dp_rank": dp_rank, "consumed_ids": consumed_ids}


@pytest.fixture
def embedded():
    tq.close()
    yield
    tq.close()


def test_tutorial_06_consumers_of_a_dp_rank_see_identical_data(embedded):
    with ThreadPoolExecutor(6) as pool:
        generators = [pool.submit(generate_worker, rank_id=i, num_samples=20) for i in range(2)]
        rank_ids, dp_rank = [0, 1, 2, 3], [0, 0, 1, 1]
        updates = [pool.submit(update_worker, rank_id=rank_ids[i], dp_rank=dp_rank[i]) for i in range(4)]
        for g in generators:
            g.result(timeout=DEADLINE_S)
        results = [u.result(timeout=DEADLINE_S) for u in updates]

    assert [r["dp_rank"] for r in results] == [0, 0, 1, 1]
    assert all(len(r["consumed_ids"]) == 10 for r in results)  # 5 steps of 2
    assert results[0]["consumed_ids"] == results[1]["consumed_ids"]  # identical, in the same order
    assert results[2]["consumed_ids"] == results[3]["consumed_ids"]
    assert not set(results[0]["consumed_ids"]) & set(results[2]["consumed_ids"])  # DP ranks disjoint
    produced = {i + r * 10000 for r in range(2) for i in range(20)}
    assert set(results[0]["consumed_ids"]) | set(results[2]["consumed_ids"]) <= produced
