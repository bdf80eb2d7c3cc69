"""Group summaries on TransferQueue without compare-and-swap: per-writer change logs, read incrementally.

TransferQueue merges tags by read-modify-write, so a shared counter would lose concurrent updates.
Instead every kvplane client is a *writer* that owns its records and never touches another's:

- its **head** ``writer/<client>`` in the partition's control partition (:mod:`._control`):
  ``{"seq": s, "open": [...]}``, the number of its last change entry and the entries it has begun
  but not finished;
- its **entries** ``<client>/<seq>`` in the partition's log partition (``log_partition``):
  ``{"keys": [...]}``, the keys one put or clear is about to change.

A write :meth:`ChangeLog.begin`\\ s (entry and head, one request, before anything changes) and
:meth:`ChangeLog.done`\\ s (head, after the last change, also when the write failed). A reader
(:class:`GroupCache`) keeps its own copy of every key's tags and a
:class:`~kvplane._groupindex.GroupIndex`; each refresh reads the heads (W small records), the entries
it has not seen and the current tags of their keys, so it costs O(keys changed), not O(keys stored).

Why the summaries equal a full rescan once writers stop (docs/internals.md has the long form): an
entry is written before its change, so every change already made when a reader reads the heads has
an entry at or below its writer's head. The reader re-reads the keys of every entry it sees for the
first time, and of every entry that was open, on each refresh until it sees it closed, and once
more then; ``done`` is written after the change, so that last read sees it. A writer that crashes
mid-write leaves its entry open forever: readers re-read those few keys on every refresh, so the
crash costs time, never correctness. A reader that fell behind a writer's pruned entries, a writer
that vanished or whose head went backwards (a checkpoint was loaded), or a new epoch
(``clear_samples(None, p)`` wipes the logs and writes a new ``changes-epoch``) makes the reader
rescan the partition once (``kv_list``, O(keys)).

Examples:
    >>> from kvplane.adapters.transfer_queue._changes import log_partition
    >>> log_partition("rollouts")
    '__kvplane__/backend/__kvplane__/backend/rollouts'
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from transfer_queue import BatchMeta, TransferQueueClient

from kvplane._groupindex import GroupIndex

from ._calls import set_tags_many
from ._control import control_partition

__all__ = ["ChangeLog", "GroupCache", "log_partition", "new_epoch"]

logger = logging.getLogger(__name__)

_HEAD_PREFIX = "writer/"
_EPOCH_KEY = "changes-epoch"
#: A writer keeps this many entries; a reader further behind rescans.
_RETAIN = 1024
_PRUNE_EVERY = 256
_LOOKUP_ATTEMPTS = 3


def log_partition(partition_id: str) -> str:
    """The partition holding ``partition_id``'s change entries (no user partition can have this id:
    it starts with the reserved control prefix, and it is no user partition's control partition)."""
    return control_partition(control_partition(partition_id))


def _entry(writer: str, seq: int) -> str:
    return f"{writer}/{seq}"


async def new_epoch(client: TransferQueueClient, partition_id: str) -> None:
    """After a wipe: mark the partition's change logs as a new epoch (readers then rescan once)."""
    ctrl = control_partition(partition_id)
    meta = await client.async_kv_retrieve_meta([_EPOCH_KEY], ctrl, create=True)
    await set_tags_many(client, {ctrl: {meta.global_indexes[0]: {"epoch": uuid.uuid4().hex}}})


async def wipe_log(client: TransferQueueClient, partition_id: str) -> None:
    """Drop every change entry of the partition (they carry tags only: a controller clear suffices)."""
    await client._clear_partition_in_controller(log_partition(partition_id))


@dataclass
class _Writer:
    seq: int = 0
    open: set[int] = field(default_factory=set)


class ChangeLog:
    """The writer side: one per kvplane client (its id names the records it owns)."""

    def __init__(self, client: TransferQueueClient, client_id: str) -> None:
        self._client = client
        self._id = client_id
        self._writers: dict[str, _Writer] = {}
        self._lock = asyncio.Lock()  # head writes go one at a time, each with the latest state
        self._closing: set[asyncio.Task[None]] = set()  # done() calls in flight (kept referenced)

    def _head(self, state: _Writer) -> dict[str, Any]:
        return {"seq": state.seq, "open": sorted(state.open)}

    async def begin(self, partition_id: str, keys: Sequence[str]) -> tuple[int, int]:
        """Announce that ``keys`` are about to change; returns ``(seq, head index)`` for :meth:`done`."""
        ctrl, log = control_partition(partition_id), log_partition(partition_id)
        async with self._lock:
            state = self._writers.setdefault(partition_id, _Writer())
            state.seq += 1
            seq = state.seq
            state.open.add(seq)
            head, entry = await asyncio.gather(
                self._client.async_kv_retrieve_meta([_HEAD_PREFIX + self._id], ctrl, create=True),
                self._client.async_kv_retrieve_meta([_entry(self._id, seq)], log, create=True),
            )
            head_index = head.global_indexes[0]
            await set_tags_many(
                self._client,
                {
                    log: {entry.global_indexes[0]: {"keys": list(keys)}},
                    ctrl: {head_index: self._head(state)},
                },
            )
        return seq, head_index

    async def done(self, partition_id: str, seq: int, head_index: int) -> None:
        """Close entry ``seq`` (call after its last change, also when the write failed).

        A failure is logged, not raised: the write's own outcome is what its caller needs to see.
        """
        async with self._lock:
            state = self._writers.setdefault(partition_id, _Writer())
            state.open.discard(seq)
            head = {control_partition(partition_id): {head_index: self._head(state)}}
            try:
                await set_tags_many(self._client, head)
            except Exception:  # the entry stays open: readers re-read its keys (slower, still right)
                logger.warning("could not close change entry %d of %r", seq, partition_id, exc_info=True)
                return
            prune = seq % _PRUNE_EVERY == 0 and seq > _RETAIN
            oldest_open = min(state.open, default=seq + 1)
        if prune:
            await self._prune(partition_id, min(seq - _RETAIN, oldest_open - 1))

    @asynccontextmanager
    async def closing(
        self, partition_id: str, seq: int, head_index: int
    ) -> AsyncIterator[dict[str, dict[int, dict[str, Any]]]]:
        """Close entry ``seq`` in the request the caller sends inside: yields the head record to add
        to it (``{control partition: {index: head}}``). For a write whose last change is that
        request; if it fails, call :meth:`done` afterwards (it closes the entry on its own)."""
        async with self._lock:
            state = self._writers.setdefault(partition_id, _Writer())
            state.open.discard(seq)
            yield {control_partition(partition_id): {head_index: self._head(state)}}

    def done_later(self, partition_id: str, seq: int, head_index: int) -> None:
        """:meth:`done` without waiting for it (call on the client's loop, after the last change):
        the write returns a request sooner; until the head lands, readers re-read the keys."""
        task = asyncio.get_running_loop().create_task(self.done(partition_id, seq, head_index))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def close_when_begun(self, partition_id: str, begun: asyncio.Future[tuple[int, int]]) -> None:
        """Close the entry ``begun`` announces once it is begun (the write did not happen after all)."""

        def close(future: asyncio.Future[tuple[int, int]]) -> None:
            if not future.cancelled() and future.exception() is None:
                self.done_later(partition_id, *future.result())

        begun.add_done_callback(close)

    async def touch(self, partition_id: str, keys: Sequence[str]) -> None:
        """Make readers re-read ``keys`` (an entry begun and done at once); failures are logged."""
        try:
            seq, head_index = await self.begin(partition_id, keys)
        except Exception:
            logger.warning("could not announce keys of %r again", partition_id, exc_info=True)
            return
        await self.done(partition_id, seq, head_index)

    async def _prune(self, partition_id: str, upto: int) -> None:
        names = [_entry(self._id, s) for s in range(max(1, upto - 2 * _PRUNE_EVERY), upto + 1)]
        try:
            meta = await self._client.async_kv_retrieve_meta(names, log_partition(partition_id), create=False)
            if meta.size:
                await self._client._clear_meta_in_controller(meta)
        except Exception:  # pruning is housekeeping: a failure only keeps old entries a while longer
            logger.debug("could not prune change entries of %r", partition_id, exc_info=True)

    def forget(self, partition_id: str) -> None:
        """The partition was wiped by this client: its numbering starts afresh."""
        self._writers.pop(partition_id, None)


class GroupCache:
    """The reader side for one partition: every key's tags and their groups, refreshed incrementally.

    Call :meth:`refresh` from the client's event loop; calls for one partition must not overlap
    (the adapter holds a lock per partition).
    """

    def __init__(self, client: TransferQueueClient, partition_id: str) -> None:
        self._client = client
        self._pid = partition_id
        self.tags: dict[str, dict[str, Any]] = {}
        self.index = GroupIndex(self.tags.get)
        self._loaded = False
        self._epoch: Any = None
        self._seen: dict[str, int] = {}  # writer -> last entry read
        self._pending: dict[tuple[str, int], list[str]] = {}  # open entries -> their keys
        self.rescans = 0

    async def refresh(self) -> GroupIndex:
        """Bring the summaries up to date (see the module docstring) and return them."""
        ctrl = control_partition(self._pid)
        records = (await self._client.async_kv_list(ctrl)).get(ctrl, {})
        epoch = (records.get(_EPOCH_KEY) or {}).get("epoch")
        heads = {
            name[len(_HEAD_PREFIX) :]: tags
            for name, tags in records.items()
            if name.startswith(_HEAD_PREFIX) and tags
        }
        regressed = any(int(heads[w]["seq"]) < s for w, s in self._seen.items() if w in heads)
        if not self._loaded or epoch != self._epoch or not set(self._seen) <= set(heads) or regressed:
            await self._rescan(heads, epoch)
            return self.index
        wanted = [
            (writer, s)
            for writer, head in heads.items()
            for s in range(self._seen.get(writer, 0) + 1, int(head["seq"]) + 1)
        ]
        entries = await self._entries(wanted)
        if entries is None:  # a writer pruned entries this reader never read
            await self._rescan(heads, epoch)
            return self.index
        keys = {k for ks in entries.values() for k in ks} | {k for ks in self._pending.values() for k in ks}
        await self._reload(sorted(keys))
        entries.update(self._pending)
        self._pending = {
            (w, s): ks for (w, s), ks in entries.items() if s in set(heads.get(w, {}).get("open", ()))
        }
        self._seen = {writer: int(head["seq"]) for writer, head in heads.items()}
        return self.index

    async def _rescan(self, heads: Mapping[str, Mapping[str, Any]], epoch: Any) -> None:
        self.rescans += 1
        open_entries = [(w, int(s)) for w, head in heads.items() for s in head.get("open", ())]
        listing = (await self._client.async_kv_list(self._pid)).get(self._pid, {})
        self.tags.clear()
        self.tags.update({key: dict(tags) for key, tags in listing.items()})
        self.index = GroupIndex(self.tags.get)
        self.index.apply((key, None, tags) for key, tags in self.tags.items())
        self._pending = await self._entries(open_entries) or {}
        self._seen = {writer: int(head["seq"]) for writer, head in heads.items()}
        self._epoch = epoch
        self._loaded = True
        if self._pending:  # changes still in flight at the listing: read their keys once more
            await self._reload(sorted({k for ks in self._pending.values() for k in ks}))

    async def _entries(self, wanted: list[tuple[str, int]]) -> dict[tuple[str, int], list[str]] | None:
        """The keys of each wanted entry; ``None`` when one of them no longer exists."""
        if not wanted:
            return {}
        names = [_entry(w, s) for w, s in wanted]
        meta = await self._client.async_kv_retrieve_meta(names, log_partition(self._pid), create=False)
        if meta.size != len(names):
            return None
        return {ws: list(tags.get("keys", ())) for ws, tags in zip(wanted, meta.custom_meta, strict=True)}

    async def _reload(self, keys: list[str]) -> None:
        """Read the current tags of ``keys`` and apply the differences."""
        if not keys:
            return
        current = await self._lookup(keys)
        changes = []
        for key in keys:
            old, new = self.tags.get(key), current.get(key)
            if old == new:
                continue
            if new is None:
                del self.tags[key]
            else:
                self.tags[key] = new
            changes.append((key, old, new))
        self.index.apply(changes)

    async def _lookup(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """``{key: tags}`` for the keys that exist now."""
        for _ in range(_LOOKUP_ATTEMPTS):
            meta: BatchMeta = await self._client.async_kv_retrieve_meta(keys, self._pid, create=False)
            if meta.size == len(keys):
                return {k: dict(t) for k, t in zip(keys, meta.custom_meta, strict=True)}
            if meta.size == 0:
                return {}
            names = await self._client.async_kv_retrieve_keys(list(meta.global_indexes), self._pid)
            found = dict(zip(names, meta.custom_meta, strict=True))
            if all(name in found for name in names) and set(found) <= set(keys):
                return {k: dict(t) for k, t in found.items()}
            # a slot changed hands between the two requests: look again
        raise RuntimeError(f"the keys of partition {self._pid!r} kept changing while being read")
