"""KVBatchMeta and its pure transforms; the group and capability records."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

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
    with pytest.raises(TypeError):
        KVBatchMeta(task_name=None, sample_ids=[])  # partition_id is required


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
