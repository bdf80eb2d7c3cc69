"""The embedded memory backend: the whole contract in one process, with threads.

Nothing to start. One lock guards all metadata, so claims are exactly-once per task across threads,
and a blocking claim wakes when a write lands; its deadline covers its wait for the lock as well as
its wait for samples. A put copies each column once, so the stored data is isolated from the
caller's later in-place edits, and evicting most of a put returns most of its memory
(:meth:`retained_nbytes`).

Design: docs/internals.md#kvplaneadaptersmemorypy--the-embedded-backend

Examples:
    >>> import torch
    >>> from kvplane.adapters.memory import MemoryDataPlaneClient
    >>> client = MemoryDataPlaneClient()
    >>> x = torch.arange(6).view(3, 2)
    >>> _ = client.put_samples(["a", "b", "c"], "p", {"x": x, "text": ["u", "v", "w"]})
    >>> _ = x.zero_()                                   # the store kept its own copy
    >>> td = client.get_samples(["c", "a"], "p", ["x", "text"])
    >>> td["x"].tolist(), td.get("text").tolist()
    ([[4, 5], [0, 1]], ['w', 'u'])
    >>> client.get_samples(["a", "zz"], "p", ["x"])
    Traceback (most recent call last):
    ...
    kvplane._errors.DataPlaneKeyError: key(s) 'zz' not found in partition 'p'
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict

from kvplane._checkpoint import StoreSnapshot, read_checkpoint, write_checkpoint
from kvplane._errors import (
    DataPlaneBadRequest,
    DataPlaneKeyError,
    DataPlaneTimeout,
    DataPlaneUnavailable,
)
from kvplane._gated import GatedDataPlaneClient, claim_timeout
from kvplane._meta import DataPlaneCapabilities, DataPlaneGroupMeta, KVBatchMeta
from kvplane._tags import copy_tags
from kvplane._tensors import field_kind, make_object_column, stack_rows
from kvplane._validation import Declaration
from kvplane.adapters._memory_partition import Cell, Chunk, Partition, Put, own_column, record_tags, resolve
from kvplane.adapters._memory_state import copy_partitions, export_state, import_state
from kvplane.adapters._read_buffers import ReadBuffers

__all__ = ["MemoryDataPlaneClient"]

logger = logging.getLogger(__name__)


def _read_column(name: str, column: list[Cell] | tuple[torch.Tensor, list[int]], buffers: ReadBuffers) -> Any:
    """Assemble one output column from cells or ``(tensor, rows)``, copying once (a dense column
    into ``buffers``)."""
    if isinstance(column, tuple):
        return _gather(*column, buffers)
    kinds = {c[0] for c in column}
    if kinds == {"obj"}:
        return make_object_column(copy.deepcopy([c[1] for c in column]))
    if "obj" in kinds:
        raise DataPlaneBadRequest(f"field {name!r} holds tensors for some keys and objects for others")
    if kinds == {"chunk"}:
        chunk = column[0][1]
        if all(c[1] is chunk for c in column):
            return _gather(chunk, [c[2] for c in column], buffers)
    return stack_rows(name, [c[1][c[2]] if c[0] == "chunk" else c[1] for c in column], buffers.take)


def _gather(tensor: torch.Tensor, rows: list[int], buffers: ReadBuffers) -> torch.Tensor:
    """``tensor[rows]`` in a buffer from ``buffers``."""
    out = buffers.take((len(rows), *tensor.shape[1:]), tensor.dtype)
    if rows == list(range(tensor.shape[0])):
        return out.copy_(tensor)
    return torch.index_select(tensor, 0, torch.tensor(rows, dtype=torch.long), out=out)


class MemoryDataPlaneClient(GatedDataPlaneClient):
    """The contract in process memory. Thread-safe; see the module docstring.

    Arguments are validated by :class:`~kvplane._gated.GatedDataPlaneClient` before they get here.

    Args:
        seq_len_tag: The tag whose values fill ``sequence_lengths`` when ``input_lengths`` is absent.
    """

    def __init__(self, *, seq_len_tag: str = "seq_len") -> None:
        super().__init__(seq_len_tag=seq_len_tag)
        self._partitions: dict[str, Partition] = {}
        self._changed = threading.Condition(threading.Lock())
        self._closed = False
        self._read_buffers = ReadBuffers()

    # ------------------------------------------------------------------ helpers (call with the lock held)
    def _check_open(self) -> None:
        if self._closed:
            raise DataPlaneUnavailable("the memory data plane client is closed")

    def _partition(self, partition_id: str) -> Partition:
        part = self._partitions.get(partition_id)
        if part is None:
            raise DataPlaneKeyError(f"partition {partition_id!r} not found")
        return part

    def _part_meta(
        self, part: Partition, partition_id: str, task: str | None, keys: list[str], fields: list[str] | None
    ) -> KVBatchMeta:
        return self._meta(partition_id, task, keys, fields, part.tag_dicts(keys))

    @staticmethod
    def _held_by_all(part: Partition, keys: list[str]) -> list[str] | None:
        """Every field all ``keys`` hold, in the partition's first-write order (``None`` if none)."""
        everywhere = len(part.records)
        held = [
            name
            for name in part.kinds
            if part.holders.get(name, 0) == everywhere or all(name in part.fields_of(k) for k in keys)
        ]
        return held or None

    # ------------------------------------------------------------------ (A) task-mediated
    def _register_partition(self, partition_id: str, declaration: Declaration) -> None:
        with self._changed:
            self._check_open()
            part = self._partitions.setdefault(partition_id, Partition())
            part.registration = declaration
            self._changed.notify_all()

    def _claim_meta(
        self,
        partition_id: str,
        task_name: str,
        required: list[str],
        batch_size: int,
        dp_rank: int | None,
        blocking: bool,
        timeout_s: float,
    ) -> KVBatchMeta:
        deadline = time.monotonic() + timeout_s
        if not self._changed.acquire(timeout=timeout_s):
            raise DataPlaneTimeout(
                f"claim_meta(partition={partition_id!r}, task={task_name!r}) could not take the "
                f"memory data plane's lock within {timeout_s}s (other calls held it)"
            )
        try:
            while True:
                self._check_open()
                meta = self._try_claim(partition_id, task_name, required, batch_size)
                if meta is not None:
                    return meta
                remaining = deadline - time.monotonic()
                if not blocking:
                    return KVBatchMeta(partition_id, task_name, [], fields=required, tags=[])
                if remaining <= 0:
                    part = self._partitions.get(partition_id)
                    raise claim_timeout(
                        partition_id,
                        task_name,
                        batch_size,
                        timeout_s,
                        exists=part is not None,
                        registration=None if part is None else part.registration,
                        ready=None if part is None else _count_ready(part, task_name, required),
                    )
                self._changed.wait(remaining)
        finally:
            self._changed.release()

    def _try_claim(
        self, partition_id: str, task: str, required: list[str], batch_size: int
    ) -> KVBatchMeta | None:
        part = self._partitions.get(partition_id)
        if part is None:
            return None
        reg = part.registration
        if reg is not None and reg.consumer_tasks and task not in reg.consumer_tasks:
            raise DataPlaneKeyError(
                f"task {task!r} is not a consumer task of partition {partition_id!r} "
                f"(registered: {reg.consumer_tasks})"
            )
        queue = part.task_queue(task)
        want = batch_size
        if reg is not None and reg.num_samples is not None:
            want = min(batch_size, reg.num_samples - part.claimed_total[task])
            if want <= 0:
                return KVBatchMeta(partition_id, task, [], fields=required, tags=[])
        if all(part.holders.get(name, 0) == len(part.records) for name in required):
            ready = list(islice(queue, want))  # every stored key holds every required field
        else:
            needed = set(required)
            ready = []
            for key in queue:
                if needed.issubset(part.fields_of(key)):
                    ready.append(key)
                    if len(ready) == want:
                        break
        if len(ready) < want:
            return None
        for key in ready:
            del queue[key]
        part.claimed_total[task] += len(ready)
        return self._part_meta(part, partition_id, task, ready, list(required))

    def _check_consumption_status(self, partition_id: str, tasks: list[str]) -> bool:
        with self._changed:
            self._check_open()
            part = self._partition(partition_id)
            expected = part.registration.num_samples if part.registration else None
            for task in tasks:
                if task not in part.unclaimed:
                    if part.records or expected:
                        return False
                    continue
                if part.unclaimed[task] or (expected is not None and part.claimed_total[task] < expected):
                    return False
            return True

    # ------------------------------------------------------------------ (B) direct-by-key
    def _put_samples(
        self,
        partition_id: str,
        keys: list[str],
        batch: TensorDict | None,
        tag_list: list[dict[str, Any]] | None,
    ) -> KVBatchMeta:
        names = list(batch.keys()) if batch is not None else []
        incoming = {name: field_kind(batch.get(name)) for name in names}
        owned = {name: own_column(batch.get(name)) for name in names}  # the copy, outside the lock
        with self._changed:
            self._check_open()
            part = self._partitions.get(partition_id)
            for name, kind in incoming.items():
                stored = part.kinds.get(name) if part else None
                if stored is not None and stored != kind:
                    raise DataPlaneBadRequest(
                        f"field {name!r} of partition {partition_id!r} holds {stored}; "
                        f"refusing a write of {kind} (a field keeps one dtype within a partition)"
                    )
            if part is None:
                part = self._partitions[partition_id] = Partition()
            for name, kind in incoming.items():
                part.kinds.setdefault(name, kind)
            # Tag dicts are rebuilt, never edited, by a write: listings copy outside the lock.
            part.write(keys, Put(owned) if owned else None, tag_list)
            meta = self._part_meta(part, partition_id, None, keys, self._held_by_all(part, keys))
            self._changed.notify_all()
        return meta

    def _get_samples(self, partition_id: str, keys: list[str], wanted: list[str] | None) -> TensorDict:
        with self._changed:
            self._check_open()
            part = self._partition(partition_id)
            missing = [k for k in keys if k not in part.records]
            if missing:
                listed = ", ".join(repr(k) for k in missing[:5]) + (
                    f" and {len(missing) - 5} more" if len(missing) > 5 else ""
                )
                raise DataPlaneKeyError(f"key(s) {listed} not found in partition {partition_id!r}")
            columns = part.put_columns(keys, wanted) if keys else None
            if columns is None:
                columns = self._cells(part, partition_id, keys, wanted)
        return TensorDict(
            {name: _read_column(name, column, self._read_buffers) for name, column in columns.items()},
            batch_size=[len(keys)],
        )

    @staticmethod
    def _cells(
        part: Partition, partition_id: str, keys: list[str], wanted: list[str] | None
    ) -> dict[str, list[Cell]]:
        """Each wanted field's resolved cells for ``keys``, key by key (their fields from any writes)."""
        if wanted is None:
            wanted = _uniform_fields(partition_id, keys, [part.fields_of(k) for k in keys])
        columns: dict[str, list[Cell]] = {}
        for name in wanted:
            cells = [part.cell(k, name) for k in keys]
            if None in cells:
                lacking = [k for k, cell in zip(keys, cells, strict=True) if cell is None]
                raise DataPlaneKeyError(
                    f"field {name!r} is not stored for key(s) {lacking[:5]} of partition {partition_id!r}"
                )
            columns[name] = [resolve(cell) for cell in cells]
        return columns

    def _clear_samples(self, partition_id: str, keys: list[str] | None) -> None:
        with self._changed:
            self._check_open()
            if keys is None:
                self._partitions.pop(partition_id, None)
            else:
                part = self._partitions.get(partition_id)
                if part is not None:
                    part.remove(keys)
            self._changed.notify_all()

    # ------------------------------------------------------------------ (C) recovery / control plane
    def _ping(self, timeout_s: float | None) -> None:
        wait = -1.0 if timeout_s is None else timeout_s
        if not self._changed.acquire(timeout=wait):
            raise DataPlaneTimeout(f"the memory data plane's lock was not free within {timeout_s}s")
        try:
            self._check_open()
        finally:
            self._changed.release()

    def _list_keys(self, partition_id: str | None) -> dict[str, dict[str, dict[str, Any]]]:
        with self._changed:
            self._check_open()
            names = list(self._partitions) if partition_id is None else [partition_id]
            # A snapshot of references: records are replaced, never edited, so their tags can be
            # copied after the lock is released and a long listing does not stall other calls.
            snapshot = {
                name: (list(part.records.items()), set(part.nested))
                for name in names
                if (part := self._partitions.get(name)) is not None
            }
        return {name: _tag_dicts(records, nested) for name, (records, nested) in snapshot.items()}

    def _scan_keys(
        self, partition_id: str, cursor: int, count: int, match: str | None
    ) -> tuple[int, dict[str, dict[str, dict[str, Any]]]]:
        with self._changed:
            self._check_open()
            part = self._partitions.get(partition_id)
            if part is None:
                return 0, {}
            following, keys = part.scan(cursor, count, match)
            records = [(k, part.records[k]) for k in keys]
            nested = part.nested.intersection(keys)
        return following, {partition_id: _tag_dicts(records, nested)}

    def _list_metadata(self, partition_id: str) -> list[DataPlaneGroupMeta]:
        with self._changed:
            self._check_open()
            part = self._partitions.get(partition_id)
            groups = [] if part is None else part.groups.metas(partition_id)
        return groups  # cached, shared and read-only (see GroupIndex.metas)

    def _depth(self, partition_id: str) -> int:
        with self._changed:
            self._check_open()
            part = self._partitions.get(partition_id)
            return 0 if part is None else part.groups.depth()

    def retained_nbytes(self) -> int:
        """Bytes of tensor storage the store keeps alive (each distinct storage counted once).

        Examples:
            >>> import torch
            >>> client = MemoryDataPlaneClient()
            >>> _ = client.put_samples([f"k{i}" for i in range(4)], "p", {"x": torch.zeros(4, 256)})
            >>> client.retained_nbytes()
            4096
            >>> client.pop(["k0", "k1", "k2"], "p")      # at most half live: the chunk is compacted
            >>> client.retained_nbytes()
            1024
        """
        with self._changed:
            tensors = [t for part in self._partitions.values() for t in part.tensors()]
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
        return sum(storages.values())

    # ------------------------------------------------------------------ durable state
    def _save_checkpoint(self, path: Path, include_storage: bool, metadata: dict[str, Any]) -> None:
        if not include_storage:
            logger.warning(
                "include_storage=False has no effect on the embedded backend: its data lives nowhere "
                "else and would be lost on restart; saving the storage too"
            )
        write_checkpoint(path, self._snapshot(), include_storage=True, metadata=metadata)

    def _load_checkpoint(self, path: Path) -> dict[str, Any]:
        snapshot = read_checkpoint(path)
        self._restore(snapshot)
        return snapshot.metadata

    def _snapshot(self) -> StoreSnapshot:
        """Every partition (kvplane's own included) as one consistent snapshot."""
        with self._changed:
            self._check_open()
            copied = copy_partitions(self._partitions, resolve)
        return export_state(copied)

    def _restore(self, snapshot: StoreSnapshot) -> None:
        """Replace the whole state with ``snapshot``'s, all or nothing."""
        built = import_state(snapshot, Partition, Chunk)
        for part in built.values():
            part.reindex()
        with self._changed:
            self._check_open()
            self._partitions.clear()
            self._partitions.update(built)
            self._changed.notify_all()

    def get_capabilities(self) -> DataPlaneCapabilities:
        # Puts are validated whole and applied under one lock; clears are done when they return.
        return DataPlaneCapabilities(supports_atomic_batch_put=True, supports_verified_clear=True)

    # ------------------------------------------------------------------ (D) lifecycle
    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._partitions.clear()
            self._changed.notify_all()
        self._read_buffers.clear()


def _tag_dicts(records: list[tuple[str, tuple]], nested: set[str]) -> dict[str, dict[str, Any]]:
    """``{key: tags}`` from a snapshot of records; containers copied for ``nested`` keys."""
    out = dict(zip([key for key, _ in records], record_tags(rec for _, rec in records), strict=True))
    for key in nested:
        out[key] = copy_tags(out[key])
    return out


def _count_ready(part: Partition, task: str, required: list[str]) -> int:
    """How many of ``task``'s unclaimed keys hold every ``required`` field."""
    needed = set(required)
    return sum(1 for key in part.unclaimed.get(task, ()) if needed.issubset(part.fields_of(key)))


def _uniform_fields(partition_id: str, keys: Sequence[str], rows: Sequence[Any]) -> list[str]:
    """Every field the keys store; an error naming the difference when they do not all store the same."""
    first = set(rows[0]) if rows else set()
    for key, row in zip(keys, rows, strict=True):
        if set(row) != first:
            raise DataPlaneBadRequest(
                f"keys of partition {partition_id!r} store different fields: "
                f"{keys[0]!r} has {sorted(first)}, "
                f"{key!r} has {sorted(row)}; pass select_fields"
            )
    if not first:
        raise DataPlaneKeyError(
            f"key(s) {list(keys[:5])} of partition {partition_id!r} store no fields (only tags)"
        )
    return list(rows[0])
