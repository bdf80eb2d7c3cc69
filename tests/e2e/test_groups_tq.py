"""Group summaries, cursor pages and bulk clears on TransferQueue, with several processes (issue 18)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor

import pytest
import torch

from kvplane.adapters.transfer_queue import TransferQueueDataPlaneClient
from kvplane.replay import write_group
from tests.group_race import rescan

from .conftest import Deployment
from .workers import die_mid_clear, race_evict, race_produce

TIMEOUT_S = 600


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(max_workers=4, mp_context=multiprocessing.get_context("spawn")) as executor:
        yield executor


def _cache(client: TransferQueueDataPlaneClient, pid: str):
    return client._caches[pid][0]


def test_racing_producer_and_evictor_processes_leave_depth_equal_to_a_rescan(
    deployment: Deployment, client: TransferQueueDataPlaneClient, pid: str, pool: ProcessPoolExecutor
):
    cfg = deployment.worker_config
    assert client.depth(pid) == 0  # this reader's summaries exist before the race
    futures = [pool.submit(race_produce, cfg, pid, f"w{i}", 40, i) for i in range(2)]
    futures += [pool.submit(race_evict, cfg, pid, 25, 10 + i) for i in range(2)]
    seen = []
    while not all(f.done() for f in futures):  # the reader refreshes incrementally while they race
        seen.append(client.depth(pid))
    for f in futures:
        f.result(timeout=TIMEOUT_S)
    state = rescan(client, pid)
    assert state["depth"] == state["full_depth"]
    assert state["groups"] == state["full_groups"]
    assert max(seen, default=0) > 0, "no committed group was ever seen during the race"
    assert len(seen) > 1 and _cache(client, pid).rescans == 1  # one initial listing, increments after


def test_a_writer_that_dies_mid_clear_costs_a_reread_not_a_wrong_depth(
    deployment: Deployment, client: TransferQueueDataPlaneClient, pid: str
):
    keys = [f"k{i}" for i in range(4)]
    write_group(client, pid, keys, {"x": torch.arange(4)}, group_id="g", weight_version=0)
    assert client.depth(pid) == 1
    # its own pool: the worker process dies on purpose
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as dying:
        with pytest.raises(BrokenExecutor):
            dying.submit(die_mid_clear, deployment.worker_config, pid, keys[:1]).result(timeout=TIMEOUT_S)
    assert client.list_sample_ids(pid) == keys[1:]
    assert client.depth(pid) == 0  # the open entry is read again: the group lost a key
    assert [g.keys for g in client.list_metadata(pid)] == [keys[1:]]
    assert _cache(client, pid).rescans == 1


def test_a_cursor_scan_returns_each_stable_key_once_and_clear_drops_the_partition_in_bulk(
    client: TransferQueueDataPlaneClient, pid: str
):
    stable = [f"s{i:03d}" for i in range(300)]
    client.put_samples(stable, pid, {"x": torch.arange(300)}, tags=[{"i": i} for i in range(300)])
    cursor, seen, page_no = 0, {}, 0
    while True:
        cursor, page = client.list_keys(pid, cursor=cursor, count=40)
        seen_now = page.get(pid, {})
        assert not set(seen_now) & set(seen)
        seen.update(seen_now)
        page_no += 1
        client.put_samples([f"n{page_no}"], pid, {"x": torch.arange(1)})  # keys come and go meanwhile
        client.clear_samples([f"n{page_no - 1}"], pid)
        if cursor == 0:
            break
    assert set(stable) <= set(seen) and seen["s007"] == {"i": 7}
    cursor, page = client.list_keys(pid, cursor=0, count=1000, match="s00")
    assert cursor == 0 and sorted(page[pid]) == [f"s00{i}" for i in range(10)]
    assert client.depth(pid) == 0 and len(client.list_metadata(pid)) > 300
    client.register_partition(pid, ["x"], num_samples=10, consumer_tasks=["train"])
    client.clear_samples(None, pid)
    assert client.list_keys(pid) == {} and client.list_keys(pid, cursor=0) == (0, {})
    assert client.list_metadata(pid) == [] and client.depth(pid) == 0
    write_group(client, pid, ["a", "b"], {"x": torch.arange(2)}, group_id="g", weight_version=1)
    assert client.get_samples(["a", "b"], pid, ["x"])["x"].tolist() == [0, 1]
    assert client.depth(pid) == 1
    claimed = client.claim_meta(pid, "train", ["x"], 2, timeout_s=5)  # a fresh registration: any task
    assert sorted(claimed.sample_ids) == ["a", "b"]


def _leftovers(client: TransferQueueDataPlaneClient, pid: str) -> dict[str, list[str]]:
    """Every partition TransferQueue lists with keys that belongs to ``pid`` (its own, its control
    records, its change log)."""
    return {p: sorted(keys) for p, keys in client._tq.kv_list(None).items() if p.endswith(pid) and keys}


def test_a_whole_partition_clear_leaves_nothing_and_readers_and_writers_start_over(
    deployment: Deployment, client: TransferQueueDataPlaneClient, pid: str
):
    other = TransferQueueDataPlaneClient(deployment.worker_config, bootstrap=False)  # a second writer
    try:
        for round_no in range(3):  # no record accumulates per clear
            write_group(client, pid, ["a", "b"], {"x": torch.arange(2)}, group_id="g", weight_version=1)
            write_group(other, pid, ["c"], {"x": torch.arange(1)}, group_id="h", weight_version=1)
            assert client.depth(pid) == other.depth(pid) == 2
            assert len(_leftovers(client, pid)) == 3  # data, control records (heads), change log
            (client if round_no % 2 else other).clear_samples(None, pid)
            assert _leftovers(client, pid) == {}
            assert client.depth(pid) == other.depth(pid) == 0 and client.list_metadata(pid) == []
        # After a clear, each writer starts a new generation and every reader follows it.
        write_group(other, pid, ["c"], {"x": torch.arange(1)}, group_id="h", weight_version=1)
        assert client.depth(pid) == 1 and [g.keys for g in client.list_metadata(pid)] == [["c"]]
        other.clear_samples(["c"], pid)
        assert client.depth(pid) == 0 and client.list_metadata(pid) == []
    finally:
        other.close()
    client.clear_samples(None, pid)
    assert _leftovers(client, pid) == {}

