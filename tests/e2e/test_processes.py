"""Several processes on one deployment: producers and consumers attach with ``bootstrap=False``."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch

from kvplane import DataPlaneBadRequest
from kvplane.adapters.transfer_queue import TransferQueueDataPlaneClient

from .conftest import Deployment, tq_config
from .workers import attach_and_close, check_rows, consume, key_of, produce, sample_batch

TIMEOUT_S = 300


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    """Four spawned worker processes, reused across tests and backends (each call attaches afresh)."""
    with ProcessPoolExecutor(max_workers=4, mp_context=multiprocessing.get_context("spawn")) as executor:
        yield executor


def test_three_consumer_processes_claim_exactly_once_from_a_producer_process(
    deployment: Deployment, client: TransferQueueDataPlaneClient, pid: str, pool: ProcessPoolExecutor
):
    n, batch_size = 60, 7  # 8 full batches and a short last one of 4
    client.register_partition(pid, ["x", "emb", "ids", "text"], num_samples=n, consumer_tasks=["train"])
    consumers = [pool.submit(consume, deployment.worker_config, pid, "train", batch_size) for _ in range(3)]
    producer = pool.submit(produce, deployment.worker_config, pid, n, 8, 0.05)

    report = producer.result(timeout=TIMEOUT_S)
    claimed = [c.result(timeout=TIMEOUT_S) for c in consumers]

    everything = [key for keys in claimed for key in keys]
    assert sorted(everything) == [key_of(i) for i in range(n)]  # exactly once, none lost
    assert client.check_consumption_status(pid, ["train"]) is True
    # The dtype record is shared: the producer process could not change x's dtype.
    assert "holds torch.int64" in report["drift"]
    # Every worker closed its client; the deployment still serves the driver, with the producer's data.
    client.ping(timeout_s=10)
    keys = [key_of(i) for i in range(n)]
    assert sorted(client.list_keys(pid)[pid]) == keys
    check_rows(keys, client.get_samples(keys, pid, None))


def test_a_worker_process_detaches_without_stopping_the_deployment(
    deployment: Deployment, client: TransferQueueDataPlaneClient, pid: str, pool: ProcessPoolExecutor
):
    seen = pool.submit(attach_and_close, deployment.worker_config, pid).result(timeout=TIMEOUT_S)
    assert seen["listed"] == {pid: {"w0": {"by": "worker"}, "w1": {"by": "worker"}}}
    assert seen["ray_still_connected"] is True  # it joined Ray, so it does not shut Ray down
    client.ping(timeout_s=10)
    # What the worker wrote outlives it (on MooncakeStore: it went to the driver's segment).
    check_rows(["w0", "w1"], client.get_samples(["w0", "w1"], pid, ["x", "emb", "ids", "text"]))


def test_in_process_attach_and_a_second_bootstrap_only_detach(
    deployment: Deployment, client: TransferQueueDataPlaneClient, pid: str
):
    key = key_of(7)
    worker = TransferQueueDataPlaneClient(deployment.worker_config, bootstrap=False)
    worker.put_samples([key], pid, sample_batch([7]))
    worker.close()
    # A bootstrap that finds a deployment running attaches to it, and closing it tears nothing down.
    second = TransferQueueDataPlaneClient(tq_config(deployment.backend), bootstrap=True)
    assert second.get_samples([key], pid, ["x"])["x"].tolist() == [7]
    second.close()
    client.ping(timeout_s=10)
    check_rows([key], client.get_samples([key], pid, ["x", "emb", "ids", "text"]))


def test_attaching_with_another_backend_is_refused(deployment: Deployment):
    other = "mooncake_cpu" if deployment.backend == "simple" else "simple"
    with pytest.raises(DataPlaneBadRequest, match="backend"):
        TransferQueueDataPlaneClient(tq_config(other), bootstrap=False)


def test_partitions_are_isolated_across_data_tags_claims_declarations_and_clears(
    client: TransferQueueDataPlaneClient, pid: str
):
    left, right = pid + "-l", pid + "-r"
    keys = ["k0", "k1", "k2"]
    client.register_partition(left, ["x"], num_samples=3, consumer_tasks=["train"])
    client.put_samples(keys, left, {"x": torch.tensor([1, 2, 3])}, tags=[{"side": "l"}] * 3)
    client.put_samples(keys, right, {"x": torch.tensor([1.5, 2.5, 3.5])}, tags=[{"side": "r"}] * 3)

    # Data, dtype records and tags are per partition.
    assert client.get_samples(keys, left, ["x"])["x"].dtype == torch.int64
    assert client.get_samples(keys, right, ["x"])["x"].tolist() == [1.5, 2.5, 3.5]
    assert {t["side"] for t in client.list_keys(right)[right].values()} == {"r"}
    # Left's declaration does not apply to right: any task may claim there, and no short batch.
    assert client.claim_meta(right, "other", ["x"], 2, blocking=False).size == 2
    assert client.claim_meta(left, "train", ["x"], 2).size == 2
    assert client.claim_meta(left, "train", ["x"], 2).size == 1
    assert client.claim_meta(right, "train", ["x"], 3, blocking=False).size == 3  # its own cursor
    assert client.check_consumption_status(left, ["train"]) is True
    # Clears stay on their side.
    client.clear_samples(["k0"], left)
    assert client.get_samples(["k0"], right, ["x"])["x"].tolist() == [1.5]
    client.clear_samples(None, right)
    assert client.list_keys(right) == {}
    assert sorted(client.list_keys(left)[left]) == ["k1", "k2"]
    assert client.claim_meta(left, "train", ["x"], 1, blocking=False).size == 0  # still fully claimed
