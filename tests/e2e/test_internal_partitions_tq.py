"""kvplane's own partitions stay out of ``kv_list()`` on TransferQueue (SimpleStorage and MooncakeStore).

The adapter keeps declarations, field specs and claim counts in ``__kvplane__/backend/<partition>``,
the loaders keep plan logs in ``__kvplane__/plans/...``; both live in TransferQueue's own partition
table next to the user's. tests/unit/test_contract.py's loader-run test covers the client's listing
(re-imported by test_contract_tq.py); this file checks the facade's ``kv_list`` seen from a second,
attached process-default client.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import kvplane
from kvplane import DataPlaneBadRequest, internal_partition, is_internal_partition
from loaders import StreamingDataset
from loaders._control import plan_partition_id

from .conftest import Deployment


@pytest.fixture
def facade(deployment: Deployment) -> Iterator[None]:
    kvplane.close()  # whatever default an earlier test left
    kvplane.init(deployment.worker_config)  # attaches to the session's deployment
    try:
        yield
    finally:
        kvplane.close()


def test_a_declared_partition_is_listed_and_its_records_are_not(client, pid, facade):
    client.register_partition(pid, ["x"], num_samples=2, consumer_tasks=["train"])
    listed = kvplane.kv_list()
    assert listed.get(pid) == {}  # known from the adapter's records, which themselves stay hidden
    assert not [p for p in listed if is_internal_partition(p)]
    with pytest.raises(DataPlaneBadRequest, match="reserved"):
        kvplane.kv_list(internal_partition("backend", pid))
    client.clear_samples(None, pid)


def test_a_loader_runs_plan_log_is_hidden_from_kv_list(client, pid, facade):
    client.register_partition(pid, ["x"], num_samples=4, consumer_tasks=["train"])
    client.put_samples([f"k{i}" for i in range(4)], pid, {"x": torch.arange(4)})
    loader = StreamingDataset(
        client, partition_id=pid, task_name="train", fields=["x"], batch_size=2, dp_rank=0, dp_world=1
    )
    assert sum(meta.size for _, meta in loader) == 4
    plans = plan_partition_id(pid, "train")
    assert kvplane.kv_list(plans)[plans]  # listable by name
    listed = kvplane.kv_list()
    assert pid in listed and not [p for p in listed if is_internal_partition(p)]
    client.clear_samples(None, plans)
    client.clear_samples(None, pid)
