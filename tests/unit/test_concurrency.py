"""Many threads on one partition: exactly-once claims, tag merges, put/clear races, group writes.

Backend-agnostic in form (``client`` and ``pid`` fixtures only; ``client`` is never closed) and run
here on the memory backend. Every thread has a deadline; a hung or failed thread fails the test.

What is asserted everywhere, and what only where ``get_capabilities().supports_atomic_batch_put``
(the memory backend: a put, its tag merge included, is applied whole under one lock):

- claims: every sample is claimed exactly once per task, none is lost (everywhere);
- tag merges on one key by concurrent writers: every surviving tag holds a value its writer wrote
  (everywhere); no update is lost (atomic backends only: TransferQueue's merge is a read-modify-write);
- put racing clear: a read returns whole fields or raises DataPlaneKeyError (everywhere); all fields
  of a row come from the same put (atomic backends only);
- groups written by their own producers while a buffer selects, reads and evicts: a selected group
  is readable whole unless it was evicted meanwhile (everywhere).
"""

from __future__ import annotations

import itertools
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest
import torch

from kvplane import DataPlaneBadRequest, DataPlaneKeyError, DataPlaneTimeout, DataPlaneUnavailable
from kvplane.replay import evict_stale, keys_of, select_groups, write_group

DEADLINE_S = 60.0


def run_threads(*targets: Callable[[], None]) -> None:
    """Start the targets together, one thread each; re-raise the first failure; fail on a hung thread."""
    errors: list[BaseException] = []
    start = threading.Barrier(len(targets))

    def guarded(target):
        try:
            start.wait(DEADLINE_S)
            target()
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S)
    assert not any(t.is_alive() for t in threads), "a thread missed its deadline"
    if errors:
        raise errors[0]


def _key_value(key: str) -> int:
    producer, index = key[1:].split("-")
    return int(producer) * 1000 + int(index)


def _producer(client, pid, producer: int, count: int, seed: int) -> Callable[[], None]:
    def produce():
        rng = random.Random(seed)
        start = 0
        while start < count:
            stop = min(count, start + rng.randint(1, 6))
            keys = [f"p{producer}-{i}" for i in range(start, stop)]
            values = torch.tensor([_key_value(k) for k in keys], dtype=torch.float32)
            client.put_samples(keys, pid, {"x": values[:, None].expand(-1, 3).contiguous()})
            start = stop

    return produce


def test_producers_and_consumers_claim_every_sample_exactly_once_per_task(client, pid):
    producers, per_producer, batch = 3, 40, 7
    total = producers * per_producer  # 120 = 17 * 7 + 1: the last claim of each task is short
    client.register_partition(pid, ["x"], num_samples=total, consumer_tasks=["train", "ref"])
    claimed: dict[str, list[str]] = {"train": [], "ref": []}
    lock = threading.Lock()

    def consumer(task):
        def consume():
            while True:
                meta = client.claim_meta(pid, task, ["x"], batch, timeout_s=20)
                if meta.size == 0:
                    return
                rows = client.get_data(meta)["x"]
                assert rows.tolist() == [[float(_key_value(k))] * 3 for k in meta.sample_ids]
                with lock:
                    claimed[task].extend(meta.sample_ids)

        return consume

    run_threads(
        *[_producer(client, pid, p, per_producer, seed=p) for p in range(producers)],
        *[consumer(task) for task in ("train", "train", "train", "ref", "ref")],
    )
    expected = {f"p{p}-{i}" for p in range(producers) for i in range(per_producer)}
    for task, ids in claimed.items():
        assert len(ids) == len(set(ids)), f"{task} got a sample twice"
        assert set(ids) == expected, f"{task} lost samples"
    assert client.check_consumption_status(pid, ["train", "ref"]) is True


def test_streaming_consumers_stop_on_deadline_after_producers_finish(client, pid):
    producers, per_producer, batch = 2, 24, 4  # 48 samples: a multiple of the batch size
    client.register_partition(pid, ["x"], num_samples=None, consumer_tasks=["train"])
    done = threading.Event()
    claimed: list[str] = []
    lock = threading.Lock()
    produce = [_producer(client, pid, p, per_producer, seed=10 + p) for p in range(producers)]

    def producers_then_done():
        run_threads(*produce)
        done.set()

    def consume():
        while True:
            try:
                meta = client.claim_meta(pid, "train", ["x"], batch, timeout_s=0.2)
            except DataPlaneTimeout:
                if done.is_set():  # no producer left: fewer than `batch` remain, i.e. none
                    return
                continue
            assert meta.size == batch
            with lock:
                claimed.extend(meta.sample_ids)

    run_threads(producers_then_done, consume, consume, consume)
    assert sorted(claimed) == sorted(f"p{p}-{i}" for p in range(producers) for i in range(per_producer))


def test_concurrent_tag_writers_on_one_key(client, pid):
    writers, updates = 4, 60
    client.put_samples(["k"], pid, {"x": torch.zeros(1)})

    def writer(w):
        def write():
            for i in range(updates):
                client.put_samples(["k"], pid, None, tags=[{f"w{w}": i, f"w{w}-{i}": w}])

        return write

    run_threads(*[writer(w) for w in range(writers)])
    tags = client.list_keys(pid)[pid]["k"]
    for name, value in tags.items():  # everywhere: nothing but names and values the writers wrote
        match = re.fullmatch(r"w(\d+)(?:-(\d+))?", name)
        assert match is not None, name
        if match.group(2) is None:
            assert value in range(updates)
        else:
            assert value == int(match.group(1))
    if client.get_capabilities().supports_atomic_batch_put:  # memory: the merge is atomic, nothing lost
        assert len(tags) == writers * (updates + 1)
        assert all(tags[f"w{w}"] == updates - 1 for w in range(writers))
    assert client.get_samples(["k"], pid, ["x"])["x"].tolist() == [0.0]


def test_put_racing_clear_never_tears_a_row(client, pid):
    keys = [f"k{i}" for i in range(8)]
    width = 16
    atomic = client.get_capabilities().supports_atomic_batch_put
    reads = Counter()
    stop = threading.Event()

    def writer(w):
        def write():
            rng = random.Random(w)
            for i in itertools.count():
                if stop.is_set():
                    return
                value = float(w * 1_000_000 + i)
                client.put_samples(
                    rng.sample(keys, 4),
                    pid,
                    {"a": torch.full((4, width), value), "b": torch.full((4,), value)},
                )

        return write

    def clearer():
        rng = random.Random(99)
        while not stop.is_set():
            client.clear_samples(rng.sample(keys, 3), pid)

    def reader(r):
        def read():
            rng = random.Random(r)
            while not stop.is_set():
                try:
                    td = client.get_samples(rng.sample(keys, 3), pid, ["a", "b"])
                except DataPlaneKeyError:
                    reads["missing"] += 1
                    continue
                reads["whole"] += 1
                a, b = td["a"], td["b"]
                assert a.shape == (3, width) and b.shape == (3,)
                assert torch.equal(a, a[:, :1].expand(-1, width)), "a row of 'a' mixes two puts"
                if atomic:
                    assert torch.equal(a[:, 0], b), "a row's fields come from different puts"

        return read

    def referee():
        # Run until both outcomes were seen often (the race really happened), within a deadline.
        deadline = time.monotonic() + DEADLINE_S / 4
        while min(reads["missing"], reads["whole"]) < 50 and time.monotonic() < deadline:
            time.sleep(0.005)
        stop.set()

    client.put_samples(keys, pid, {"a": torch.zeros(8, width), "b": torch.zeros(8)})
    run_threads(writer(1), writer(2), clearer, reader(1), reader(2), referee)
    assert reads["missing"] > 0 and reads["whole"] > 0, reads
    client.put_samples(keys, pid, {"a": torch.ones(8, width), "b": torch.ones(8)})
    td = client.get_samples(keys, pid, ["a", "b"])
    assert torch.equal(td["a"], torch.ones(8, width)) and torch.equal(td["b"], torch.ones(8))


def _stop_being_listed(client, pid, keys, within_s=5.0):
    """Whether some of ``keys`` is (or within ``within_s`` becomes) unlisted: the group was evicted.

    TransferQueue's clear is not atomic: a read can see a key's data gone while the key is still
    listed, for the moments until the clear reaches the controller's key index.
    """
    deadline = time.monotonic() + within_s
    while set(keys) <= set(client.list_sample_ids(pid)):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def test_groups_from_many_producers_are_read_whole_or_not_at_all(client, pid):
    producers, groups_each, size = 3, 12, 4
    version = {"current": 0}
    finished = threading.Event()
    stats = Counter()

    def producer(p):
        def produce():
            for g in range(groups_each):
                v = version["current"]
                keys = [f"p{p}-g{g}-{i}" for i in range(size)]
                write_group(
                    client,
                    pid,
                    keys,
                    {"v": torch.full((size, 2), float(v))},
                    group_id=f"p{p}-g{g}",
                    weight_version=v,
                )
                if p == 0 and g % 3 == 2:
                    version["current"] += 1  # the trainer moved on

        return produce

    def buffer():
        while not finished.is_set() or stats["rounds"] == 0:
            stats["rounds"] += 1
            fresh, _ = select_groups(client, pid, current_version=version["current"], max_staleness=1)
            for group in fresh:
                try:
                    rows = client.get_samples(group.keys, pid, ["v"])["v"]
                except DataPlaneKeyError:  # evicted between selection and read: gone, never partial
                    assert _stop_being_listed(client, pid, group.keys), group
                    stats["evicted"] += 1
                    continue
                assert rows.tolist() == [[float(group.weight_version)] * 2] * size
                stats["read"] += 1

    def evictor():
        while not finished.is_set():
            evict_stale(client, pid, current_version=version["current"], max_staleness=1)

    def producers_then_finish():
        run_threads(*[producer(p) for p in range(producers)])
        finished.set()

    run_threads(producers_then_finish, buffer, evictor)
    assert stats["read"] > 0
    evict_stale(client, pid, current_version=version["current"], max_staleness=1)
    fresh, stale = select_groups(client, pid, current_version=version["current"], max_staleness=1)
    assert stale == [] and fresh == client.list_metadata(pid)  # nothing partial, pending or stale is left
    assert all(len(g.keys) == size for g in fresh)
    assert sorted(keys_of(fresh)) == client.list_sample_ids(pid)


def test_memory_ping_honours_its_deadline_when_the_store_is_busy():
    from kvplane.adapters.memory import MemoryDataPlaneClient

    client = MemoryDataPlaneClient()
    client.ping(timeout_s=0)
    with client._changed:  # the store's lock, held as a long operation would hold it
        with pytest.raises(DataPlaneTimeout, match="not free within 0.05s"):
            client.ping(timeout_s=0.05)
    with pytest.raises(DataPlaneBadRequest, match="timeout_s must not be negative"):
        client.ping(timeout_s=-1)
    client.close()
    with pytest.raises(DataPlaneUnavailable):
        client.ping(timeout_s=1)


def test_memory_claim_deadline_includes_the_wait_for_the_stores_lock(pid):
    from kvplane.adapters.memory import MemoryDataPlaneClient

    client = MemoryDataPlaneClient()
    client.put_samples(["a"], pid, {"x": torch.ones(1)})  # ready: only the lock stands in the way
    outcome: list[BaseException | object] = []

    def claim() -> None:
        try:
            outcome.append(client.claim_meta(pid, "t", ["x"], 1, timeout_s=0.05))
        except BaseException as exc:  # noqa: BLE001 - inspected below
            outcome.append(exc)

    with client._changed:  # the store's lock, held as a long listing used to hold it
        claimer = threading.Thread(target=claim)
        claimer.start()
        claimer.join(timeout=30)  # released only after the claim gave up (or after 30 s if it blocks)
        still_waiting = claimer.is_alive()
    claimer.join(timeout=30)
    assert not still_waiting, "the claim waited for the lock past its deadline"
    assert len(outcome) == 1 and isinstance(outcome[0], DataPlaneTimeout), outcome
    assert "lock" in str(outcome[0])
    assert client.claim_meta(pid, "t", ["x"], 1, timeout_s=5).sample_ids == ["a"]  # nothing was consumed
    client.close()


def test_memory_listings_copy_tags_after_releasing_the_lock(pid, monkeypatch):
    import kvplane.adapters.memory as memory

    client = memory.MemoryDataPlaneClient()
    client.put_samples(["a", "b"], pid, None, tags=[{"n": [1]}, {"n": [2]}])
    lock_free_while_copying: list[bool] = []
    real_copy = memory.copy_tags

    def watching_copy(tag):
        free = client._changed.acquire(blocking=False)
        if free:
            client._changed.release()
        lock_free_while_copying.append(free)
        return real_copy(tag)

    monkeypatch.setattr(memory, "copy_tags", watching_copy)
    assert client.list_keys(pid) == {pid: {"a": {"n": [1]}, "b": {"n": [2]}}}
    assert lock_free_while_copying == [True, True]
    client.close()
