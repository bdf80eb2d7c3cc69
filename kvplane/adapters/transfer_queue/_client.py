"""``TransferQueueDataPlaneClient``: the kvplane contract on TransferQueue 0.1.11.

Direct-by-key calls go through TransferQueue's KV path, task-mediated claims through its
controller's per-task cursor (``get_meta`` in polling mode); what the contract needs and
TransferQueue does not keep lives in reserved control partitions (:mod:`._control`). Arguments are
validated once by :class:`~kvplane._gated.GatedDataPlaneClient` before they get here. Where
TransferQueue is silent, kvplane is strict (``docs/transferqueue.md``): a missing partition, key or
field is a ``DataPlaneKeyError`` naming it, and a write that fails leaves no key behind. Puts are
not atomic: a reader that discovers keys by listing retries on ``DataPlaneKeyError``.

Design: docs/internals.md#kvplaneadapterstransfer_queue_clientpy--the-transferqueue-client

Examples:
    A config is checked before Ray or TransferQueue is touched (``tests/e2e`` runs the real thing):

    >>> from kvplane.adapters.transfer_queue import TransferQueueDataPlaneClient
    >>> TransferQueueDataPlaneClient({"impl": "transfer_queue", "backend": "simple", "num_storage_units": 0,
    ...                               "storage_capacity": None, "claim_meta_poll_interval_s": 0.01})
    Traceback (most recent call last):
    ...
    kvplane._errors.DataPlaneBadRequest: data plane config: 'num_storage_units' must be an integer >= 1, got 0
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tensordict import TensorDict
from transfer_queue import BatchMeta, StorageKeyNotFoundError

from kvplane._checkpoint import read_checkpoint, write_checkpoint
from kvplane._config import DataPlaneConfig
from kvplane._errors import (
    DataPlaneBadRequest,
    DataPlaneClearError,
    DataPlaneKeyError,
    DataPlaneReadError,
    DataPlaneUnavailable,
    DataPlaneWriteError,
)
from kvplane._errors import StorageKeyNotFoundError as RacedClearError
from kvplane._gated import GatedDataPlaneClient, claim_timeout
from kvplane._meta import DataPlaneCapabilities, DataPlaneGroupMeta, KVBatchMeta
from kvplane._validation import Declaration

from ._bulk import clear_meta, clear_partition, controller_actor, scan_page
from ._calls import LoopRunner, run_bounded, set_tags
from ._changes import ChangeLog, GroupCache, log_partition, wipe_log
from ._control import ControlPlane, ControlState, FieldSpec, Registration, control_partition, user_partition
from ._deployment import open_deployment
from ._durable import restore, take_snapshot
from ._kvstore import get_rows, put_rows
from ._wire import prepare_batch, read_dense, shape_column

__all__ = ["TransferQueueDataPlaneClient"]

logger = logging.getLogger(__name__)

#: Looks a read takes when writes or clears keep landing between its checks.
_READ_ATTEMPTS = 3


async def _put_simple(manager: Any, data: TensorDict, meta: BatchMeta) -> None:
    await manager.put_data(data, meta)


async def _get_own(manager: Any, meta: BatchMeta) -> TensorDict:
    return await manager.get_data(meta)


class _Raced(Exception):
    """A read's checks saw a concurrent write land between two requests (retried once)."""


def _listed(keys: Sequence[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:5])
    return shown + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


class TransferQueueDataPlaneClient(GatedDataPlaneClient):
    """The contract on a TransferQueue deployment (see the module docstring).

    Args:
        config: A config with ``impl: transfer_queue`` (or anything ``DataPlaneConfig.load`` takes).
        bootstrap: Start the deployment (driver) when True; attach to the running one (worker) when
            False. Only the bootstrapping client tears the deployment down on ``close()``.

    Raises:
        DataPlaneUnavailable: Ray, the deployment, enough free Ray CPUs or MooncakeStore is missing.
        DataPlaneTimeout: The bootstrap or attach took longer than ``bootstrap_timeout_s``.
        DataPlaneBadRequest: The config is invalid or does not match the running deployment.
    """

    def __init__(self, config: DataPlaneConfig | Mapping[str, Any] | str, *, bootstrap: bool = True) -> None:
        cfg = DataPlaneConfig.load(config)
        if cfg.impl != "transfer_queue":
            raise DataPlaneBadRequest(
                f"data plane config: 'impl' must be 'transfer_queue' here, got {cfg.impl!r}"
            )
        super().__init__(seq_len_tag=cfg.seq_len_tag)
        self._cfg = cfg
        self._deployment = open_deployment(cfg, bootstrap=bootstrap)
        self._tq = self._deployment.client
        self._runner = LoopRunner(self._deployment.loop, cfg.request_timeout_s, health=self._deployment.gone)
        self._id = uuid.uuid4().hex[:12]
        self._control = ControlPlane(self._tq, self._id)
        self._changes = ChangeLog(self._tq, self._id)  # group summaries: _changes.py
        self._caches: dict[str, tuple[GroupCache, asyncio.Lock]] = {}
        self._controller: Any = None  # the controller actor's handle, for index-level bulk calls
        self._kv_storage = self._deployment.storage_backend == "MooncakeStore"
        # How a read fetches: SimpleStorage stacked dense, MooncakeStore minus zero-byte rows, or
        # the storage manager's own get_data (columnar).
        self._read = get_rows if self._kv_storage else read_dense
        if self._deployment.storage_backend not in ("MooncakeStore", "SimpleStorage"):
            self._read = _get_own
        # SimpleStorage and MooncakeStore address rows by global index, which a clear frees and a put
        # may take over mid-read; columnar reads the immutable objects the meta named (a snapshot).
        self._reads_by_slot = self._read is not _get_own
        self._claimed: dict[tuple[str, str, str], int] = {}  # this client's own claim totals per epoch
        self._count_writes = asyncio.Lock()
        self._lock = threading.Lock()
        self._closed = False  # guarded by _lock

    # ------------------------------------------------------------------ plumbing
    async def _fields_per_key(
        self, pid: str, fields: Sequence[str], indexes: Sequence[int]
    ) -> dict[str, list[bool]]:
        """For each field, whether each sample (by global index) has it produced (one request a field)."""
        answers = await asyncio.gather(*(self._tq.async_get_production_status([f], pid) for f in fields))
        position = {gi: i for i, gi in enumerate(indexes)}
        out = {}
        for name, (partition_indexes, status) in zip(fields, answers, strict=True):
            flags = [False] * len(indexes)
            if partition_indexes is not None:
                for gi, produced in zip(partition_indexes.tolist(), status[:, 0].tolist(), strict=True):
                    if produced and gi in position:
                        flags[position[gi]] = True
            out[name] = flags
        return out

    async def _partition_exists(self, pid: str) -> bool:
        partitions, state = await asyncio.gather(
            self._tq.async_get_partition_list(), self._control.state(pid)
        )
        return pid in partitions or state.registration is not None

    # ------------------------------------------------------------------ (A) task-mediated
    def _register_partition(self, pid: str, declaration: Declaration) -> None:
        registration = Registration(*declaration)
        self._runner.run("register_partition", self._register(pid, registration), DataPlaneWriteError)

    async def _register(self, pid: str, registration: Registration) -> None:
        previous = (await self._control.state(pid)).registration
        # A re-registration keeps the epoch, so claims already counted still count.
        epoch = previous.epoch if previous is not None else uuid.uuid4().hex
        await self._control.register(pid, dataclasses.replace(registration, epoch=epoch))

    def _claim_meta(
        self,
        pid: str,
        task_name: str,
        required: list[str],
        batch_size: int,
        dp_rank: int | None,
        blocking: bool,
        timeout_s: float,
    ) -> KVBatchMeta:
        deadline = time.monotonic() + timeout_s
        while True:
            # Each attempt gets the full request deadline: abandoning a fetch the controller already
            # served would lose its samples for this task (TransferQueue has no un-claim).
            meta, registration = self._runner.run(
                "claim_meta",
                self._claim_once(pid, task_name, required, batch_size, dp_rank),
                DataPlaneReadError,
            )
            if meta is not None:
                return meta
            if not blocking:
                return KVBatchMeta(pid, task_name, [], fields=required, tags=[])
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise claim_timeout(
                    pid, task_name, batch_size, timeout_s, exists=None, registration=registration
                )
            time.sleep(min(self._cfg.claim_meta_poll_interval_s, remaining))

    async def _claim_once(
        self, pid: str, task: str, required: list[str], batch_size: int, dp_rank: int | None
    ) -> tuple[KVBatchMeta | None, Registration | None]:
        """One claim attempt: the batch (``None`` when too few samples are ready) and the registration."""
        state = await self._control.state(pid)
        registration = state.registration
        if (
            registration is not None
            and registration.consumer_tasks
            and task not in registration.consumer_tasks
        ):
            raise DataPlaneKeyError(
                f"task {task!r} is not a consumer task of partition {pid!r} "
                f"(registered: {registration.consumer_tasks})"
            )
        counted = registration is not None and registration.num_samples is not None
        want = batch_size
        if counted:
            want = min(batch_size, registration.num_samples - state.claimed.get(task, 0))  # type: ignore[union-attr,operator]
            if want <= 0:
                return KVBatchMeta(pid, task, [], fields=required, tags=[]), registration
        batch = await self._tq.async_get_meta(
            data_fields=required,
            batch_size=want,
            partition_id=pid,
            mode="fetch",
            task_name=task,
            sampling_config={} if dp_rank is None else {"dp_rank": dp_rank},
        )
        if batch.size == 0:
            return None, registration
        lookups: list[Coroutine[Any, Any, Any]] = [
            self._tq.async_kv_retrieve_keys(list(batch.global_indexes), pid)
        ]
        if counted:
            lookups.append(self._count_claim(pid, task, registration.epoch, batch.size))  # type: ignore[union-attr]
        keys, *_ = await asyncio.gather(*lookups)
        tags = [dict(t) for t in batch.custom_meta]
        return self._meta(pid, task, list(keys), list(required), tags), registration

    async def _count_claim(self, pid: str, task: str, epoch: str, n: int) -> None:
        slot = (pid, task, epoch)
        with self._lock:
            self._claimed[slot] = self._claimed.get(slot, 0) + n
        # One count write at a time, each with the latest total, so the stored count never regresses.
        async with self._count_writes:
            with self._lock:
                total = self._claimed[slot]
            await self._control.set_claimed(pid, task, epoch, total)

    def _check_consumption_status(self, pid: str, tasks: list[str]) -> bool:
        return self._runner.run("check_consumption_status", self._consumed(pid, tasks), DataPlaneReadError)

    async def _consumed(self, pid: str, tasks: list[str]) -> bool:
        state, partitions, *statuses = await asyncio.gather(
            self._control.state(pid),
            self._tq.async_get_partition_list(),
            *(self._tq.async_get_consumption_status(task, pid) for task in tasks),
        )
        if pid not in partitions and state.registration is None:
            raise DataPlaneKeyError(f"partition {pid!r} not found")
        expected = state.registration.num_samples if state.registration is not None else None
        for task, (_, consumed) in zip(tasks, statuses, strict=True):
            if consumed is not None and consumed.numel() and not bool((consumed == 1).all()):
                return False
            if expected is not None and state.claimed.get(task, 0) < expected:
                return False
        return True

    # ------------------------------------------------------------------ (B) direct-by-key
    def _put_samples(
        self, pid: str, keys: list[str], batch: TensorDict | None, tag_list: list[dict[str, Any]] | None
    ) -> KVBatchMeta:
        specs = {name: FieldSpec.of(batch.get(name)) for name in batch.keys()} if batch is not None else {}
        wire = prepare_batch(batch) if batch is not None else None
        held, merged = self._runner.run(
            "put_samples", self._put(pid, keys, wire, tag_list, specs), DataPlaneWriteError
        )
        return self._meta(pid, None, keys, held or None, merged)

    async def _put(
        self,
        pid: str,
        keys: list[str],
        wire: TensorDict | None,
        tags: list[dict[str, Any]] | None,
        specs: dict[str, FieldSpec],
    ) -> tuple[list[str], list[dict[str, Any]]]:
        """Store the write; returns every field all ``keys`` now hold and each key's merged tags."""
        # Announced (change log) while the write is checked: nothing below changes a key before it lands.
        begun = asyncio.ensure_future(self._changes.begin(pid, keys))
        known: dict[str, FieldSpec] = {}
        try:
            if specs:
                known = (await self._control.state(pid)).fields
                for name, spec in specs.items():
                    held = known.get(name)
                    if held is not None and held != spec:
                        raise DataPlaneBadRequest(
                            f"field {name!r} of partition {pid!r} holds {held.describe()}; refusing a write "
                            f"of {spec.describe()} (a field keeps one dtype and row rank within a partition)"
                        )
                new = {name: spec for name, spec in specs.items() if name not in known}
                if new:
                    await self._control.add_fields(pid, new)
            ticket = await begun
        except BaseException:
            self._changes.close_when_begun(pid, begun)
            raise
        # Everything is validated and announced: from here on keys exist in TransferQueue.
        closed = False
        try:
            if wire is None:  # a tag-only write: its tag request is its last change and closes the entry
                try:
                    async with self._changes.closing(pid, ticket) as also:
                        result = await self._store(pid, keys, wire, tags, specs, known, also)
                    closed = bool(also)  # else its generation is gone: done() announces what survived
                    return result
                except BaseException:
                    # The failed request may have closed the entry before the undo ran: announce again.
                    await self._changes.touch(pid, keys)
                    raise
            return await self._store(pid, keys, wire, tags, specs, known)
        finally:
            if not closed:
                self._changes.done_later(pid, ticket)

    async def _store(
        self,
        pid: str,
        keys: list[str],
        wire: TensorDict | None,
        tags: list[dict[str, Any]] | None,
        specs: dict[str, FieldSpec],
        known: dict[str, FieldSpec],
        also: dict[str, dict[int, dict[str, Any]]] | None = None,
    ) -> tuple[list[str], list[dict[str, Any]]]:
        meta = await self._tq.async_kv_retrieve_meta(keys, pid, create=True)
        before = [dict(t) for t in meta.custom_meta]
        # TransferQueue's meta names the fields every key already holds; the write adds its own.
        if specs:
            # First-write order: fields known before, then this write's and any a concurrent writer
            # added meanwhile (named once each, whichever listing has them).
            held = [n for n in known if n in meta.field_schema or n in specs]
            held += [n for n in dict.fromkeys([*specs, *meta.field_schema]) if n not in known]
        else:
            held = list(meta.field_schema)
        try:
            if tags is not None:
                # Tags first: a consumer can claim a sample as soon as its data is announced, and its
                # meta must already carry the tags.
                meta.update_custom_meta(tags)
                await set_tags(self._tq, pid, meta.global_indexes, meta.custom_meta, also)
            if wire is not None:
                await (put_rows if self._kv_storage else _put_simple)(self._tq.storage_manager, wire, meta)
        except BaseException:
            await self._undo_write(pid, meta, before, tags is not None, [*known, *specs])
            raise
        return held, [dict(t) for t in meta.custom_meta]

    async def _undo_write(
        self, pid: str, meta: BatchMeta, before: list[dict[str, Any]], tagged: bool, fields: list[str]
    ) -> None:
        """After a failed store, remove the keys the write created and restore the others' tags.

        Created keys are those with no tags before and no field produced. A key that existed with
        neither is indistinguishable and goes too. Bytes a failed write overwrote are not restored.
        """
        try:
            produced = await self._fields_per_key(pid, fields, meta.global_indexes)
            created = [
                i for i in range(meta.size) if not before[i] and not any(f[i] for f in produced.values())
            ]
            if created:
                await self._tq.async_clear_samples(self._clear_batch(meta.select_samples(created), fields))
                logger.info("removed %d key(s) of partition %r after a failed write", len(created), pid)
            kept = sorted(set(range(meta.size)).difference(created))
            if tagged and kept:
                await set_tags(
                    self._tq, pid, [meta.global_indexes[i] for i in kept], [before[i] for i in kept]
                )
        except Exception:  # the write's own error is what the caller needs to see
            logger.warning("could not undo a failed write to partition %r", pid, exc_info=True)

    def _get_samples(self, pid: str, keys: list[str], wanted: list[str] | None) -> TensorDict:
        return self._runner.run("get_samples", self._get(pid, keys, wanted), DataPlaneReadError)

    async def _get(self, pid: str, keys: list[str], wanted: list[str] | None) -> TensorDict:
        for _ in range(_READ_ATTEMPTS - 1):
            try:
                return await self._get_once(pid, keys, wanted)
            except _Raced:
                continue  # a write or clear landed between two of the checks' requests: look again
        try:
            return await self._get_once(pid, keys, wanted)
        except _Raced as exc:
            # Every look saw some of the keys missing at some instant: report them as missing.
            raise RacedClearError(
                f"key(s) {keys[:5]} of partition {pid!r} were cleared or rewritten while being read"
            ) from exc

    async def _get_once(self, pid: str, keys: list[str], wanted: list[str] | None) -> TensorDict:
        state: ControlState | None = None
        if wanted is None or self._kv_storage:
            meta, state = await asyncio.gather(
                self._tq.async_kv_retrieve_meta(keys, pid, create=False), self._control.state(pid)
            )
        else:
            meta = await self._tq.async_kv_retrieve_meta(keys, pid, create=False)
        if meta.size != len(keys):
            await self._raise_missing_keys(pid, keys, meta)
        if wanted is None:
            assert state is not None
            wanted = await self._uniform_fields(pid, keys, meta, state)
        else:
            for name in wanted:
                if name not in meta.field_schema:
                    lacking = (await self._fields_per_key(pid, [name], meta.global_indexes))[name]
                    absent = [k for k, has in zip(keys, lacking, strict=True) if not has]
                    if not absent:
                        raise _Raced(name)
                    raise DataPlaneKeyError(
                        f"field {name!r} is not stored for key(s) {absent[:5]} of partition {pid!r}"
                    )
        n = len(keys)
        if not wanted:
            return TensorDict({}, batch_size=[n])
        read = BatchMeta(
            global_indexes=meta.global_indexes,
            partition_ids=meta.partition_ids,
            field_schema={name: meta.field_schema[name] for name in wanted},
            production_status=np.ones(n, dtype=np.int8),
            _custom_backend_meta=meta._custom_backend_meta,
        )
        try:
            data = await self._read(self._tq.storage_manager, read)
        except Exception as exc:
            # A clear racing the fetch fails it in a backend's own words (SimpleStorage: key not found;
            # MooncakeStore: error codes such as -703/-704): if some key lost its slot meanwhile the
            # read raced a clear, otherwise the failure is the storage's own.
            if isinstance(exc, StorageKeyNotFoundError) or await self._slots_moved_quietly(pid, keys, meta):
                raise _Raced("keys") from exc
            raise
        # A clear frees a key's slot (its global index) and a put may take it over before this fetch:
        # the rows fetched are the keys' only if every slot still belongs to its key.
        if self._reads_by_slot and await self._slots_moved(pid, keys, meta):
            raise _Raced("keys")
        specs = state.fields if state is not None else {}
        columns = {}
        for name in wanted:
            spec = specs.get(name)
            columns[name] = shape_column(name, data.get(name), spec.rank if spec is not None else None)
        return TensorDict(columns, batch_size=[n])

    async def _slots_moved(self, pid: str, keys: list[str], meta: BatchMeta) -> bool:
        """Whether some key no longer owns the slot it was looked up at (cleared, maybe rewritten)."""
        return list(await self._tq.async_kv_retrieve_keys(list(meta.global_indexes), pid)) != keys

    async def _slots_moved_quietly(self, pid: str, keys: list[str], meta: BatchMeta) -> bool:
        """:meth:`_slots_moved`, ``False`` when the controller cannot say (the original error stands)."""
        try:
            return await self._slots_moved(pid, keys, meta)
        except Exception:
            return False

    async def _raise_missing_keys(self, pid: str, keys: list[str], meta: BatchMeta) -> None:
        if meta.size == 0 and not await self._partition_exists(pid):
            raise DataPlaneKeyError(f"partition {pid!r} not found")
        present = (
            set(await self._tq.async_kv_retrieve_keys(list(meta.global_indexes), pid)) if meta.size else set()
        )
        missing = [k for k in keys if k not in present]
        if not missing:
            raise _Raced("keys")
        raise DataPlaneKeyError(f"key(s) {_listed(missing)} not found in partition {pid!r}")

    async def _uniform_fields(
        self, pid: str, keys: list[str], meta: BatchMeta, state: ControlState
    ) -> list[str]:
        """Every field the keys store, in first-write order; an error naming a difference."""
        common = set(meta.field_schema)
        others = [name for name in state.fields if name not in common]
        if others:
            for name, flags in (await self._fields_per_key(pid, others, meta.global_indexes)).items():
                if all(flags):
                    raise _Raced(name)
                if any(flags):
                    having = keys[flags.index(True)]
                    lacking = keys[flags.index(False)]
                    raise DataPlaneBadRequest(
                        f"keys of partition {pid!r} store different fields: {having!r} has {name!r}, "
                        f"{lacking!r} does not; pass select_fields"
                    )
        if not common:
            raise DataPlaneKeyError(f"key(s) {keys[:5]} of partition {pid!r} store no fields (only tags)")
        ordered = [name for name in state.fields if name in common]
        return ordered + sorted(common.difference(ordered))

    def _clear_samples(self, pid: str, keys: list[str] | None) -> None:
        if keys is None:
            controller = self._controller_handle()
            self._runner.run("clear_samples", self._clear_partition(pid, controller), DataPlaneClearError)
            with self._lock:
                for slot in [s for s in self._claimed if s[0] == pid]:
                    del self._claimed[slot]
            return
        self._runner.run("clear_samples", self._clear_keys(pid, keys), DataPlaneClearError)

    @staticmethod
    def _clear_batch(meta: BatchMeta, fields: Sequence[str]) -> BatchMeta:
        """A BatchMeta naming every field a KV backend may hold for these samples."""
        return clear_meta(meta.global_indexes, meta.partition_ids, fields, meta._custom_backend_meta)

    async def _clear_keys(self, pid: str, keys: list[str]) -> None:
        fields: list[str] = []
        if self._kv_storage:  # MooncakeStore deletes by (sample, field): name every field there is
            meta, state = await asyncio.gather(
                self._tq.async_kv_retrieve_meta(keys, pid, create=False), self._control.state(pid)
            )
            fields = list(state.fields)
        else:
            meta = await self._tq.async_kv_retrieve_meta(keys, pid, create=False)
        if meta.size:
            ticket = await self._changes.begin(pid, keys)
            try:
                await self._tq.async_clear_samples(self._clear_batch(meta, fields))
            finally:
                self._changes.done_later(pid, ticket)

    async def _clear_partition(self, pid: str, controller: Any) -> None:
        if self._deployment.storage_backend == "SimpleStorage":
            await clear_partition(self._tq, controller, pid)  # in bulk, by global index
        else:  # MooncakeStore and columnar release by backend meta (the rows' objects): key by key
            listing = await self._tq.async_kv_list(pid)
            keys = list(listing.get(pid, {}))
            if keys:
                await self._clear_keys(pid, keys)
            if pid in listing:
                # Drop the emptied partition itself, with its consumption cursors.
                await self._tq._clear_partition_in_controller(pid)
        # Nothing of the partition stays: its control records with every writer's head, and its
        # change entries. Readers that knew a head rescan; writers start a new generation.
        await self._changes.settle(pid)  # this client's entries close before their records go
        present = set(await self._tq.async_get_partition_list())  # the controller warns of absent ones
        wipes = [self._control.wipe(pid)] if control_partition(pid) in present else []
        wipes += [wipe_log(self._tq, pid)] if log_partition(pid) in present else []
        await asyncio.gather(*wipes)
        self._changes.forget(pid)
        self._caches.pop(pid, None)  # its summaries went with it

    # ------------------------------------------------------------------ (C) recovery / control plane
    def _ping(self, timeout_s: float | None) -> None:
        self._runner.run("ping", self._tq.async_get_partition_list(), DataPlaneUnavailable, timeout_s)
        self._runner.check("ping")  # the controller answered; a storage unit may still be gone

    def _list_keys(self, pid: str | None) -> dict[str, dict[str, dict[str, Any]]]:
        if pid is None:
            return self._runner.run("list_keys", self._list_all(), DataPlaneReadError)
        return self._runner.run("list_keys", self._list_one(pid), DataPlaneReadError)

    def _scan_keys(
        self, pid: str, cursor: int, count: int, match: str | None
    ) -> tuple[int, dict[str, dict[str, dict[str, Any]]]]:
        controller = self._controller_handle()
        following, page = self._runner.run(
            "list_keys", scan_page(self._tq, controller, pid, cursor, count, match), DataPlaneReadError
        )
        return following, {} if page is None else {pid: page}

    def _controller_handle(self) -> Any:
        if self._controller is None:
            self._controller = run_bounded(
                "finding TransferQueue's controller", controller_actor, timeout_s=self._cfg.request_timeout_s
            )
        return self._controller

    def _list_metadata(self, pid: str) -> list[DataPlaneGroupMeta]:
        return self._runner.run(
            "list_metadata", self._groups(pid, lambda g: g.metas(pid)), DataPlaneReadError
        )

    def _depth(self, pid: str) -> int:
        return self._runner.run("depth", self._groups(pid, lambda g: g.depth()), DataPlaneReadError)

    async def _groups(self, pid: str, answer: Any) -> Any:
        """``answer(summaries)`` after refreshing this client's group summaries of ``pid``."""
        if pid not in self._caches:
            self._caches[pid] = (GroupCache(self._tq, pid), asyncio.Lock())
        cache, lock = self._caches[pid]
        async with lock:
            return answer(await cache.refresh())

    async def _list_one(self, pid: str) -> dict[str, dict[str, dict[str, Any]]]:
        listing, state = await asyncio.gather(self._tq.async_kv_list(pid), self._control.state(pid))
        if pid in listing:
            return {pid: listing[pid]}
        return {pid: {}} if state.registration is not None else {}

    async def _list_all(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Every partition, kvplane's own included (the gate hides those)."""
        listing = await self._tq.async_kv_list(None)
        out = dict(listing)
        for pid, records in listing.items():
            owner = user_partition(pid)  # a declared partition is listed before its first write
            if owner is not None and ControlState.parse(records).registration is not None:
                out.setdefault(owner, {})
        return out

    # ------------------------------------------------------------------ durable state
    def _save_checkpoint(self, path: Path, include_storage: bool, metadata: dict[str, Any]) -> None:
        """kvplane's checkpoint format, read through kvplane (:mod:`._durable`; decisions.md says why)."""
        if not include_storage:
            logger.warning(
                "include_storage=False has no effect on TransferQueue (%s): the deployment keeps its data "
                "nowhere that outlives it, so it would be lost on restart; saving the storage too",
                self.storage_backend,
            )
        write_checkpoint(path, take_snapshot(self), include_storage=True, metadata=metadata)

    def _load_checkpoint(self, path: Path) -> dict[str, Any]:
        """Replace the deployment's whole state with the checkpoint's; all or nothing (:mod:`._durable`)."""
        snapshot = read_checkpoint(path)
        restore(self, snapshot)
        return snapshot.metadata

    def get_capabilities(self) -> DataPlaneCapabilities:
        """All False on TransferQueue 0.1.11, for these reasons.

        - ``supports_persistent_recovery``: the controller's metadata and the stored samples live in
          the deployment's processes (SimpleStorage actors, MooncakeStore segments) and die with them.
        - ``supports_server_side_filtering``: the controller selects claims by field production only;
          tags are not filtered there.
        - ``supports_atomic_batch_put``: data lands per storage unit before one controller update,
          tags after it; an upsert can be read half old, half new, and a failed unit leaves the
          others written (kvplane removes the keys the failed write created, not the bytes it
          overwrote).
        - ``supports_verified_clear``: both storage backends log a failed delete instead of raising it.
        """
        return DataPlaneCapabilities()

    # ------------------------------------------------------------------ (D) lifecycle
    def close(self) -> None:
        """Detach (attached client) or tear the deployment down (bootstrapping client). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._runner.close()
        self._deployment.close(self._cfg.bootstrap_timeout_s)

    # ------------------------------------------------------------------ (E) the deployment, read-only
    # For tools that measure raw TransferQueue next to kvplane, and for tests; kvplane never needs them.
    @property
    def storage_backend(self) -> str:
        """TransferQueue's storage backend name: ``SimpleStorage`` or ``MooncakeStore``."""
        return self._deployment.storage_backend

    @property
    def transfer_queue_client(self) -> Any:
        """The ``transfer_queue.TransferQueueClient`` this client sends its requests through."""
        return self._deployment.client

    @property
    def mooncake_master(self) -> Any:
        """The ``mooncake_master`` process (``subprocess.Popen``) this client's bootstrap started, or
        ``None`` (SimpleStorage, an attached client, or TransferQueue started none)."""
        return self._deployment.mooncake_master

    def transfer_queue_config(self) -> Any:
        """The running deployment's TransferQueue config (controller and storage ZMQ addresses), as its
        controller reports it: a Ray request, bounded by ``bootstrap_timeout_s``.

        Raises:
            DataPlaneUnavailable: No controller runs, or it did not answer in time.
        """
        import ray

        from kvplane._errors import DataPlaneError

        from ._calls import run_bounded, translate
        from ._deployment import CONTROLLER_NAME, NAMESPACE, _running_config

        what, timeout_s = "finding TransferQueue's controller", self._cfg.bootstrap_timeout_s
        try:
            controller = run_bounded(
                what, lambda: ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE), timeout_s=timeout_s
            )
        except ValueError as exc:  # Ray's answer for "no such actor"
            raise DataPlaneUnavailable("no TransferQueue controller runs in this Ray cluster") from exc
        except DataPlaneError:
            raise
        except Exception as exc:
            raise translate(what, exc, DataPlaneUnavailable) from exc
        return _running_config(controller, timeout_s)
