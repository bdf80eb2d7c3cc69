"""TransferQueue 0.1.11's silent behaviours (reference/transferqueue_0.1.11.md §9), each met strictly.

The test names carry the quirk's number in §9. Quirks 9-11 concern TransferQueue's force_fetch,
samplers and StreamingDataLoader, which kvplane does not use; 12 (capacity) is in test_standalone.py
(it needs a deployment of its own); 13 and 14 are in test_processes.py; 15 is checked when the
session's MooncakeStore deployment is torn down (tests/e2e/conftest.py).
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from kvplane import (
    DataPlaneBadRequest,
    DataPlaneError,
    DataPlaneKeyError,
    DataPlaneTimeout,
    DataPlaneUnavailable,
)
from kvplane._tensors import make_object_column
from kvplane.adapters.transfer_queue import TransferQueueDataPlaneClient

from .conftest import Deployment


def test_q1_dense_columns_come_back_dense_and_per_row_scalars_keep_their_shape(
    client: TransferQueueDataPlaneClient, pid: str
):
    scalars, column = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([[1.0], [2.0], [3.0]])
    client.put_samples(["a", "b", "c"], pid, {"ids": torch.arange(12).view(3, 4), "r": scalars, "m": column})
    out = client.get_samples(["a", "b", "c"], pid, ["ids", "r", "m"])
    assert not out["ids"].is_nested and out["ids"].shape == (3, 4)
    assert out["r"].shape == (3,) and torch.equal(out["r"], scalars)  # MooncakeStore returns [B, 1]
    assert out["m"].shape == (3, 1) and torch.equal(out["m"], column)  # a genuine [B, 1] stays


def test_q2_missing_keys_are_named_and_never_dropped(client: TransferQueueDataPlaneClient, pid: str):
    client.put_samples(["a", "b"], pid, {"x": torch.ones(2)})
    with pytest.raises(DataPlaneKeyError, match="'x1', 'x2'"):
        client.get_samples(["a", "x1", "b", "x2"], pid, ["x"])
    with pytest.raises(DataPlaneKeyError, match="'zz' not found"):
        client.get_samples(["zz"], pid, ["x"])
    with pytest.raises(DataPlaneKeyError, match="partition .* not found"):
        client.get_samples(["a"], pid + "-missing", ["x"])


def test_q3_unknown_or_partial_fields_raise_instead_of_shrinking_the_result(
    client: TransferQueueDataPlaneClient, pid: str
):
    client.put_samples(["a", "b"], pid, {"x": torch.ones(2)})
    client.put_samples(["a"], pid, {"z": torch.zeros(1)})
    with pytest.raises(DataPlaneKeyError, match="zzz"):
        client.get_samples(["a", "b"], pid, ["x", "zzz"])  # TQ: drops zzz silently
    with pytest.raises(DataPlaneKeyError, match="zzz"):
        client.get_samples(["a", "b"], pid, ["zzz"])  # TQ: an empty TensorDict
    with pytest.raises(DataPlaneKeyError, match=r"'z' is not stored for key\(s\) \['b'\]"):
        client.get_samples(["a", "b"], pid, ["z"])  # TQ: an empty TensorDict
    with pytest.raises(DataPlaneBadRequest, match="'a' has 'z', 'b' does not"):
        client.get_samples(["a", "b"], pid, None)  # TQ: silently the intersection
    assert sorted(client.get_samples(["a"], pid, None).keys()) == ["x", "z"]


def test_q4_clears_are_idempotent_and_clear_none_deletes_the_partition(
    client: TransferQueueDataPlaneClient, pid: str
):
    client.register_partition(pid, ["x"], num_samples=None, consumer_tasks=["train"])
    client.put_samples(["a", "b"], pid, {"x": torch.ones(2)})
    assert client.claim_meta(pid, "train", ["x"], 2).size == 2
    client.clear_samples(["a", "b", "never"], pid)
    client.clear_samples(["a"], pid)
    assert client.list_keys(pid) == {pid: {}}  # emptied, still there (and still declared)
    client.clear_samples(None, pid)
    assert client.list_keys(pid) == {} and pid not in client.list_keys(None)
    with pytest.raises(DataPlaneKeyError, match="partition .* not found"):
        client.check_consumption_status(pid, ["train"])
    # Re-created, it starts with fresh cursors and no declaration.
    client.put_samples(["a"], pid, {"x": torch.ones(1)})
    assert client.claim_meta(pid, "anyone", ["x"], 1, blocking=False).sample_ids == ["a"]


def test_q5_a_tag_only_key_is_a_real_key_and_poisons_no_read(client: TransferQueueDataPlaneClient, pid: str):
    client.put_samples(["a", "b"], pid, {"x": torch.tensor([1, 2])})
    client.put_samples(["t"], pid, None, tags=[{"group_id": "g"}])
    assert client.list_keys(pid)[pid]["t"] == {"group_id": "g"}
    assert client.get_samples(["b", "a"], pid, ["x"])["x"].tolist() == [2, 1]
    with pytest.raises(DataPlaneKeyError, match=r"\['t'\]"):
        client.get_samples(["a", "t"], pid, ["x"])
    assert sorted(client.claim_meta(pid, "train", ["x"], 2, blocking=False).sample_ids) == ["a", "b"]
    assert client.claim_meta(pid, "train", ["x"], 1, blocking=False).size == 0
    client.put_samples(["t"], pid, {"x": torch.tensor([3])})  # data later makes it claimable
    assert client.claim_meta(pid, "train", ["x"], 1, blocking=False).sample_ids == ["t"]


def test_q5_a_write_that_fails_in_storage_leaves_no_ghost_key(client: TransferQueueDataPlaneClient, pid: str):
    client.put_samples(["keep"], pid, {"x": torch.ones(1)}, tags=[{"v": 1}])
    unpicklable = make_object_column([threading.Lock(), threading.Lock()])
    with pytest.raises(DataPlaneError) as caught:
        client.put_samples(["keep", "ghost"], pid, {"obj": unpicklable}, tags=[{"v": 2}, {"v": 2}])
    assert caught.value.__cause__ is not None and not isinstance(caught.value.__cause__, DataPlaneError)
    assert client.list_keys(pid) == {pid: {"keep": {"v": 1}}}  # no ghost, and the old tags are back
    assert client.get_samples(["keep"], pid, None)["x"].tolist() == [1.0]


def test_q7_dtype_and_row_rank_drift_are_refused(client: TransferQueueDataPlaneClient, pid: str):
    client.put_samples(["a"], pid, {"x": torch.tensor([1.5]), "ids": torch.zeros(1, 3, dtype=torch.int64)})
    with pytest.raises(DataPlaneBadRequest, match="holds torch.float32"):
        client.put_samples(["a", "b"], pid, {"x": torch.tensor([1, 2])})
    with pytest.raises(DataPlaneBadRequest, match="rank 1"):
        client.put_samples(["b"], pid, {"ids": torch.zeros(1, dtype=torch.int64)})
    assert list(client.list_keys(pid)[pid]) == ["a"]
    out = client.get_samples(["a"], pid, None)
    assert out["x"].dtype == torch.float32 and out["x"].tolist() == [1.5] and out["ids"].shape == (1, 3)


def test_q8_a_waiting_claim_does_not_stall_other_clients(client: TransferQueueDataPlaneClient, pid: str):
    outcome: dict[str, BaseException] = {}

    def wait_for_data() -> None:
        try:
            client.claim_meta(pid, "train", ["x"], 4, timeout_s=3)
        except BaseException as exc:  # noqa: BLE001 - inspected below
            outcome["error"] = exc

    waiter = threading.Thread(target=wait_for_data)
    waiter.start()
    time.sleep(0.3)
    # TransferQueue's blocking fetch would hold the controller; kvplane polls, so others get through.
    client.ping(timeout_s=2)
    client.put_samples(["a"], pid, {"x": torch.ones(1)})
    assert client.get_samples(["a"], pid, ["x"])["x"].tolist() == [1.0]
    assert waiter.is_alive()
    waiter.join(30)
    assert isinstance(outcome.get("error"), DataPlaneTimeout)


def test_q13_every_call_has_a_deadline(client: TransferQueueDataPlaneClient):
    with pytest.raises(DataPlaneTimeout, match="ping"):
        client.ping(timeout_s=1e-6)  # a real request to the controller that cannot answer that fast
    client.ping(timeout_s=10)  # the abandoned request did not poison the client


def test_q13_a_closed_client_is_unavailable(deployment: Deployment, pid: str):
    worker = TransferQueueDataPlaneClient(deployment.worker_config, bootstrap=False)
    worker.close()
    with pytest.raises(DataPlaneUnavailable):
        worker.ping()
    with pytest.raises(DataPlaneUnavailable):
        worker.get_samples(["a"], pid, ["x"])


def test_a_field_added_by_a_concurrent_writer_is_named_once(
    client: TransferQueueDataPlaneClient, pid: str, monkeypatch: pytest.MonkeyPatch
):
    """Two processes writing the same new field to one key: the second read the partition's field
    records before the first added them (a race no test can schedule, so the stale read is staged)."""
    client.put_samples(["seat-0"], pid, {"seat": torch.zeros(1)})
    control = client._control
    real_state = control.state

    async def state_read_before_the_other_writer(partition_id: str):
        state = await real_state(partition_id)
        state.fields = {}
        return state

    monkeypatch.setattr(control, "state", state_read_before_the_other_writer)
    meta = client.put_samples(["seat-0"], pid, {"seat": torch.zeros(1)})
    assert meta.fields == ["seat"]
