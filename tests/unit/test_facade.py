"""The kv_* facade, every test run through both the sync functions and their async twins."""

from __future__ import annotations

import asyncio

import pytest
import torch
from tensordict import TensorDict

import kvplane
from kvplane import DataPlaneBadRequest, DataPlaneKeyError, DataPlaneNotReady


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
    kvplane.init()
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
    assert kvplane.init() is not first
    kvplane.close()


def test_kv_call_before_any_init_uses_the_embedded_default_and_logs_it_once(pid, monkeypatch, caplog):
    import kvplane._facade as facade

    kvplane.close()
    monkeypatch.setattr(facade, "_closed", False)  # a process that never called init() or close()
    monkeypatch.setattr(facade, "_auto_logged", False)
    with caplog.at_level("INFO", logger="kvplane._facade"):
        kvplane.kv_put("a", pid, tag={"t": 1})
        kvplane.kv_put("b", pid, tag={"t": 2})
    assert type(kvplane.get_client()).__name__ == "MemoryDataPlaneClient"
    assert sorted(kvplane.kv_list(pid)[pid]) == ["a", "b"]
    assert [r.message for r in caplog.records].count(
        "no kvplane.init() before the first kv_* call: using the embedded store"
    ) == 1
    kvplane.close()


@pytest.mark.parametrize(
    "call",
    [
        lambda pid: kvplane.kv_put("a", pid, tag={"t": 1}),
        lambda pid: kvplane.kv_batch_put(["a"], pid, {"x": torch.ones(1)}),
        lambda pid: kvplane.kv_batch_get(["a"], pid),
        lambda pid: kvplane.kv_list(),
        lambda pid: kvplane.kv_clear(None, pid),
        lambda pid: kvplane.get_client(),
        lambda pid: asyncio.run(kvplane.async_kv_list()),
    ],
)
def test_a_kv_call_after_close_is_not_ready_until_init(call, pid):
    kvplane.init()
    kvplane.kv_put("kept", pid, tag={"t": 1})
    kvplane.close()
    with pytest.raises(DataPlaneNotReady, match=r"call kvplane\.init\(\)"):
        call(pid)
    with pytest.raises(DataPlaneNotReady):  # still closed: no silent fresh store was made
        kvplane.kv_list()
    kvplane.init()
    assert kvplane.kv_list(pid) == {}  # init() re-enables (a new, empty embedded store)
    kvplane.close()


def test_async_twins_are_coroutines_with_the_same_signature():
    import inspect

    for name in ("kv_put", "kv_batch_put", "kv_batch_get", "kv_batch_get_by_meta", "kv_list", "kv_clear"):
        twin = getattr(kvplane, f"async_{name}")
        assert inspect.iscoroutinefunction(twin)
        assert inspect.signature(twin) == inspect.signature(getattr(kvplane, name))


# --- TransferQueue's data_parser (written from transfer_queue 0.1.11's kv_put/kv_batch_put docs) ---


def test_data_parser_sees_transfer_queue_shapes_and_its_result_is_stored(api, pid):
    seen = {}

    def parser(batch):
        seen.update({name: type(value).__name__ for name, value in batch.items()})
        seen["dense_shape"] = tuple(batch["dense"].shape)
        batch["shape"] = [torch.full(tuple(s), 7.0) for s in batch["shape"]]  # a reference → real data
        batch["dense"] = batch["dense"] * 2
        return batch

    jagged = torch.nested.nested_tensor([torch.ones(1), torch.ones(3)], layout=torch.jagged)
    fields = {"dense": torch.ones(2, 2), "jag": jagged, "shape": [[2], [3]], "text": ["a", "b"]}
    meta = api.kv_batch_put(["a", "b"], pid, fields, tags=[{"i": 0}, {"i": 1}], data_parser=parser)
    assert seen == {"dense": "Tensor", "jag": "list", "shape": "list", "text": "list", "dense_shape": (2, 2)}
    assert sorted(meta.fields) == ["dense", "jag", "shape", "text"]
    got = api.kv_batch_get(["a", "b"], pid)
    assert got["dense"].tolist() == [[2.0, 2.0], [2.0, 2.0]]
    assert [row.tolist() for row in got["shape"].unbind(0)] == [[7.0, 7.0], [7.0, 7.0, 7.0]]
    assert [row.numel() for row in got["jag"].unbind(0)] == [1, 3]
    assert got.get("text").tolist() == ["a", "b"] and api.kv_list(pid)[pid]["b"] == {"i": 1}


def test_kv_put_data_parser_gets_a_batch_of_one(api, pid):
    def parser(batch):
        assert batch["ids"].shape == (1, 3) and batch["url"] == ["s3://x"]
        batch["url"] = [torch.arange(4)]
        return batch

    api.kv_put("k", pid, fields={"ids": torch.tensor([1, 2, 3]), "url": "s3://x"}, data_parser=parser)
    assert api.kv_batch_get("k", pid, "url")["url"].tolist() == [[0, 1, 2, 3]]


def test_data_parser_is_not_called_for_a_tag_only_put(api, pid):
    def parser(batch):
        raise AssertionError("called")

    api.kv_put("k", pid, tag={"t": 1}, data_parser=parser)
    assert api.kv_list(pid) == {pid: {"k": {"t": 1}}}


class _Boom(Exception):
    pass


def _raises(batch):
    raise _Boom("cannot fetch")


@pytest.mark.parametrize(
    ("parser", "message"),
    [
        (_raises, "data_parser raised _Boom: cannot fetch"),
        (lambda b: "not a dict", "data_parser must return a dict"),
        (lambda b: {**b, "extra": torch.ones(2)}, "must not change dict keys"),
        (lambda b: {"x": b["x"]}, "must not change dict keys"),
        (lambda b: {**b, "x": b["x"][:1]}, "changed the number of elements for key 'x'"),
        (lambda b: {**b, "text": ["only one"]}, "changed the number of elements for key 'text'"),
        ("not callable", "data_parser must be callable"),
    ],
    ids=["raises", "not-a-dict", "adds-a-key", "drops-a-key", "fewer-rows", "fewer-objects", "not-callable"],
)
def test_a_failing_data_parser_stores_nothing(api, pid, parser, message):
    fields = {"x": torch.ones(2, 2), "text": ["a", "b"]}
    with pytest.raises(DataPlaneBadRequest, match=message) as info:
        api.kv_batch_put(["a", "b"], pid, fields, tags=[{}, {}], data_parser=parser)
    assert isinstance(info.value, ValueError)
    if parser is _raises:
        assert isinstance(info.value.__cause__, _Boom)
    assert api.kv_list(pid) == {}


def test_a_bad_put_is_rejected_before_the_parser_runs(api, pid):
    calls = []
    with pytest.raises(DataPlaneBadRequest):
        api.kv_batch_put(["a", "a"], pid, {"x": torch.ones(2)}, data_parser=lambda b: calls.append(b) or b)
    assert calls == [] and api.kv_list(pid) == {}


def test_a_parsed_dtype_change_is_still_rejected(api, pid):
    api.kv_batch_put(["a"], pid, {"x": torch.ones(1)})
    with pytest.raises(DataPlaneBadRequest, match="dtype"):
        api.kv_batch_put(["b"], pid, {"x": torch.ones(1)}, data_parser=lambda b: {"x": b["x"].long()})
    assert list(api.kv_list(pid)[pid]) == ["a"]


# --- kv_batch_get_by_meta on TransferQueue-shaped metas ---


def test_get_by_meta_checks_select_fields_against_meta_fields(api, pid):
    meta = api.kv_batch_put(["a", "b"], pid, {"x": torch.ones(2), "y": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"select_fields.*not found") as info:
        api.kv_batch_get_by_meta(meta, select_fields=["x", "nope"])
    assert isinstance(info.value, DataPlaneKeyError)
    narrowed = kvplane.KVBatchMeta(keys=["b"], tags=[{}], partition_id=pid, fields=["x"])
    with pytest.raises(ValueError, match=r"select_fields.*not found"):
        api.kv_batch_get_by_meta(narrowed, select_fields="y")  # stored, but not in the meta
    assert api.kv_batch_get_by_meta(narrowed, select_fields="x")["x"].tolist() == [1.0]
    unlisted = kvplane.KVBatchMeta(keys=["a"], tags=[{}], partition_id=pid)  # fields=None: no check
    assert api.kv_batch_get_by_meta(unlisted, select_fields="y")["y"].tolist() == [0.0]
    with pytest.raises(DataPlaneBadRequest, match="partition_id"):
        api.kv_batch_get_by_meta(kvplane.KVBatchMeta(keys=["a"], tags=[{}]))


def test_tq_meta_chunks_round_trip_through_puts_and_concat(api, pid):
    """TransferQueue's recipe pattern: chunk a meta, put per chunk, concat the returned metas."""
    keys = [f"k{i}" for i in range(5)]
    api.kv_batch_put(keys, pid, {"x": torch.arange(5)})
    metas = [
        api.kv_batch_put(c.keys, c.partition_id, {"x": torch.arange(c.size) + 10})
        for c in kvplane.KVBatchMeta(keys=keys, tags=[{}] * 5, partition_id=pid).chunk(3)
    ]
    joined = kvplane.KVBatchMeta.concat(metas)
    assert joined.keys == keys and joined.fields == ["x"]
    assert api.kv_batch_get_by_meta(joined)["x"].tolist() == [10, 11, 10, 11, 10]  # chunks of 2, 2, 1


# --- public names TransferQueue exports ---


def test_get_metrics_endpoint_names_the_default_clients_exporter():
    kvplane.close()
    assert kvplane.get_metrics_endpoint() is None  # no default client: none is started for this
    kvplane.init({"impl": "memory", "observability": {"enabled": True, "prometheus_port": 0}})
    try:
        endpoint = kvplane.get_metrics_endpoint()
        host, port = endpoint.rsplit(":", 1)
        assert host and int(port) == kvplane.get_client().prometheus.port > 0
        import urllib.request

        kvplane.kv_put("k", "metrics", fields={"x": torch.ones(2)})
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            assert 'kvplane_ops_total{op="put",status="ok"}' in resp.read().decode()
    finally:
        kvplane.close()
    assert kvplane.get_metrics_endpoint() is None
    kvplane.init({"impl": "memory", "observability": {"enabled": True}})  # metrics without an exporter
    assert kvplane.get_metrics_endpoint() is None
    kvplane.close()


def test_storage_key_not_found_error_is_a_key_error_of_the_tree():
    err = kvplane.StorageKeyNotFoundError("key 'k' was cleared while being read")
    assert isinstance(err, kvplane.DataPlaneKeyError) and isinstance(err, KeyError)
    assert isinstance(err, kvplane.DataPlaneError) and isinstance(err, ValueError)
    assert str(err) == "key 'k' was cleared while being read"
    for catch in (KeyError, kvplane.DataPlaneKeyError, kvplane.DataPlaneError):
        with pytest.raises(catch):
            raise err


def test_transfer_queue_kv_names_kvplane_exports():
    """Every name of transfer_queue 0.1.11's ``__all__`` that belongs to its KV API, by name."""
    kv_names = [
        "init", "close", "get_metrics_endpoint", "kv_put", "kv_batch_put", "kv_batch_get",
        "kv_batch_get_by_meta", "kv_list", "kv_clear", "async_kv_put", "async_kv_batch_put",
        "async_kv_batch_get", "async_kv_batch_get_by_meta", "async_kv_list", "async_kv_clear",
        "KVBatchMeta", "get_client", "StorageKeyNotFoundError",
    ]  # fmt: skip
    assert [name for name in kv_names if not hasattr(kvplane, name)] == []
    assert all(name in kvplane.__all__ for name in kv_names)
