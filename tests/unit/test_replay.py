"""Rollout groups through tags: write_group, staleness selection, eviction, requeue after a crash.

Backend-agnostic: only the ``client`` and ``pid`` fixtures are used (tests/e2e may re-import this
module with TransferQueue clients); tests never close ``client``.
"""

from __future__ import annotations

import logging
import time

import pytest
import torch

from kvplane import DataPlaneBadRequest, DataPlaneKeyError, DataPlaneWriteError
from kvplane.replay import (
    GROUP_TAG_NAMES,
    evict_stale,
    keys_of,
    requeue_unfinished,
    select_groups,
    write_group,
)


def _write(client, pid, gid, version, n=2, **kwargs):
    keys = [f"{gid}-{i}" for i in range(n)]
    fields = {"reward": torch.arange(n, dtype=torch.float32) + version}
    return write_group(client, pid, keys, fields, group_id=gid, weight_version=version, **kwargs)


def _ids(groups):
    return [g.group_id for g in groups]


def _fail_on_commit(monkeypatch, client, before_commit=None):
    """Make the client die at the commit: the tag-only put that write_group issues last."""
    real_put = client.put_samples

    def put(sample_ids, partition_id, fields=None, tags=None):
        if fields is None and tags and all(t == {"committed": True} for t in tags):
            if before_commit is not None:
                before_commit()
            raise DataPlaneWriteError("producer died before committing")
        return real_put(sample_ids, partition_id, fields, tags)

    monkeypatch.setattr(client, "put_samples", put)


# ---------------------------------------------------------------------- write_group


def test_write_group_stores_data_and_group_metadata(client, pid):
    meta = write_group(
        client,
        pid,
        ["b", "a"],
        {"ids": torch.arange(6).view(2, 3)},
        group_id="g1",
        weight_version=4,
        created_at=1000.5,
        extra_tags=[{"seq_len": 3}, {"seq_len": 2}],
    )
    assert meta.sample_ids == ["b", "a"] and meta.fields == ["ids"]
    assert [t["committed"] for t in meta.tags] == [True, True]
    assert meta.sequence_lengths == [3, 2]
    (group,) = client.list_metadata(pid)
    assert group.group_id == "g1" and group.keys == ["a", "b"]
    assert group.committed and group.is_complete and group.expected_num_keys == 2
    assert group.weight_version == 4 and group.created_at == 1000.5
    assert group.size_bytes == 6 * 8
    assert client.get_samples(["a", "b"], pid, ["ids"])["ids"].tolist() == [[3, 4, 5], [0, 1, 2]]
    assert client.depth(pid) == 1


def test_common_extra_tags_go_to_every_key_and_created_at_defaults_to_now(client, pid):
    before = time.time()
    _write(client, pid, "g", 0, n=3, extra_tags={"prompt_id": "p7"})
    tags = client.list_keys(pid)[pid]
    assert {t["prompt_id"] for t in tags.values()} == {"p7"}
    (group,) = client.list_metadata(pid)
    assert before <= group.created_at <= time.time()


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"keys": []}, id="no-keys"),
        pytest.param({"keys": ["a", "a"]}, id="duplicate-keys"),
        pytest.param({"fields": None}, id="no-fields"),
        pytest.param({"fields": {"x": torch.ones(3)}}, id="row-count"),
        pytest.param({"group_id": ""}, id="empty-group-id"),
        pytest.param({"group_id": 7}, id="int-group-id"),
        pytest.param({"weight_version": -1}, id="negative-version"),
        pytest.param({"weight_version": 1.0}, id="float-version"),
        pytest.param({"weight_version": True}, id="bool-version"),
        pytest.param({"created_at": float("nan")}, id="nan-created-at"),
        pytest.param({"created_at": "yesterday"}, id="str-created-at"),
        pytest.param({"extra_tags": {"committed": True}}, id="reserved-tag"),
        pytest.param({"extra_tags": [{"weight_version": 9}, {}]}, id="reserved-tag-per-key"),
        pytest.param({"extra_tags": [{}]}, id="extra-tags-count"),
        pytest.param({"extra_tags": {1: "x"}}, id="non-string-tag-name"),
    ],
)
def test_write_group_rejects_bad_input_before_writing(client, pid, kwargs):
    args = {"keys": ["a", "b"], "fields": {"x": torch.ones(2)}, "group_id": "g", "weight_version": 1}
    args.update(kwargs)
    with pytest.raises(DataPlaneBadRequest):
        write_group(client, pid, args.pop("keys"), args.pop("fields"), **args)
    assert client.list_keys(pid) == {}


def test_a_producer_that_dies_before_commit_leaves_a_visible_uncommitted_group(client, pid, monkeypatch):
    _fail_on_commit(monkeypatch, client)
    with pytest.raises(DataPlaneWriteError):
        _write(client, pid, "g", 3, created_at=100.0)
    (group,) = client.list_metadata(pid)
    assert group.keys == ["g-0", "g-1"] and group.is_complete and not group.committed
    assert client.depth(pid) == 0
    assert select_groups(client, pid, current_version=3, max_staleness=0) == ([], [])
    monkeypatch.undo()
    # A retry by the restarted producer rewrites and commits the same group.
    _write(client, pid, "g", 3, created_at=100.0)
    assert _ids(select_groups(client, pid, current_version=3, max_staleness=0).selected) == ["g"]


def test_the_commit_comes_after_every_key_is_written(client, pid, monkeypatch):
    _write(client, pid, "g", 1)  # committed once; a rewrite must uncommit it until it is whole again
    seen = {}
    _fail_on_commit(monkeypatch, client, before_commit=lambda: seen.update(groups=client.list_metadata(pid)))
    with pytest.raises(DataPlaneWriteError):
        _write(client, pid, "g", 2)
    (group,) = seen["groups"]
    assert group.weight_version == 2 and not group.committed
    assert client.get_samples(group.keys, pid, ["reward"])["reward"].tolist() == [2.0, 3.0]


def test_write_group_tags_are_the_documented_ones():
    assert set(GROUP_TAG_NAMES) == {
        "group_id",
        "weight_version",
        "created_at",
        "committed",
        "expected_num_keys",
        "size_bytes",
    }


# ---------------------------------------------------------------------- select_groups


def test_staleness_window_is_inclusive_and_future_versions_are_fresh(client, pid, caplog):
    for version in range(7):
        _write(client, pid, f"v{version}", version)
    with caplog.at_level(logging.WARNING, logger="kvplane.replay"):
        fresh, stale = select_groups(client, pid, current_version=5, max_staleness=2)
    assert _ids(fresh) == ["v3", "v4", "v5", "v6"]
    assert _ids(stale) == ["v0", "v1", "v2"]
    assert "v6" in caplog.text and "current_version=5" in caplog.text
    fresh, stale = select_groups(client, pid, current_version=5, max_staleness=0)
    assert _ids(fresh) == ["v5", "v6"]


def test_groups_without_a_usable_weight_version_are_stale(client, pid):
    base = {"committed": True, "expected_num_keys": 1}
    client.put_samples(
        ["a", "b", "c"],
        pid,
        {"x": torch.ones(3)},
        tags=[
            {**base, "group_id": "none"},
            {**base, "group_id": "junk", "weight_version": "v2"},
            {**base, "group_id": "text", "weight_version": "4"},
        ],
    )
    fresh, stale = select_groups(client, pid, current_version=4, max_staleness=1)
    assert _ids(fresh) == ["text"]
    assert _ids(stale) == ["none", "junk"]  # list_metadata order: by first key


def test_uncommitted_and_incomplete_groups_are_neither_selected_nor_stale(client, pid):
    _write(client, pid, "whole", 1, n=3)
    _write(client, pid, "broken", 1, n=3)
    client.pop(["broken-1"], pid)  # a consumer released part of a group
    client.put_samples(
        ["w-0"],
        pid,
        {"reward": torch.ones(1)},
        tags=[{"group_id": "writing", "weight_version": 1, "committed": False}],
    )
    selection = select_groups(client, pid, current_version=1, max_staleness=0)
    assert _ids(selection.selected) == ["whole"] and selection.stale == []


def test_selection_reads_only_metadata_and_consumes_nothing(client, pid, monkeypatch):
    client.register_partition(pid, ["reward"], num_samples=4, consumer_tasks=["train"])
    _write(client, pid, "g0", 0)
    _write(client, pid, "g1", 1)

    def no_reads(*args, **kwargs):
        raise AssertionError("selection must not read tensors")

    monkeypatch.setattr(client, "get_samples", no_reads)
    first = select_groups(client, pid, current_version=1, max_staleness=0)
    assert first == select_groups(client, pid, current_version=1, max_staleness=0)
    monkeypatch.undo()
    assert client.claim_meta(pid, "train", ["reward"], 4, blocking=False).size == 4
    assert keys_of(first.selected) == ["g1-0", "g1-1"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"current_version": -1, "max_staleness": 0},
        {"current_version": 1.5, "max_staleness": 0},
        {"current_version": 1, "max_staleness": -2},
        {"current_version": 1, "max_staleness": None},
    ],
)
def test_select_groups_rejects_bad_versions(client, pid, kwargs):
    with pytest.raises(DataPlaneBadRequest):
        select_groups(client, pid, **kwargs)


def test_unknown_partition_selects_nothing(client, pid):
    assert select_groups(client, pid, current_version=0, max_staleness=0) == ([], [])
    assert evict_stale(client, pid, current_version=0, max_staleness=0, abandon_after_s=0.0) == []


# ---------------------------------------------------------------------- evict_stale


def test_evict_stale_removes_stale_groups_only(client, pid):
    for version in (1, 4, 5):
        _write(client, pid, f"v{version}", version)
    evicted = evict_stale(client, pid, current_version=5, max_staleness=1)
    assert _ids(evicted) == ["v1"]
    assert client.list_sample_ids(pid) == ["v4-0", "v4-1", "v5-0", "v5-1"]
    with pytest.raises(DataPlaneKeyError):
        client.get_samples(["v1-0"], pid, ["reward"])


def test_abandoned_groups_are_evicted_strictly_after_the_deadline(client, pid):
    uncommitted = {"committed": False, "weight_version": 9}
    client.put_samples(
        ["old", "edge", "undated", "fresh"],
        pid,
        {"x": torch.ones(4)},
        tags=[
            {**uncommitted, "group_id": "old", "created_at": 10.0},
            {**uncommitted, "group_id": "edge", "created_at": 40.0},
            {**uncommitted, "group_id": "undated"},
            {**uncommitted, "group_id": "fresh", "created_at": 99.0},
        ],
    )
    assert evict_stale(client, pid, current_version=9, max_staleness=0, now=100.0) == []
    evicted = evict_stale(client, pid, current_version=9, max_staleness=0, abandon_after_s=60, now=100.0)
    assert _ids(evicted) == ["old"]
    assert client.list_sample_ids(pid) == ["edge", "fresh", "undated"]


def test_evict_stale_rejects_bad_deadlines(client, pid):
    for bad in (-1.0, float("inf"), "60"):
        with pytest.raises(DataPlaneBadRequest):
            evict_stale(client, pid, current_version=0, max_staleness=0, abandon_after_s=bad)


def test_eviction_racing_a_slow_commit_leaves_only_stale_leftovers(client, pid, monkeypatch):
    # The producer is slow: the group is evicted as abandoned between its data write and its commit.
    _write(client, pid, "keep", 7)
    real_put = client.put_samples

    def put(sample_ids, partition_id, fields=None, tags=None):
        if fields is None and tags and all(t == {"committed": True} for t in tags):
            evict_stale(client, pid, current_version=7, max_staleness=0, abandon_after_s=0.0)
        return real_put(sample_ids, partition_id, fields, tags)

    monkeypatch.setattr(client, "put_samples", put)
    _write(client, pid, "slow", 7, created_at=0.0)
    monkeypatch.undo()
    fresh, stale = select_groups(client, pid, current_version=7, max_staleness=0)
    assert _ids(fresh) == ["keep"]  # the resurrected keys are never selected...
    assert sorted(keys_of(stale)) == ["slow-0", "slow-1"]  # ...they are tag-only, version-less, stale
    evict_stale(client, pid, current_version=7, max_staleness=0)
    assert client.list_sample_ids(pid) == ["keep-0", "keep-1"]


# ---------------------------------------------------------------------- requeue after a consumer crash


def test_requeue_unfinished_redelivers_exactly_the_unpopped_samples(client, pid):
    keys = [f"s{i}" for i in range(7)]
    client.register_partition(pid, ["x"], num_samples=7, consumer_tasks=["train"])
    client.put_samples(keys, pid, {"x": torch.arange(7)})
    finished = client.claim_meta(pid, "train", ["x"], 3)
    client.pop(finished.sample_ids, pid)
    in_flight = client.claim_meta(pid, "train", ["x"], 3)  # claimed, then the consumer dies
    requeued = requeue_unfinished(client, pid, new_task="train#2", fields=["x"])
    assert requeued == sorted(set(keys) - set(finished.sample_ids))
    assert set(in_flight.sample_ids) <= set(requeued)
    got = []
    while True:
        meta = client.claim_meta(pid, "train#2", ["x"], 3, timeout_s=5)
        if meta.size == 0:
            break
        got += meta.sample_ids
        assert client.get_data(meta)["x"].tolist() == [int(k[1:]) for k in meta.sample_ids]
        client.pop(meta.sample_ids, pid)
    assert sorted(got) == requeued
    assert client.check_consumption_status(pid, ["train#2"]) is True
    with pytest.raises(DataPlaneKeyError, match="train"):  # the presumed-dead consumer is fenced off
        client.claim_meta(pid, "train", ["x"], 1, blocking=False)


def test_requeue_unfinished_streaming_keeps_taking_new_samples(client, pid):
    client.register_partition(pid, ["x"], num_samples=None, consumer_tasks=["train"])
    client.put_samples(["a", "b"], pid, {"x": torch.arange(2)})
    client.claim_meta(pid, "train", ["x"], 2)
    assert requeue_unfinished(client, pid, new_task="train#2", fields=["x"], streaming=True) == ["a", "b"]
    client.put_samples(["c", "d"], pid, {"x": torch.arange(2)})
    claimed = client.claim_meta(pid, "train#2", ["x"], 4, timeout_s=5)
    assert sorted(claimed.sample_ids) == ["a", "b", "c", "d"]


def test_requeue_unfinished_rejects_a_bad_task_name(client, pid):
    with pytest.raises(DataPlaneBadRequest):
        requeue_unfinished(client, pid, new_task="", fields=["x"])


def test_groups_without_created_at_are_aged_from_when_first_seen(client, pid):
    # Written with plain put_samples (no write_group): no created_at, never committed.
    client.put_samples(
        ["raw0", "raw1"], pid, {"x": torch.ones(2)}, tags=[{"group_id": "r"}, {"group_id": "r"}]
    )
    client.put_samples(["loose"], pid, {"x": torch.ones(1)})  # no tags at all: its own group
    evict = dict(current_version=0, max_staleness=0, abandon_after_s=60)
    assert evict_stale(client, pid, **evict, now=1000.0) == []  # first seen now: never evicted at first sight
    assert select_groups(client, pid, current_version=0, max_staleness=0) == ([], [])
    assert evict_stale(client, pid, **evict, now=1060.0) == []  # exactly at the deadline: still pending
    client.put_samples(["late"], pid, {"x": torch.ones(1)})  # first seen at 1060.5, aged from then
    doomed = evict_stale(client, pid, **evict, now=1060.5)
    assert sorted(g.group_id for g in doomed) == ["loose", "r"]
    assert client.list_sample_ids(pid) == ["late"]
    assert evict_stale(client, pid, **evict, now=1120.0) == []
    assert [g.keys for g in evict_stale(client, pid, **evict, now=1121.0)] == [["late"]]
    assert evict_stale(client, pid, current_version=0, max_staleness=0) == []  # without abandon_after_s: kept


def test_ageless_groups_are_tracked_per_client_and_forgotten_when_gone(pid):
    from kvplane.adapters.memory import MemoryDataPlaneClient

    first, second = MemoryDataPlaneClient(), MemoryDataPlaneClient()
    for c in (first, second):
        c.put_samples(["k"], pid, None, tags=[{"t": 1}])
    evict = dict(current_version=0, max_staleness=0, abandon_after_s=10)
    assert evict_stale(first, pid, **evict, now=0.0) == []
    assert evict_stale(second, pid, **evict, now=100.0) == []  # its own first sight
    assert [g.keys for g in evict_stale(first, pid, **evict, now=11.0)] == [["k"]]
    first.put_samples(["k"], pid, None, tags=[{"t": 1}])  # the same name again: a new group, seen afresh
    assert evict_stale(first, pid, **evict, now=15.0) == []
    assert evict_stale(second, pid, **evict, now=105.0) == []


def test_ls_groups_shows_groups_of_unknown_age(client, pid, capsys):
    from kvplane.cli import main

    client.put_samples(["raw"], pid, None, tags=[{"group_id": "r"}])
    write_group(client, pid, ["w"], {"x": torch.ones(1)}, group_id="w", weight_version=1)
    assert main(["ls", pid, "--groups"], client=client) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.split()[0] in ("r", "w")}
    assert rows["r"][-1] == "unknown" and rows["w"][-1] != "unknown"
    assert "1 group(s) carry no created_at tag" in out
