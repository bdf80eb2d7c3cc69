"""Group summaries on TransferQueue without compare-and-swap: per-writer change logs, read incrementally.

Every kvplane client is a *writer* that owns its records and never touches another's: a **head**
``writer/<client>`` in the partition's control partition (``{"writer", "gen", "seq", "open"}``) and
a ring of **entry** slots ``<client>/<i>`` in the partition's log partition (:func:`log_partition`,
kvplane's own, so entries never take a user partition's slots), entry ``seq`` in slot
``(seq - 1) % RING`` as ``{"gen", "seq", "keys"}``. A write :meth:`ChangeLog.begin`\\ s (entry and
head, one request, before anything changes) and :meth:`ChangeLog.done`\\ s (head, after its last
change). A reader (:class:`GroupCache`) reads the heads, the entries it has not seen and the current
tags of their keys: O(keys changed). A clear of the whole partition drops head, ring and all; a writer
that finds its head gone starts a new random generation, and a reader that finds a generation it knew
gone or changed, or an entry overwritten, rescans once (O(keys)). No record survives a clear.
Why this equals a full rescan under concurrent writers, evictors and crashes: docs/internals.md.

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
from typing import Any, NamedTuple

from transfer_queue import BatchMeta, TransferQueueClient

from kvplane._groupindex import GroupIndex

from ._calls import set_tags_many
from ._control import control_partition

__all__ = ["RING", "ChangeLog", "GroupCache", "Ticket", "log_partition", "wipe_log"]

logger = logging.getLogger(__name__)

_HEAD_PREFIX = "writer/"
#: Entry slots per writer and partition: a reader further behind a writer than this rescans.
RING = 1024
#: Slots created at a time (at a generation's first write, then as its numbering reaches them).
_CHUNK = 128
_LOOKUP_ATTEMPTS = 3


def log_partition(partition_id: str) -> str:
    """The partition holding ``partition_id``'s change entries (no user partition can have this id:
    it starts with the reserved control prefix, and it is no user partition's control partition)."""
    return control_partition(control_partition(partition_id))


def _slot_name(writer: str, slot: int) -> str:
    return f"{writer}/{slot}"


def _slot(seq: int) -> int:
    return (seq - 1) % RING


async def wipe_log(client: TransferQueueClient, partition_id: str) -> None:
    """Drop every change entry of the partition (they carry tags only: a controller clear suffices)."""
    await client._clear_partition_in_controller(log_partition(partition_id))


class Ticket(NamedTuple):
    """What :meth:`ChangeLog.begin` hands the write for closing its entry."""

    seq: int
    head_index: int
    gen: str
    keys: tuple[str, ...]


@dataclass
class _Writer:
    gen: str = field(default_factory=lambda: uuid.uuid4().hex)
    seq: int = 0
    open: set[int] = field(default_factory=set)
    ring: list[int] = field(default_factory=list)  # global indexes of the slots created so far
    # Entries whose change may have landed after a wipe this writer has not seen yet: {seq: keys}.
    # Dropped once a later begin finds the head intact after they closed.
    unverified: dict[int, tuple[str, ...]] = field(default_factory=dict)
    closed: set[int] = field(default_factory=set)


class ChangeLog:
    """The writer side: one per kvplane client (its id names the records it owns)."""

    def __init__(self, client: TransferQueueClient, client_id: str) -> None:
        self._client = client
        self._id = client_id
        self._writers: dict[str, _Writer] = {}
        self._lock = asyncio.Lock()  # head writes go one at a time, each with the latest state
        self._closing: dict[str, set[asyncio.Task[None]]] = {}  # done() calls in flight, per partition

    def _head(self, state: _Writer) -> dict[str, Any]:
        return {"writer": self._id, "gen": state.gen, "seq": state.seq, "open": sorted(state.open)}

    async def begin(self, partition_id: str, keys: Sequence[str]) -> Ticket:
        """Announce that ``keys`` are about to change; returns the :class:`Ticket` for :meth:`done`."""
        ctrl, log = control_partition(partition_id), log_partition(partition_id)
        async with self._lock:
            meta = await self._client.async_kv_retrieve_meta([_HEAD_PREFIX + self._id], ctrl, create=True)
            head_index, found = meta.global_indexes[0], meta.custom_meta[0] or {}
            state = self._writers.get(partition_id)
            announced = tuple(keys)
            if state is None or found.get("gen") != state.gen or found.get("writer") != self._id:
                # First write, or the head was wiped (a clear of the whole partition): a new generation.
                # Changes this writer made around the wipe are announced again in its first entry.
                carried = {k for ks in (state.unverified.values() if state else ()) for k in ks}
                state = self._writers[partition_id] = _Writer()
                announced = tuple(dict.fromkeys([*keys, *sorted(carried)]))
            else:  # the head survived every change closed before now
                for seq in state.closed:
                    state.unverified.pop(seq, None)
                state.closed.clear()
            state.seq += 1
            seq = state.seq
            if _slot(seq) >= len(state.ring):
                names = [
                    _slot_name(self._id, i)
                    for i in range(len(state.ring), min(RING, len(state.ring) + _CHUNK))
                ]
                created = await self._client.async_kv_retrieve_meta(names, log, create=True)
                state.ring.extend(created.global_indexes)
            state.open.add(seq)
            state.unverified[seq] = announced
            entry = {"gen": state.gen, "seq": seq, "keys": list(announced)}
            await set_tags_many(
                self._client, {log: {state.ring[_slot(seq)]: entry}, ctrl: {head_index: self._head(state)}}
            )
            return Ticket(seq, head_index, state.gen, tuple(keys))

    def _close(self, partition_id: str, ticket: Ticket) -> _Writer | None:
        """Mark the entry closed; ``None`` when its generation is gone (the head was wiped since)."""
        state = self._writers.get(partition_id)
        if state is None or state.gen != ticket.gen:
            return None
        state.open.discard(ticket.seq)
        state.closed.add(ticket.seq)
        return state

    async def done(self, partition_id: str, ticket: Ticket) -> None:
        """Close the ticket's entry (call after its last change, also when the write failed).

        A failure is logged, not raised: the write's own outcome is what its caller needs to see.
        """
        async with self._lock:
            state = self._close(partition_id, ticket)
            if state is not None:
                head = {control_partition(partition_id): {ticket.head_index: self._head(state)}}
                try:
                    await set_tags_many(self._client, head)
                except Exception:  # the entry stays open: readers re-read its keys (slower, still right)
                    logger.warning(
                        "could not close change entry %d of %r", ticket.seq, partition_id, exc_info=True
                    )
                return
        await self._announce_survivors(partition_id, ticket.keys)

    async def _announce_survivors(self, partition_id: str, keys: Sequence[str]) -> None:
        """A new generation began while this change was in flight: announce the keys that exist now."""
        try:
            meta = await self._client.async_kv_retrieve_meta(list(keys), partition_id, create=False)
            if meta.size:
                await self.touch(partition_id, keys)
        except Exception:
            logger.warning("could not announce keys of %r again", partition_id, exc_info=True)

    @asynccontextmanager
    async def closing(
        self, partition_id: str, ticket: Ticket
    ) -> AsyncIterator[dict[str, dict[int, dict[str, Any]]]]:
        """Close the ticket's entry in the request the caller sends inside: yields the head record to
        add to it (``{control partition: {index: head}}``). For a write whose last change is that
        request; if it fails, call :meth:`touch` afterwards."""
        async with self._lock:
            state = self._close(partition_id, ticket)
            yield (
                {}
                if state is None
                else {control_partition(partition_id): {ticket.head_index: self._head(state)}}
            )

    def done_later(self, partition_id: str, ticket: Ticket) -> None:
        """:meth:`done` without waiting for it (call on the client's loop, after the last change):
        the write returns a request sooner; until the head lands, readers re-read the keys."""
        task = asyncio.get_running_loop().create_task(self.done(partition_id, ticket))
        tasks = self._closing.setdefault(partition_id, set())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def close_when_begun(self, partition_id: str, begun: asyncio.Future[Ticket]) -> None:
        """Close the entry ``begun`` announces once it is begun (the write did not happen after all)."""

        def close(future: asyncio.Future[Ticket]) -> None:
            if not future.cancelled() and future.exception() is None:
                self.done_later(partition_id, future.result())

        begun.add_done_callback(close)

    async def touch(self, partition_id: str, keys: Sequence[str]) -> None:
        """Make readers re-read ``keys`` (an entry begun and done at once); failures are logged."""
        try:
            ticket = await self.begin(partition_id, keys)
        except Exception:
            logger.warning("could not announce keys of %r again", partition_id, exc_info=True)
            return
        await self.done(partition_id, ticket)

    async def settle(self, partition_id: str) -> None:
        """Wait for this client's :meth:`done_later` calls on the partition (before wiping it)."""
        tasks = list(self._closing.get(partition_id, ()))
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def forget(self, partition_id: str) -> None:
        """The partition was wiped by this client: its next write starts a new generation."""
        self._writers.pop(partition_id, None)
        self._closing.pop(partition_id, None)


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
        self._gens: dict[str, str] = {}  # writer -> the generation read
        self._seen: dict[str, int] = {}  # writer -> last entry read
        self._pending: dict[tuple[str, int], list[str]] = {}  # open entries -> their keys
        self.rescans = 0

    async def refresh(self) -> GroupIndex:
        """Bring the summaries up to date (see the module docstring) and return them."""
        ctrl = control_partition(self._pid)
        records = (await self._client.async_kv_list(ctrl)).get(ctrl, {})
        heads: dict[str, Mapping[str, Any]] = {}
        for name, tags in records.items():
            writer = name[len(_HEAD_PREFIX) :]
            # A head its writer did not write (a stale write after a wipe) counts as gone: a reader
            # that knew the writer rescans once; the writer's next begin starts a new generation.
            if name.startswith(_HEAD_PREFIX) and tags and tags.get("writer") == writer and "gen" in tags:
                heads[writer] = tags
        changed = any(heads.get(w, {}).get("gen") != g for w, g in self._gens.items())
        if not self._loaded or changed:
            await self._rescan(heads)
            return self.index
        wanted = []
        for writer, head in heads.items():
            start = self._seen.get(writer, 0) if self._gens.get(writer) == head["gen"] else 0
            wanted += [(writer, head["gen"], s) for s in range(start + 1, int(head["seq"]) + 1)]
        entries = await self._entries(wanted)
        if entries is None:  # an entry this reader never read was overwritten (or raced a wipe)
            await self._rescan(heads)
            return self.index
        keys = {k for ks in entries.values() for k in ks} | {k for ks in self._pending.values() for k in ks}
        await self._reload(sorted(keys))
        entries.update(self._pending)
        self._remember(heads, entries)
        return self.index

    def _remember(
        self, heads: Mapping[str, Mapping[str, Any]], entries: dict[tuple[str, int], list[str]]
    ) -> None:
        open_now = {w: set(head.get("open", ())) for w, head in heads.items()}
        self._pending = {(w, s): ks for (w, s), ks in entries.items() if s in open_now.get(w, ())}
        self._seen = {writer: int(head["seq"]) for writer, head in heads.items()}
        self._gens = {writer: head["gen"] for writer, head in heads.items()}

    async def _rescan(self, heads: Mapping[str, Mapping[str, Any]]) -> None:
        self.rescans += 1
        open_entries = [(w, head["gen"], int(s)) for w, head in heads.items() for s in head.get("open", ())]
        listing = (await self._client.async_kv_list(self._pid)).get(self._pid, {})
        self.tags.clear()
        self.tags.update({key: dict(tags) for key, tags in listing.items()})
        self.index = GroupIndex(self.tags.get)
        self.index.apply((key, None, tags) for key, tags in self.tags.items())
        pending = await self._entries(open_entries) or {}
        self._remember(heads, pending)
        self._loaded = True
        if self._pending:  # changes still in flight at the listing: read their keys once more
            await self._reload(sorted({k for ks in self._pending.values() for k in ks}))

    async def _entries(self, wanted: list[tuple[str, str, int]]) -> dict[tuple[str, int], list[str]] | None:
        """The keys of each wanted ``(writer, generation, seq)`` entry; ``None`` when one of them
        is no longer in its slot (overwritten by a later lap of the ring, or wiped)."""
        if not wanted:
            return {}
        if any(s <= 0 for _, _, s in wanted) or len({(w, _slot(s)) for w, _, s in wanted}) != len(wanted):
            return None  # more entries to read than a ring holds
        names = [_slot_name(w, _slot(s)) for w, _, s in wanted]
        meta = await self._client.async_kv_retrieve_meta(names, log_partition(self._pid), create=False)
        if meta.size != len(names):
            return None
        out = {}
        for (writer, gen, seq), tags in zip(wanted, meta.custom_meta, strict=True):
            if tags.get("gen") != gen or tags.get("seq") != seq:
                return None
            out[(writer, seq)] = list(tags.get("keys", ()))
        return out

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
