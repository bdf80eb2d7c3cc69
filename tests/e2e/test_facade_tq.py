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
