"""Processes that die mid-protocol, and writers that race across processes, on the session deployment.

Consumers, producers and readers are spawned processes attached to the session's deployment
(``bootstrap=False``); a dying one is killed with ``SIGKILL`` (no cleanup of any kind runs). Where the
kill or a race must land between two steps of one call, the worker pauses there (a hook in its own
process, :data:`HOOKS`) and says so; the test then kills it, or acts and lets it go on. The kill and
the interleaving are real, only their timing is made deterministic. The deployment's actors are
never touched (tests/e2e/test_faults.py does that on a deployment of its own).

What these tests pin down, for docs/guarantees.md:

- a consumer killed after claiming: its samples stay stored and readable by key, that task never
  claims them again, and ``requeue_unfinished`` hands them to a fresh task once each while the old
  task is fenced off, in every process;
- a producer killed inside a put leaves its keys registered: with empty tags (killed before the tag
  write) or with the put's tags but no data (killed between the tags and the data); killed between
  its data and its commit, the group stays uncommitted; each case has a sweep that removes it;
- a read racing a clear of its key (whose slot a new key then takes) names the key missing, never
  returns the new key's row;
- tag writers on one key in two processes lose updates (a read-modify-write), while one writer per
  key with ``write_group`` never shows a reader in another process a committed group partly.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest
import torch

from kvplane import DataPlaneKeyError, DataPlaneReadError
from kvplane.adapters.transfer_queue import TransferQueueDataPlaneClient
from kvplane.replay import evict_stale, keys_of, requeue_unfinished, select_groups, write_group

from .conftest import Deployment
from .workers import check_rows, key_of, sample_batch

TIMEOUT_S = 120.0  # every wait on another process
HOLD_S = 300.0  # how long a paused worker waits to be killed before it gives up on its own
FIELDS = ["x", "emb", "ids", "text"]

_spawn = multiprocessing.get_context("spawn")

# ---------------------------------------------------------------------- in worker processes


def _attach(cfg: dict[str, Any]):
    from kvplane import build_data_plane_client

    return build_data_plane_client(cfg, bootstrap=False)


def consumer(cfg: dict[str, Any], pid: str, task: str, batch: int, out: Any, resume: Any) -> None:
    """Claim one batch and report it; then (if not killed first) wait for ``resume`` and claim again."""
    client = _attach(cfg)
    try:
        out.put(client.claim_meta(pid, task, ["x"], batch, timeout_s=TIMEOUT_S).sample_ids)
        if not resume.wait(HOLD_S):
            return
        try:
            meta = client.claim_meta(pid, task, ["x"], batch, blocking=False)
            out.put({"claimed": meta.sample_ids})
        except Exception as exc:  # noqa: BLE001 - reported to the test
            out.put({"error": type(exc).__name__, "message": str(exc)})
    finally:
        client.close()


#: Where a worker can be paused, after the call returns: (what owns the function, its name).
#: ``lookup``: TransferQueue looked the keys up (a put registers new ones, and gets the current tags
#: it merges its own into; a read gets the slots, i.e. global indexes, it fetches next);
#: ``tags``: a put wrote its tags (its data is stored next).
HOOKS = {
    "lookup": (lambda client: client._tq, "async_kv_retrieve_meta"),
    "tags": (lambda client: sys.modules[type(client).__module__], "set_tags"),
}


def _pause_at(client: Any, hook: str, nth: int, pid: str, out: Any, resume: Any) -> None:
    """Pause the worker after the ``nth`` ``HOOKS[hook]`` call for partition ``pid``.

    Both hooked functions take the partition id second. While paused the worker reports ``hook`` on
    ``out`` and waits for ``resume`` (or to be killed).
    """
    owner, name = HOOKS[hook]
    target = owner(client)
    original = getattr(target, name)
    calls = {"n": 0}

    async def hooked(*args: Any, **kwargs: Any) -> Any:
        result = await original(*args, **kwargs)
        if (kwargs.get("partition_id") or args[1]) == pid:
            calls["n"] += 1
            if calls["n"] == nth:
                out.put(hook)
                loop = asyncio.get_running_loop()
                if not await loop.run_in_executor(None, resume.wait, HOLD_S):
                    raise TimeoutError("the test neither killed nor resumed this worker")
        return result

    setattr(target, name, hooked)


def producer_paused(
    cfg: dict[str, Any], pid: str, group: str, hook: str, nth: int, out: Any, resume: Any
) -> None:
    """``write_group`` of two keys, paused at the ``nth`` ``hook`` of ``pid`` (to be killed there)."""
    client = _attach(cfg)
    _pause_at(client, hook, nth, pid, out, resume)
    keys = [f"{group}-0", f"{group}-1"]
    write_group(client, pid, keys, {"x": torch.ones(2, 3)}, group_id=group, weight_version=1)
    client.close()


def tag_writer_paused(
    cfg: dict[str, Any], pid: str, key: str, tags: dict[str, Any], out: Any, resume: Any
) -> None:
    """A tag-only put, paused once it has read the key's current tags (it merges its own into them)."""
    client = _attach(cfg)
    try:
        _pause_at(client, "lookup", 1, pid, out, resume)
        client.put_samples([key], pid, None, tags=[tags])
        out.put("written")
    finally:
        client.close()


def reader_paused(cfg: dict[str, Any], pid: str, key: str, out: Any, resume: Any) -> None:
    """Read one key, paused between looking it up and fetching its row; report what the read returned."""
    client = _attach(cfg)
    try:
        _pause_at(client, "lookup", 1, pid, out, resume)
        try:
            out.put({"value": client.get_samples([key], pid, ["x"])["x"].tolist()})
        except Exception as exc:  # noqa: BLE001 - reported to the test
            out.put({"error": type(exc).__name__, "message": str(exc)})
    finally:
        client.close()


def tag_writer(cfg: dict[str, Any], pid: str, key: str, writer: int, updates: int) -> None:
    """``updates`` tag-only puts on one key, each adding a tag only this writer writes."""
    client = _attach(cfg)
    try:
        for i in range(updates):
            client.put_samples([key], pid, None, tags=[{f"w{writer}": i, f"w{writer}-{i}": writer}])
    finally:
        client.close()


def group_producer(cfg: dict[str, Any], pid: str, groups: int, size: int) -> int:
    """Write ``groups`` rollout groups with ``write_group``, rows holding the group's number."""
    client = _attach(cfg)
    try:
        for g in range(groups):
            keys = [f"g{g:03d}-{i}" for i in range(size)]
            rows = torch.full((size, 64), float(g))
            write_group(
                client,
                pid,
                keys,
                {"v": rows, "w": rows[:, :1].clone()},
                group_id=f"g{g:03d}",
                weight_version=g,
            )
        return groups
    finally:
        client.close()


# ---------------------------------------------------------------------- helpers (test process)


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    """Two spawned processes for workers that are not killed (each call attaches afresh)."""
    with ProcessPoolExecutor(max_workers=2, mp_context=_spawn) as executor:
        yield executor


class Worker:
    """A spawned worker process with a report queue and a resume event; killed or joined, never leaked."""

    def __init__(self, target: Callable[..., Any], *args: Any) -> None:
        self.out = _spawn.Queue()
        self.resume = _spawn.Event()
        self.process = _spawn.Process(target=target, args=(*args, self.out, self.resume))
        self.process.start()

    def report(self) -> Any:
        return self.out.get(timeout=TIMEOUT_S)

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(TIMEOUT_S)
        assert self.process.exitcode == -signal.SIGKILL

    def finish(self) -> None:
        self.resume.set()
        self.process.join(TIMEOUT_S)
        assert self.process.exitcode == 0

    def reap(self) -> None:
        if self.process.is_alive():
            self.process.kill()
            self.process.join(TIMEOUT_S)


@pytest.fixture
def workers() -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(target: Callable[..., Any], *args: Any) -> Worker:
        started.append(Worker(target, *args))
        return started[-1]

    yield start
    for worker in started:
        worker.reap()


def _claim_all(client: TransferQueueDataPlaneClient, pid: str, task: str, batch: int) -> list[list[str]]:
    batches = []
    while (meta := client.claim_meta(pid, task, ["x"], batch, timeout_s=TIMEOUT_S)).size:
        batches.append(meta.sample_ids)
    return batches


# ---------------------------------------------------------------------- consumers


def test_consumers_killed_or_hung_after_claiming_are_requeued_once_and_fenced_off(
    deployment: Deployment, client: TransferQueueDataPlaneClient, pid: str, workers: Callable[..., Worker]
):
    n = 12
    keys = [key_of(i) for i in range(n)]
    client.register_partition(pid, FIELDS, num_samples=n, consumer_tasks=["train"])
    client.put_samples(keys, pid, sample_batch(list(range(n))))
    finished = client.claim_meta(pid, "train", ["x"], 2).sample_ids
    client.pop(finished, pid)  # trained on, released

    killed = workers(consumer, deployment.worker_config, pid, "train", 3)
    lost = killed.report()
    killed.kill()  # dies right after its claim returned
    hung = workers(consumer, deployment.worker_config, pid, "train", 3)
    stuck = hung.report()  # presumed dead: it claimed, then went silent

    # The task never hands their samples out again: the rest of "train" is exactly the others.
    rest = [key for batch in _claim_all(client, pid, "train", 5) for key in batch]
    assert sorted(rest) == sorted(set(keys) - set(finished) - set(lost) - set(stuck))
    assert client.check_consumption_status(pid, ["train"]) is True
    client.pop(rest, pid)
    # Claimed but unfinished: still stored and readable by key, intact.
    unfinished = sorted(lost + stuck)
    assert client.list_sample_ids(pid) == unfinished
    check_rows(unfinished, client.get_samples(unfinished, pid, FIELDS))

    assert requeue_unfinished(client, pid, new_task="train#2", fields=FIELDS) == unfinished
    hung.resume.set()  # the presumed-dead consumer wakes up and claims again: fenced off
    fenced = hung.report()
    assert fenced["error"] == "DataPlaneKeyError" and "train" in fenced["message"], fenced
    hung.finish()
    with pytest.raises(DataPlaneKeyError, match="train"):
        client.claim_meta(pid, "train", ["x"], 1, blocking=False)

    batches = _claim_all(client, pid, "train#2", 4)
    assert [len(b) for b in batches] == [4, 2]  # each unfinished sample once, a short last batch
    assert sorted(k for b in batches for k in b) == unfinished
    assert client.check_consumption_status(pid, ["train#2"]) is True


# ---------------------------------------------------------------------- producers


def test_a_producer_killed_inside_a_put_or_before_its_commit_leaves_sweepable_keys(
    deployment: Deployment, client: TransferQueueDataPlaneClient, pid: str, workers: Callable[..., Worker]
):
    # Three producers of one group each, killed at three points of write_group (all paused at once).
    points = {
        "registered": ("lookup", 1),  # keys created, tags not yet written
        "tagged": ("tags", 1),  # tags written, data not yet stored
        "uncommitted": ("lookup", 2),  # data stored, the commit just starting
    }
    cfg = {**deployment.worker_config, "request_timeout_s": HOLD_S}  # a paused put must not time out
    producers = {
        group: workers(producer_paused, cfg, pid, group, hook, nth) for group, (hook, nth) in points.items()
    }
    for group, (hook, _) in points.items():
        assert producers[group].report() == hook
    for producer in producers.values():
        producer.kill()

    listed = client.list_keys(pid)[pid]
    assert sorted(listed) == sorted(f"{g}-{i}" for g in points for i in range(2))
    assert listed["registered-0"] == listed["registered-1"] == {}  # registered with empty tags
    tagged = listed["tagged-0"]
    assert tagged["group_id"] == "tagged" and tagged["committed"] is False
    for group in ("registered", "tagged"):  # no data: a read names the missing field
        with pytest.raises(DataPlaneKeyError, match="'x'"):
            client.get_samples([f"{group}-0"], pid, ["x"])
    assert client.get_samples(["uncommitted-0", "uncommitted-1"], pid, ["x"])["x"].tolist() == [[1.0] * 3] * 2

    # None of it is ever selected; the abandoned groups go with evict_stale: the tagged ones once
    # abandon_after_s has passed since their created_at, the untagged keys (each its own group, no
    # created_at) once it has passed since evict_stale first saw them. Every clock is explicit.
    groups = {g.group_id: g for g in client.list_metadata(pid)}
    assert not any(g.committed for g in groups.values()) and client.depth(pid) == 0
    written = max(g.created_at for g in groups.values() if g.created_at is not None)
    first_look = evict_stale(client, pid, current_version=1, max_staleness=5, abandon_after_s=60, now=written + 1)
    assert first_look == []  # nothing is abandoned at first sight
    assert select_groups(client, pid, current_version=1, max_staleness=5) == ([], [])
    evicted = evict_stale(client, pid, current_version=1, max_staleness=5, abandon_after_s=60, now=written + 61)
    assert sorted(g.group_id for g in evicted) == ["tagged", "uncommitted"]  # the untagged: 60 s, not more
    evicted = evict_stale(client, pid, current_version=1, max_staleness=5, abandon_after_s=60, now=written + 62)
    assert sorted(k for g in evicted for k in g.keys) == ["registered-0", "registered-1"]
    assert client.list_sample_ids(pid) == []


# ---------------------------------------------------------------------- a read racing a clear


def test_a_read_racing_a_clear_never_returns_the_row_of_the_key_that_took_its_slot(
    deployment: Deployment, client: TransferQueueDataPlaneClient, pid: str, workers: Callable[..., Worker]
):
    client.put_samples(["a"], pid, {"x": torch.tensor([[1.0]])})
    slot = client._tq.kv_retrieve_meta(["a"], pid, create=False).global_indexes[0]
    cfg = {**deployment.worker_config, "request_timeout_s": HOLD_S}  # a paused read must not time out
    reader = workers(reader_paused, cfg, pid, "a")
    assert reader.report() == "lookup"  # it looked "a" up and is about to fetch its slot
    client.clear_samples(["a"], pid)  # frees the slot; TransferQueue hands freed slots out again
    taken_by = None
    for batch in range(64):  # new keys until one gets the freed slot (bounded)
        keys = [f"new{batch}-{i}" for i in range(64)]
        client.put_samples(keys, pid, {"x": torch.full((64, 1), 99.0)})
        slots = client._tq.kv_retrieve_meta(keys, pid, create=False).global_indexes
        if slot in slots:
            taken_by = keys[list(slots).index(slot)]
            break
    assert taken_by is not None, "no put reused the freed slot"
    reader.resume.set()
    seen = reader.report()
    reader.finish()
    # "a" is gone: the read names it missing, it never returns the row of the key now in its slot.
    assert seen.get("error") == "DataPlaneKeyError" and "'a'" in seen["message"], seen


def _failing_fetch(
    client: TransferQueueDataPlaneClient, pid: str, clear_first: list[str]
) -> Callable[..., Any]:
    """A storage fetch that fails as MooncakeStore does when a clear races it (``clear_first`` cleared)."""

    async def fetch(*_: Any) -> Any:
        if clear_first:
            await asyncio.to_thread(client.clear_samples, clear_first, pid)
        raise RuntimeError(
            "batch_get_into failed for keys ['0@x'] with error codes [-703] after retrying 3 times."
        )

    return fetch


@pytest.mark.parametrize("cleared", [True, False], ids=["clear-raced", "storage-failed"])
def test_a_fetch_failing_because_a_clear_raced_it_names_the_key_missing(
    client: TransferQueueDataPlaneClient, pid: str, monkeypatch: pytest.MonkeyPatch, cleared: bool
):
    client.put_samples(["a", "b"], pid, {"x": torch.ones(2, 3)})
    fetch = _failing_fetch(client, pid, ["a"] if cleared else [])
    monkeypatch.setattr(client, "_read", fetch)  # the client's fetch, whichever storage it reads
    if cleared:  # the key lost its slot during the fetch: it is missing, not a storage failure
        with pytest.raises(DataPlaneKeyError, match="'a'"):
            client.get_samples(["a", "b"], pid, ["x"])
    else:  # every key still owns its slot: the storage's own failure stands
        with pytest.raises(DataPlaneReadError, match="error codes \\[-703\\]") as err:
            client.get_samples(["a", "b"], pid, ["x"])
        assert not isinstance(err.value, DataPlaneKeyError)
    monkeypatch.undo()
    assert client.list_sample_ids(pid) == (["b"] if cleared else ["a", "b"])


# ---------------------------------------------------------------------- tag writers across processes


def test_two_processes_writing_tags_of_one_key_lose_an_update(
    deployment: Deployment, client: TransferQueueDataPlaneClient, pid: str, workers: Callable[..., Worker]
):
    client.put_samples(["k"], pid, {"x": torch.zeros(1, 2)}, tags=[{"seed": 0}])
    cfg = {**deployment.worker_config, "request_timeout_s": HOLD_S}  # a paused put must not time out
    slow = workers(tag_writer_paused, cfg, pid, "k", {"a": 1})
    assert slow.report() == "lookup"  # it has read {"seed": 0}, to merge {"a": 1} into
    client.put_samples(["k"], pid, None, tags=[{"b": 2}])  # lands in between
    assert client.list_keys(pid)[pid]["k"] == {"seed": 0, "b": 2}
    slow.resume.set()
    assert slow.report() == "written"
    slow.finish()
    # The slow writer replaced the key's tags with its stale merge: "b" is lost, with no error.
    assert client.list_keys(pid)[pid]["k"] == {"seed": 0, "a": 1}
    assert client.get_samples(["k"], pid, ["x"])["x"].tolist() == [[0.0, 0.0]]  # data untouched


def test_free_running_tag_writers_in_two_processes_keep_only_values_they_wrote(
    deployment: Deployment, client: TransferQueueDataPlaneClient, pid: str, pool: ProcessPoolExecutor
):
    updates = 40
    client.put_samples(["k"], pid, {"x": torch.zeros(1, 2)})
    runs = [pool.submit(tag_writer, deployment.worker_config, pid, "k", w, updates) for w in range(2)]
    for run in runs:
        run.result(timeout=TIMEOUT_S)
    tags = client.list_keys(pid)[pid]["k"]
    for name, value in tags.items():  # only names and values the writers wrote
        match = re.fullmatch(r"w(\d)(?:-(\d+))?", name)
        assert match is not None, name
        assert value == int(match.group(1)) if match.group(2) else value in range(updates), (name, value)
    assert 0 < len(tags) <= 2 * (updates + 1)  # how many survive depends on the interleaving
    print(f"{len(tags)} of {2 * (updates + 1)} tag names survived two concurrent writers")
    assert client.get_samples(["k"], pid, ["x"])["x"].tolist() == [[0.0, 0.0]]


def test_a_reader_in_another_process_never_sees_a_committed_group_partly(
    deployment: Deployment, client: TransferQueueDataPlaneClient, pid: str, pool: ProcessPoolExecutor
):
    groups, size = 30, 4
    producer = pool.submit(group_producer, deployment.worker_config, pid, groups, size)
    deadline = time.monotonic() + TIMEOUT_S
    reads = 0
    while not producer.done():
        assert time.monotonic() < deadline, "the producer missed its deadline"
        fresh, _ = select_groups(client, pid, current_version=groups, max_staleness=groups)
        for group in fresh:  # committed and complete: every key readable, every row the group's own
            td = client.get_samples(group.keys, pid, ["v", "w"])
            number = float(int(group.group_id[1:]))
            assert len(group.keys) == size and group.weight_version == int(number)
            assert torch.equal(td["v"], torch.full((size, 64), number)), group.group_id
            assert td["w"].tolist() == [[number]] * size, group.group_id
            reads += 1
    assert producer.result(timeout=TIMEOUT_S) == groups
    assert reads > 0  # the reader really read while the producer wrote
    assert client.depth(pid) == groups
    fresh, stale = select_groups(client, pid, current_version=groups, max_staleness=groups)
    assert len(fresh) == groups and stale == [] and sorted(keys_of(fresh)) == client.list_sample_ids(pid)
