"""The kv_* facade, every test run through both the sync functions and their async twins."""

from __future__ import annotations

import asyncio

import pytest
import torch
from tensordict import TensorDict

import kvplane
from kvplane import DataPlaneBadRequest, DataPlaneKeyError


class _Api:
    """Calls ``kvplane.<name>`` or awaits ``kvplane.async_<name>`` with the same arguments."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __getattr__(self, name: str):
        if self.mode == "sync":
            return getattr(kvplane, name)
        twin = getattr(kvplane, f"async_{name}")
        return lambda *a, **kw: asyncio.run(twin(*a, **kw))


@pytest.fixture(params=["sync", "async"])
def api(request):
    kvplane.close()
    yield _Api(request.param)
    kvplane.close()


def test_kv_put_single_key_round_trip(api, pid):
    meta = api.kv_put(
        "k",
        pid,
        fields={"ids": torch.tensor([1, 2, 3]), "score": torch.tensor(0.5), "text": "hi"},
        tag={"seq_len": 3},
    )
    assert meta.sample_ids == ["k"] and sorted(meta.fields) == ["ids", "score", "text"]
    td = api.kv_batch_get("k", pid)
    assert td["ids"].tolist() == [[1, 2, 3]]
    assert td["score"].tolist() == [0.5]
    assert td.get("text").tolist() == ["hi"]
    assert api.kv_list(pid) == {pid: {"k": {"seq_len": 3}}}


def test_kv_batch_put_accepts_tensordict_or_dict_of_columns(api, pid):
    api.kv_batch_put(["a", "b"], pid, TensorDict(x=torch.ones(2, 2), batch_size=[2]))
    api.kv_batch_put(["c", "d"], pid, {"x": torch.zeros(2, 2)})
    td = api.kv_batch_get(["d", "a"], pid, select_fields="x")
    assert td["x"].tolist() == [[0.0, 0.0], [1.0, 1.0]]


def test_get_by_meta_uses_meta_fields(api, pid):
    meta = api.kv_batch_put(["a", "b"], pid, {"x": torch.ones(2), "y": torch.zeros(2)})
    assert sorted(api.kv_batch_get_by_meta(meta).keys()) == ["x", "y"]
    assert list(api.kv_batch_get_by_meta(meta, select_fields=["y"]).keys()) == ["y"]


def test_clear_is_idempotent_and_none_clears_everything(api, pid):
    api.kv_batch_put(["a", "b"], pid, {"x": torch.ones(2)})
    api.kv_clear("a", pid)
    api.kv_clear(["a"], pid)
    assert list(api.kv_list(pid)[pid]) == ["b"]
    api.kv_clear(None, pid)
    assert api.kv_list(pid) == {}


def test_strict_errors_through_the_facade(api, pid):
    api.kv_put("a", pid, fields={"x": torch.ones(2)})
    with pytest.raises(DataPlaneKeyError):
        api.kv_batch_get(["a", "missing"], pid)
    with pytest.raises(DataPlaneBadRequest):
        api.kv_put("a", pid)  # neither fields nor tag
    with pytest.raises(DataPlaneBadRequest):
        api.kv_put(
            "n",
            pid,
            fields={"x": torch.nested.nested_tensor([torch.ones(1), torch.ones(2)], layout=torch.jagged)},
        )
    with pytest.raises(DataPlaneBadRequest):
        api.kv_batch_put(["a", "b"], pid, {"x": torch.ones(3)})
    assert list(api.kv_list(pid)[pid]) == ["a"]


def test_init_close_and_default_client():
    kvplane.close()
    first = kvplane.init()
    assert kvplane.init(None) is first and kvplane.get_client() is first
    with pytest.raises(DataPlaneBadRequest, match="already initialised"):
        kvplane.init({"impl": "memory", "seq_len_tag": "other"})
    kvplane.close()
    kvplane.close()
    assert kvplane.get_client() is not first
    kvplane.close()


def test_kv_call_before_init_uses_the_embedded_default(pid):
    kvplane.close()
    kvplane.kv_put("a", pid, tag={"t": 1})
    assert type(kvplane.get_client()).__name__ == "MemoryDataPlaneClient"
    kvplane.close()


def test_async_twins_are_coroutines_with_the_same_signature():
    import inspect

    for name in ("kv_put", "kv_batch_put", "kv_batch_get", "kv_batch_get_by_meta", "kv_list", "kv_clear"):
        twin = getattr(kvplane, f"async_{name}")
        assert inspect.iscoroutinefunction(twin)
        assert inspect.signature(twin) == inspect.signature(getattr(kvplane, name))
