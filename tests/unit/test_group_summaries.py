"""Incremental group summaries (embedded backend) equal a full rescan; cursor listings; memory per key."""

from __future__ import annotations

import random
import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvplane import DataPlaneBadRequest
from kvplane._groupindex import FrozenDict, FrozenList, GroupIndex
from kvplane._groups import groups_from_tags
from kvplane.adapters.memory import MemoryDataPlaneClient
from tests.group_race import evict, produce, rescan

_TAGS = st.fixed_dictionaries(
    {},
    optional={
        "group_id": st.sampled_from(["", "g1", "g2", "k1", 0, 7]),
        "committed": st.sampled_from([True, False, "true", "no", 1]),
        "expected_num_keys": st.sampled_from([1, 2, 3, "2", None, "x"]),
        "num_keys": st.sampled_from([1, 2]),
        "weight_version": st.sampled_from([0, 3, "4", None]),
        "created_at": st.sampled_from([1.5, "2.5", None]),
    },
)
_OPS = st.lists(st.tuples(st.sampled_from(["k0", "k1", "k2", "k3", "g1"]), st.none() | _TAGS), max_size=40)


@settings(max_examples=300, deadline=None)
@given(_OPS)
def test_the_index_equals_groups_from_tags_after_any_sequence_of_changes(ops):
    store: dict[str, dict] = {}
    index = GroupIndex(store.get)
    for key, tags in ops:  # None removes the key; a dict replaces its tags
        old = store.get(key)
        if tags is None:
            store.pop(key, None)
        else:
            store[key] = tags
        index.apply([(key, old, store.get(key))])
        full = groups_from_tags("p", store)
        assert index.metas("p") == full
        assert index.depth() == sum(1 for g in full if g.committed and g.is_complete)


def test_cached_metas_are_read_only_and_pickle_as_plain_values():
    import pickle

    client = MemoryDataPlaneClient()
    client.put_samples(["a"], "p", None, tags=[{"group_id": "g", "n": [1]}])
    (group,) = client.list_metadata("p")
    assert isinstance(group.keys, FrozenList) and isinstance(group.tags, FrozenDict)
    with pytest.raises(DataPlaneBadRequest, match="read-only"):
        group.keys.append("b")
    with pytest.raises(DataPlaneBadRequest, match="read-only"):
        group.tags["n"] = 2
    group.tags["n"].append(2)  # a nested container is the meta's own copy, not the store's
    assert client.list_keys("p")["p"]["a"]["n"] == [1]
    copied = pickle.loads(pickle.dumps(group))
    assert type(copied.keys) is list and copied.keys == ["a"] and type(copied.tags) is dict


def test_racing_producer_and_evictor_threads_leave_summaries_equal_to_a_rescan():
    client = MemoryDataPlaneClient()
    pid = "race"
    errors: list[BaseException] = []

    def run(fn, *args):
        try:
            fn(client, pid, *args)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    seen = threading.Event()  # the reader saw a committed group while evictors still ran

    def produce_until_seen(c, p, *args):
        produce(c, p, *args)
        seen.wait(60)  # a loaded machine may not schedule the reader before the producers finish

    producers = [threading.Thread(target=run, args=(produce_until_seen, f"w{i}", 60, i)) for i in range(3)]
    done = lambda: not any(t.is_alive() for t in producers)  # noqa: E731
    threads = producers + [threading.Thread(target=run, args=(evict, 1000, 10 + i, done)) for i in range(2)]
    for t in threads:
        t.start()
    observed = []
    while any(t.is_alive() for t in threads):  # a reader polls while they race
        observed.append(client.depth(pid))
        if observed[-1] > 0 and not done():
            seen.set()
    for t in threads:
        t.join()
    assert not errors, errors
    state = rescan(client, pid)
    assert state["depth"] == state["full_depth"]
    assert state["groups"] == state["full_groups"]
    assert max(observed, default=0) > 0, "no committed group was ever seen during the race"
    assert state["full_depth"] > 0, "the evictors stop with the producers: fresh groups remain"


def test_summaries_survive_a_checkpoint_round_trip(tmp_path):
    a = MemoryDataPlaneClient()
    produce(a, "p", "w", 20, 1)
    a.save_checkpoint(tmp_path / "ck")
    b = MemoryDataPlaneClient()
    b.load_checkpoint(tmp_path / "ck")
    assert b.list_metadata("p") == a.list_metadata("p") and b.depth("p") == a.depth("p") > 0
    state = rescan(b, "p")
    assert state["groups"] == state["full_groups"]


# ---------------------------------------------------------------------- cursor listing
def _scan(client, pid, count, match=None, between=None):
    cursor, seen, pages = 0, [], 0
    while True:
        cursor, page = client.list_keys(pid, cursor=cursor, count=count, match=match)
        seen.extend(page.get(pid, {}))
        pages += 1
        if between is not None:
            between(pages)
        if cursor == 0:
            return seen, pages


def test_a_cursor_scan_returns_every_key_present_throughout_exactly_once_while_keys_come_and_go():
    client = MemoryDataPlaneClient()
    stable = [f"s{i}" for i in range(500)]
    client.put_samples(stable, "p", {"x": torch.arange(500)}, tags=[{"i": i} for i in range(500)])
    churn = [f"c{i}" for i in range(300)]
    client.put_samples(churn[:150], "p", {"x": torch.arange(150)})
    rng = random.Random(0)

    def mutate(page: int) -> None:  # remove and add keys between pages (freed slots get reused)
        client.clear_samples(rng.sample(churn[:150], 5), "p")
        client.put_samples([f"n{page}-{j}" for j in range(7)], "p", {"x": torch.arange(7)})

    seen, pages = _scan(client, "p", 37, between=mutate)
    assert pages > 10
    assert len(seen) == len(set(seen))
    assert set(stable) <= set(seen)


def test_a_cursor_page_carries_tags_and_matches_a_prefix():
    client = MemoryDataPlaneClient()
    client.put_samples(["a/1", "a/2", "b/1"], "p", None, tags=[{"t": 1}, {"t": 2}, {"t": 3}])
    cursor, page = client.list_keys("p", cursor=0, count=10, match="a/")
    assert cursor == 0 and page == {"p": {"a/1": {"t": 1}, "a/2": {"t": 2}}}
    assert client.list_keys("p", cursor=0, count=2) == (2, {"p": {"a/1": {"t": 1}, "a/2": {"t": 2}}})
    assert client.list_keys("nope", cursor=0) == (0, {})
    assert client.list_keys("p") == {"p": {"a/1": {"t": 1}, "a/2": {"t": 2}, "b/1": {"t": 3}}}  # unchanged


@pytest.mark.parametrize(
    "kwargs",
    [
        {"partition_id": None, "cursor": 0},
        {"partition_id": "p", "count": 5},
        {"partition_id": "p", "cursor": -1},
        {"partition_id": "p", "cursor": True},
        {"partition_id": "p", "cursor": 0, "count": 0},
        {"partition_id": "p", "cursor": 0, "match": 3},
    ],
)
def test_bad_cursor_listings_are_rejected(kwargs):
    with pytest.raises(DataPlaneBadRequest):
        MemoryDataPlaneClient().list_keys(**kwargs)


# ---------------------------------------------------------------------- memory
def test_kvplane_keeps_at_most_200_bytes_of_its_own_per_key():
    from kvplane_tools.bench.scale import overhead_per_key

    assert overhead_per_key(20_000) <= 200


# ---------------------------------------------------------------------- kvplane ls
def test_ls_pages_through_a_partition_with_count_and_match(capsys):
    import json

    from kvplane.cli import main

    client = MemoryDataPlaneClient()
    keys = [f"a{i:02d}" for i in range(25)] + ["b0", "b1"]
    client.put_samples(keys, "p", None, tags=[{"i": i} for i in range(len(keys))])
    calls = []
    real = client.list_keys
    client.list_keys = lambda *a, **k: calls.append(k) or real(*a, **k)
    assert main(["ls", "p", "--count", "4"], client=client, commands={}) == 0
    assert capsys.readouterr().out.split() == keys
    assert len(calls) == 7 and all(c["count"] == 4 for c in calls)  # 27 slots, 4 a page
    assert main(["ls", "p", "--match", "b", "--tags", "--json"], client=client, commands={}) == 0
    assert json.loads(capsys.readouterr().out) == {"p": {"b0": {"i": 25}, "b1": {"i": 26}}}
    assert main(["ls", "p", "--match", "zz"], client=client, commands={}) == 0
    assert "no keys matching" in capsys.readouterr().out
    assert main(["ls", "--match", "a"], client=client, commands={}) == 2
    assert "name the partition" in capsys.readouterr().err
