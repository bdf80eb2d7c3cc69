"""The ``kv_*`` facade on TransferQueue, configured from the shipped example YAML of each backend.

``kvplane.init`` here finds the session's deployment running and attaches to it (a fresh bootstrap
from the YAML is in test_standalone.py); ``kvplane.close()`` then detaches without stopping it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

import kvplane
from kvplane import DataPlaneKeyError

from .conftest import Deployment

EXAMPLES = Path(kvplane.__file__).parent / "examples"
YAML = {"simple": "transfer_queue.yaml", "mooncake_cpu": "mooncake.yaml"}


@pytest.fixture
def facade(deployment: Deployment) -> Iterator[kvplane.DataPlaneClient]:
    kvplane.close()  # whatever default an earlier test left
    client = kvplane.init(str(EXAMPLES / YAML[deployment.backend]))
    try:
        yield client
    finally:
        kvplane.close()


def test_the_kv_calls_work_as_on_the_embedded_backend(
    facade: kvplane.DataPlaneClient, deployment: Deployment, pid: str
):
    meta = kvplane.kv_batch_put(
        ["a", "b"], pid, TensorDict(x=torch.arange(6).view(2, 3), batch_size=[2]), tags=[{"seq_len": 3}] * 2
    )
    assert (meta.sample_ids, meta.fields, meta.sequence_lengths) == (["a", "b"], ["x"], [3, 3])
    kvplane.kv_put("c", pid, fields={"x": torch.tensor([6, 7, 8]), "text": "hi"}, tag={"seq_len": 3})
    assert kvplane.kv_batch_get(["c"], pid)["x"].tolist() == [[6, 7, 8]]
    assert kvplane.kv_batch_get(["c"], pid).get("text").tolist() == ["hi"]
    assert kvplane.kv_batch_get_by_meta(meta)["x"].tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(DataPlaneKeyError, match="'zz'"):
        kvplane.kv_batch_get(["a", "zz"], pid, "x")
    kvplane.kv_clear(["a", "zz"], pid)
    assert asyncio.run(kvplane.async_kv_list(pid)) == {pid: {"b": {"seq_len": 3}, "c": {"seq_len": 3}}}
    got = asyncio.run(kvplane.async_kv_batch_get(["b", "c"], pid, ["x"]))
    assert got["x"].tolist() == [[3, 4, 5], [6, 7, 8]] and not got["x"].is_nested
    kvplane.close()  # detaches: the deployment keeps serving its bootstrapping client
    deployment.client.ping(timeout_s=10)
    assert deployment.client.list_sample_ids(pid) == ["b", "c"]


def test_transfer_queue_face_of_the_facade(facade: kvplane.DataPlaneClient, pid: str):
    """data_parser, TransferQueue-shaped metas and select_fields checks, on TransferQueue."""

    def parser(batch):
        batch["ref"] = [torch.full((n,), 5) for n in batch["ref"]]
        return batch

    meta = kvplane.kv_batch_put(["a", "b"], pid, {"ref": [2, 3], "x": torch.ones(2)}, data_parser=parser)
    assert meta.keys == ["a", "b"] and sorted(meta.fields) == ["ref", "x"]
    assert [r.tolist() for r in kvplane.kv_batch_get(["a", "b"], pid, "ref")["ref"].unbind(0)] == [[5, 5], [5, 5, 5]]
    with pytest.raises(kvplane.DataPlaneBadRequest, match="must not change dict keys"):
        kvplane.kv_batch_put(["c"], pid, {"x": torch.ones(1)}, data_parser=lambda b: {})
    assert sorted(kvplane.kv_list(pid)[pid]) == ["a", "b"]  # the failed parse stored nothing
    tq_meta = kvplane.KVBatchMeta(keys=["b", "a"], tags=[{}, {}], partition_id=pid, fields=["x"])
    halves = tq_meta.chunk(2)
    assert kvplane.kv_batch_get_by_meta(kvplane.KVBatchMeta.concat(halves))["x"].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match=r"select_fields.*not found"):
        kvplane.kv_batch_get_by_meta(tq_meta, select_fields="ref")


def test_a_read_that_keeps_racing_a_clear_raises_storage_key_not_found(
    facade: kvplane.DataPlaneClient, pid: str, monkeypatch: pytest.MonkeyPatch
):
    """TransferQueue's storage says a listed key is gone on every look: TransferQueue's error name."""
    from transfer_queue import StorageKeyNotFoundError as TQStorageKeyNotFoundError

    kvplane.kv_batch_put(["a"], pid, {"x": torch.ones(1, 2)})

    async def fetch(*_):
        raise TQStorageKeyNotFoundError("StorageUnitData get_data: key 0 not found in field 'x'")

    monkeypatch.setattr(kvplane.get_client(), "_read", fetch)  # the client's fetch, whichever storage
    with pytest.raises(kvplane.StorageKeyNotFoundError, match="cleared or rewritten while being read") as info:
        kvplane.kv_batch_get(["a"], pid, "x")
    assert isinstance(info.value, KeyError) and isinstance(info.value, DataPlaneKeyError)
    monkeypatch.undo()
    assert kvplane.kv_batch_get(["a"], pid, "x")["x"].tolist() == [[1.0, 1.0]]


def test_transfer_queue_storage_key_not_found_translates_to_kvplanes():
    from transfer_queue import StorageKeyNotFoundError as TQStorageKeyNotFoundError

    from kvplane.adapters.transfer_queue._calls import translate

    raced = translate("get_data", TQStorageKeyNotFoundError("key 3 not found"), kvplane.DataPlaneReadError)
    assert type(raced) is kvplane.StorageKeyNotFoundError and "key 3 not found" in str(raced)
    missing = translate("get_data", KeyError("k"), kvplane.DataPlaneReadError)
    assert type(missing) is DataPlaneKeyError
