"""KVBatchMeta and its pure transforms; the group and capability records."""

from __future__ import annotations

import dataclasses
import pickle
import threading

import numpy as np
import pytest
import torch

import kvplane
from kvplane import DataPlaneBadRequest, DataPlaneCapabilities, DataPlaneGroupMeta, KVBatchMeta


def _meta() -> KVBatchMeta:
    return KVBatchMeta(
        "p",
        "train",
        ["a", "b", "c", "d"],
        fields=["x"],
        sequence_lengths=[1, 2, 3, 4],
        extra_info={"step": 1},
        tags=[{"i": 0}, {"i": 1}, {"i": 2}, {"i": 3}],
    )


def test_the_seven_fields_in_order():
    assert [f.name for f in dataclasses.fields(KVBatchMeta)] == [
        "partition_id",
        "task_name",
        "sample_ids",
        "fields",
        "sequence_lengths",
        "extra_info",
        "tags",
    ]


def test_defaults_and_independent_extra_info():
    a, b = KVBatchMeta("p", None, []), KVBatchMeta("p", None, [])
    assert a.fields is None and a.sequence_lengths is None and a.tags is None and a.extra_info == {}
    a.extra_info["x"] = 1
    assert b.extra_info == {}
    named = KVBatchMeta(task_name="t", sample_ids=["a"])  # NeMo-RL's form by name; partition_id unset
    assert named.partition_id is None and named.tags is None and named.keys == ["a"]


def test_size_counts_duplicates_and_empty_meta_is_valid():
    assert KVBatchMeta("p", None, ["a", "a"]).size == 2
    empty = pickle.loads(pickle.dumps(KVBatchMeta("p", None, [])))
    assert empty.size == 0


def test_pickle_round_trip_keeps_every_field():
    meta = _meta()
    assert pickle.loads(pickle.dumps(meta)) == meta


def test_misaligned_tags_or_lengths_are_rejected():
    with pytest.raises(DataPlaneBadRequest, match="align 1:1"):
        KVBatchMeta("p", None, ["a", "b"], tags=[{}])
    with pytest.raises(ValueError, match="align 1:1"):
        KVBatchMeta("p", None, ["a", "b"], sequence_lengths=[1])


def test_subset_slice_concat_carry_lengths_and_tags_together():
    meta = _meta()
    sub = meta.subset([3, 1, 1])
    assert sub.sample_ids == ["d", "b", "b"] and sub.sequence_lengths == [4, 2, 2]
    assert [t["i"] for t in sub.tags] == [3, 1, 1]
    sl = meta.slice(-2, None)
    assert (
        sl.sample_ids == ["c", "d"] and sl.sequence_lengths == [3, 4] and [t["i"] for t in sl.tags] == [2, 3]
    )
    both = meta.slice(0, 1).concat(meta.slice(3, 4))
    assert (
        both.sample_ids == ["a", "d"] and both.sequence_lengths == [1, 4] and both.extra_info == {"step": 1}
    )
    with pytest.raises(IndexError):
        meta.subset([4])


def test_concat_drops_lengths_and_tags_unless_every_operand_has_them():
    with_tags = _meta()
    without = KVBatchMeta("p", None, ["z"])
    joined = with_tags.concat(without)
    assert joined.tags is None and joined.sequence_lengths is None and joined.size == 5
    with pytest.raises(DataPlaneBadRequest, match="partition_ids must match"):
        with_tags.concat(KVBatchMeta("other", None, ["z"]))
    copy = with_tags.concat()
    assert copy == with_tags and copy is not with_tags


def test_transforms_return_independent_copies():
    meta = _meta()
    sub = meta.subset([0])
    sub.tags[0]["i"] = 99
    sub.fields.append("y")
    sub.extra_info["step"] = 2
    assert meta.tags[0]["i"] == 0 and meta.fields == ["x"] and meta.extra_info == {"step": 1}


def test_drop_keeps_original_order_and_returns_none_when_empty():
    meta = _meta()
    assert meta.drop([2, 0, 2, 17]).sample_ids == ["b", "d"]
    kept = meta.drop([])
    assert kept == meta and kept is not meta
    assert meta.drop(range(4)) is None


def test_with_fields_merges_in_order_without_duplicates():
    meta = _meta()
    assert meta.with_fields(["y", "x", "z"]).fields == ["x", "y", "z"]
    assert KVBatchMeta("p", None, []).with_fields(["b", "a", "b"]).fields == ["b", "a"]


def test_stamp_tags():
    meta = KVBatchMeta("p", None, ["a", "b"])
    meta.stamp_tags({"seq_len": [3, 4], "g": ["x", "x"]})
    meta.stamp_tags({"seq_len": [5, 6]})
    assert meta.tags == [{"seq_len": 5, "g": "x"}, {"seq_len": 6, "g": "x"}]
    with pytest.raises(DataPlaneBadRequest, match="'bad' has 1 values, expected 2"):
        meta.stamp_tags({"bad": [1]})


def test_group_meta_is_frozen_and_knows_completeness():
    g = DataPlaneGroupMeta("p", "g", ["a"], 1, None, True, expected_num_keys=2)
    assert not g.is_complete
    assert DataPlaneGroupMeta("p", "g", ["a"], 1, None, True).is_complete
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.committed = False  # type: ignore[misc]
    assert DataPlaneCapabilities() == DataPlaneCapabilities(False, False, False, False)


# --- TransferQueue's face (written from transfer_queue 0.1.11's metadata.py docs and tests) ---


def _tq(n: int = 3, **kw) -> KVBatchMeta:
    return KVBatchMeta(keys=[f"k{i}" for i in range(n)], tags=[{"i": i} for i in range(n)], **kw)


def test_tq_constructor_defaults_and_empty_meta():
    empty = KVBatchMeta()
    assert (empty.keys, empty.tags, empty.partition_id, empty.fields, empty.extra_info) == ([], [], None, None, {})
    assert empty.size == len(empty) == 0 and empty.task_name is None and empty.sequence_lengths is None
    meta = KVBatchMeta(keys=["a", "b"], tags=[{}, {"x": 1}], partition_id="p", fields=["f"], extra_info=None)
    assert meta.sample_ids == ["a", "b"] and meta.keys is meta.sample_ids and meta.extra_info == {}
    assert meta == KVBatchMeta("p", None, ["a", "b"], ["f"], tags=[{}, {"x": 1}])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"keys": ["a", "b"], "tags": [{}]}, "keys and tags must have same length"),
        ({"keys": ["a"]}, "keys and tags must have same length"),  # tags default to [] in this form
        ({"keys": ["a", "a"], "tags": [{}, {}]}, "Got duplicated keys"),
        ({"keys": ["a"], "tags": [{}], "fields": ["x", "x"]}, "Got duplicated fields"),
        ({"partition_id": "p", "task_name": None, "sample_ids": ["a"], "fields": ["x", "x"]}, "Got duplicated fields"),
        ({"keys": ["a"], "sample_ids": ["a"], "tags": [{}]}, "not both"),
        ({"keys": ["a"], "tags": [{}], "sequence_lengths": [1, 2]}, "align 1:1"),
    ],
)
def test_tq_constructor_validation_is_a_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        KVBatchMeta(**kwargs)
    assert isinstance(info.value, DataPlaneBadRequest)


def test_tq_constructor_deep_copies_tags_and_extra_info():
    tags, extra = [{"data": [1, 2]}], {"nested": {"v": 1}}
    meta = KVBatchMeta(keys=["a"], tags=tags, extra_info=extra)
    meta.tags[0]["data"].append(3)
    meta.extra_info["nested"]["v"] = 9
    assert tags == [{"data": [1, 2]}] and extra == {"nested": {"v": 1}}
    with pytest.raises(DataPlaneBadRequest, match="deep-copyable"):
        KVBatchMeta(keys=["a"], tags=[{"lock": threading.Lock()}])
    # NeMo-RL's form copies one level (tag values may be any object, as in NeMo-RL).
    lock = threading.Lock()
    shared = [{"g": [0], "lock": lock}]
    nemo = KVBatchMeta("p", None, ["a"], tags=shared)
    shared[0]["new"] = 1
    assert nemo.tags == [{"g": [0], "lock": lock}] and nemo.subset([0]).tags[0]["lock"] is lock


def test_keys_setter_and_str():
    meta = _tq(2, partition_id="p", fields=["x"], extra_info={"step": 3})
    meta.keys = ("z0", "z1")
    assert meta.sample_ids == ["z0", "z1"] and meta.size == 2
    assert str(meta) == "KVBatchMeta(size=2, field_names=['x'], extra_info={'step': 3})"
    assert str(KVBatchMeta()) == "KVBatchMeta(size=0, field_names=None, extra_info={})"
    assert repr(meta).startswith("KVBatchMeta(partition_id='p', task_name=None, sample_ids=['z0', 'z1']")


def test_select_keys_keeps_everything_but_the_other_rows():
    meta = KVBatchMeta("p", "t", ["a", "b", "c"], ["x"], [1, 2, 3], {"e": 1}, [{"i": 0}, {"i": 1}, {"i": 2}])
    sub = meta.select_keys(["c", "a"])
    assert (sub.keys, sub.tags, sub.sequence_lengths) == (["c", "a"], [{"i": 2}, {"i": 0}], [3, 1])
    assert (sub.partition_id, sub.task_name, sub.fields, sub.extra_info) == ("p", "t", ["x"], {"e": 1})
    assert meta.select_keys([]).size == 0
    with pytest.raises(ValueError, match="Contain duplicate keys"):
        meta.select_keys(["a", "a"])
    with pytest.raises(RuntimeError, match="not found in current batch") as info:
        meta.select_keys(["a", "nope"])
    assert isinstance(info.value, kvplane.DataPlaneKeyError) and "nope" in str(info.value)


def test_reorder_is_in_place_and_validated():
    meta = KVBatchMeta("p", None, ["a", "b", "c"], sequence_lengths=[1, 2, 3], tags=[{"i": 0}, {"i": 1}, {"i": 2}])
    assert meta.reorder([2, 0, 1]) is None
    assert (meta.keys, meta.sequence_lengths, meta.tags) == (["c", "a", "b"], [3, 1, 2], [{"i": 2}, {"i": 0}, {"i": 1}])
    untagged = KVBatchMeta("p", None, ["a", "b"])
    untagged.reorder([1, 0])
    assert untagged.keys == ["b", "a"] and untagged.tags is None
    with pytest.raises(ValueError, match="does not match"):
        meta.reorder([0, 1])
    with pytest.raises(ValueError, match="Contain duplicate indexes"):
        meta.reorder([0, 0, 1])
    with pytest.raises(IndexError):
        meta.reorder([0, 1, 7])
    assert meta.keys == ["c", "a", "b"]  # a rejected reorder changes nothing


def test_chunk_splits_like_transfer_queue(caplog):
    meta = _tq(10, partition_id="p", fields=["f"], extra_info={"t": "v"})
    chunks = meta.chunk(3)
    assert [c.keys for c in chunks] == [[f"k{i}" for i in r] for r in (range(4), range(4, 7), range(7, 10))]
    assert all(c.partition_id == "p" and c.fields == ["f"] and c.extra_info == {"t": "v"} for c in chunks)
    assert chunks[1].tags == [{"i": 4}, {"i": 5}, {"i": 6}]
    chunks[0].extra_info["t"] = "changed"
    assert meta.extra_info == {"t": "v"}
    with caplog.at_level("WARNING", logger="kvplane._meta"):
        small = _tq(2).chunk(5)
    assert [len(c) for c in small] == [1, 1, 0, 0, 0] and "empty" in caplog.text
    nemo = KVBatchMeta("p", "t", ["a", "b", "c"], sequence_lengths=[1, 2, 3])
    assert [c.sequence_lengths for c in nemo.chunk(2)] == [[1, 2], [3]]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(DataPlaneBadRequest, match="positive integer"):
            meta.chunk(bad)


def test_class_concat_joins_chunks_like_transfer_queue(caplog):
    meta = _tq(5, partition_id="p", fields=["a", "b"], extra_info={"step": 1})
    joined = KVBatchMeta.concat(meta.chunk(7))  # empty chunks included
    assert joined == meta and joined is not meta
    assert KVBatchMeta.concat([KVBatchMeta(), _tq(1), None, KVBatchMeta()]).keys == ["k0"]
    with caplog.at_level("WARNING", logger="kvplane._meta"):
        assert KVBatchMeta.concat([]) == KVBatchMeta()
        assert KVBatchMeta.concat([KVBatchMeta(partition_id="q")]).partition_id is None
    # fields compare as sets; a chunk without fields is not checked; the first chunk's order wins
    reordered = KVBatchMeta(keys=["z"], tags=[{}], partition_id="p", fields=["b", "a"])
    unknown = KVBatchMeta(keys=["y"], tags=[{}], partition_id="p")
    assert KVBatchMeta.concat([meta, reordered, unknown]).fields == ["a", "b"]


def test_class_concat_merges_extra_info_and_rejects_mismatches():
    a = KVBatchMeta(keys=["a"], tags=[{}], extra_info={"step": 1, "t": torch.tensor([1, 2])})
    b = KVBatchMeta(keys=["b"], tags=[{}], extra_info={"t": torch.tensor([1, 2]), "only_b": "x"})
    assert KVBatchMeta.concat([a, b]).extra_info.keys() == {"step", "t", "only_b"}
    arr = KVBatchMeta(keys=["c"], tags=[{}], extra_info={"n": np.arange(3)})
    arr2 = KVBatchMeta(keys=["d"], tags=[{}], extra_info={"n": np.arange(3)})
    assert KVBatchMeta.concat([arr, arr2]).size == 2
    cases = [
        (KVBatchMeta(keys=["z"], tags=[{}], extra_info={"step": 2}), "conflicting"),
        (KVBatchMeta(keys=["z"], tags=[{}], extra_info={"t": torch.tensor([1, 3])}), "conflicting"),
        (KVBatchMeta(keys=["z"], tags=[{}], extra_info={"step": 1.0}), "conflicting"),  # type differs
        (KVBatchMeta(keys=["z"], tags=[{}], fields=["x"]), "Field names do not match"),
        (KVBatchMeta(keys=["z"], tags=[{}], partition_id="other"), "Partition do not match"),
        (KVBatchMeta(keys=["a"], tags=[{}]), "Got duplicated keys"),
    ]
    for other, message in cases:
        with pytest.raises(ValueError, match=message):
            KVBatchMeta.concat([a, other])


def test_instance_concat_keeps_nemo_rl_semantics_and_accepts_a_list():
    head = KVBatchMeta("p", "t", ["a"], ["x"], [1], {"e": 1}, [{}])
    tail = KVBatchMeta("p", "other", ["a"], ["y"], [2], {"e": 2}, [{}])
    joined = head.concat(tail)  # repeats allowed, fields/extra_info/task from head, no conflict check
    assert (joined.sample_ids, joined.sequence_lengths, joined.fields, joined.extra_info, joined.task_name) == (
        ["a", "a"], [1, 2], ["x"], {"e": 1}, "t"
    )
    assert head.concat([KVBatchMeta("p", None, ["b"], ["x"])]).keys == ["b"]  # a list: the class form
    with pytest.raises(DataPlaneBadRequest, match="expected KVBatchMeta"):
        head.concat("b")


def test_tq_meta_pickles_and_reaches_kv_batch_get_by_meta(pid):
    kvplane.close()
    kvplane.init()
    kvplane.kv_batch_put(["a", "b"], pid, {"x": torch.arange(4).view(2, 2)})
    meta = pickle.loads(pickle.dumps(KVBatchMeta(keys=["b", "a"], tags=[{}, {}], partition_id=pid, fields=["x"])))
    assert kvplane.kv_batch_get_by_meta(meta)["x"].tolist() == [[2, 3], [0, 1]]
    kvplane.close()
