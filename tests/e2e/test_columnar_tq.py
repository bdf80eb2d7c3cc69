"""The contract, bad-input and concurrency suites on ``backend: columnar``, unchanged.

The session's ``deployment`` fixture runs this module, and only this module, on ``columnar``
(tests/e2e/conftest.py: the whole tier would not fit CI's budget a third time). Its layout
(objects per field per put, owners, release) is ``kvplane/adapters/transfer_queue/_columnar.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import ray
import torch
from tensordict import TensorDict

import kvplane
from kvplane.adapters.transfer_queue._columnar import owner_names
from tests.unit.test_bad_input import *  # noqa: F401,F403
from tests.unit.test_concurrency import *  # noqa: F401,F403
from tests.unit.test_contract import *  # noqa: F401,F403

from .conftest import Deployment


@pytest.fixture(autouse=True)
def facade_on_deployment(deployment: Deployment) -> Iterator[None]:
    kvplane.close()
    kvplane.init(deployment.worker_config)
    try:
        yield
    finally:
        kvplane.close()


def _objects_held() -> int:
    return sum(ray.get(ray.get_actor(n, namespace="transfer_queue").ping.remote()) for n in owner_names())


def test_columnar_frees_an_object_when_its_last_row_is_cleared(client, pid):
    before = _objects_held()
    client.put_samples(["a", "b", "c"], pid, TensorDict(x=torch.arange(3.0), y=torch.ones(3, 2), batch_size=[3]))
    assert _objects_held() == before + 2  # one object per field
    client.clear_samples(["a", "b"], pid)
    assert _objects_held() == before + 2  # "c" still lives in both
    assert client.get_samples(["c"], pid, ["x"])["x"].tolist() == [2.0]
    client.put_samples(["c"], pid, TensorDict(x=torch.tensor([9.0]), batch_size=[1]))
    assert client.get_samples(["c"], pid, ["x", "y"])["x"].tolist() == [9.0]
    client.clear_samples(None, pid)
    assert _objects_held() == before


def test_columnar_reads_across_puts_gather_in_key_order(client, pid):
    client.put_samples(["a", "b"], pid, TensorDict(x=torch.tensor([[1, 2], [3, 4]]), batch_size=[2]))
    client.put_samples(["c"], pid, TensorDict(x=torch.tensor([[5, 6]]), batch_size=[1]))
    got = client.get_samples(["c", "a", "b"], pid, ["x"])["x"]
    assert got.tolist() == [[5, 6], [1, 2], [3, 4]]
