"""A TransferQueue deployment's state as a :class:`~kvplane._checkpoint.StoreSnapshot`, and back.

Read through kvplane, written back through kvplane (``docs/decisions.md`` says why this and not
TransferQueue's own ``save_checkpoint``): :func:`take_snapshot` lists every partition (kvplane's own
included), reads each field's rows in key chunks, and turns the adapter's control records
(:mod:`._control`) into the snapshot's registrations, field kinds and claim totals, and the
controller's consumption bits (:mod:`._consumption`) into each task's claimed samples. The snapshot
is the backend-neutral one the embedded backend writes: a checkpoint of either loads into the other.

:func:`restore` replaces the deployment's whole state with a snapshot's (TransferQueue's and the
embedded backend's rule): every partition is cleared, the snapshot's are written back (keys in
claim order, each registration with a new epoch and its claim totals), then each task's claimed
samples are marked claimed again and checked. It first reads the current state into memory; if
anything fails after the first clear, that state is written back the same way and the error raised,
so a failed load leaves the store as it was unless the deployment itself fails during both.

Examples:
    >>> from kvplane.adapters.transfer_queue._durable import chunks
    >>> [list(c) for c in chunks(range(5), 2)]
    [[0, 1], [2, 3], [4]]
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from tensordict import TensorDict

from kvplane._checkpoint import (
    Block,
    DenseRows,
    FieldColumn,
    ObjectRows,
    PartitionSnapshot,
    RaggedRows,
    StoreSnapshot,
    TaskState,
)
from kvplane._errors import (
    DataPlaneBadRequest,
    DataPlaneCheckpointError,
    DataPlaneReadError,
    DataPlaneWriteError,
)
from kvplane._tensors import OBJECT_KIND, field_kind, make_object_column, stack_rows
from kvplane._validation import Declaration

from ._consumption import claimed_samples, mark_claimed
from ._control import ControlPlane, ControlState, FieldSpec, Registration, user_partition
from ._wire import prepare_batch

#: The adapter (``._client.TransferQueueDataPlaneClient``; not imported here: it imports this module).
Client = Any

__all__ = ["chunks", "restore", "take_snapshot"]

logger = logging.getLogger(__name__)

#: Keys per read or write request while saving or restoring.
CHUNK = 1024


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """``items`` in consecutive slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ---------------------------------------------------------------------------------------- save
def take_snapshot(client: Client) -> StoreSnapshot:
    """Every partition of the deployment (kvplane's own included), read through the client.

    Not atomic across requests: take it while nothing writes, claims or clears (as TransferQueue's own
    checkpoint, which saves the controller and the storage at different moments).
    """
    run = client._runner.run
    listing = run("save_checkpoint", client._tq.async_kv_list(None), DataPlaneReadError)
    controls = {}
    for pid, records in listing.items():
        owner = user_partition(pid)
        if owner is not None:
            controls[owner] = ControlState.parse(records)
    pids = [pid for pid in listing if user_partition(pid) is None]
    pids += [o for o, s in controls.items() if o not in listing and s.registration is not None]
    claims = claimed_samples(pids, timeout_s=client._cfg.request_timeout_s)
    partitions = {}
    for pid in pids:
        state = controls.get(pid, ControlState())
        keys = list(listing.get(pid, {}))
        if not keys and state.registration is None:
            continue  # an emptied, never-registered partition holds nothing to restore
        partitions[pid] = _snapshot_partition(client, pid, keys, listing.get(pid, {}), state, claims.get(pid, {}))
    return StoreSnapshot(partitions)


def _snapshot_partition(
    client: Client,
    pid: str,
    keys: list[str],
    tags: dict[str, dict[str, Any]],
    state: ControlState,
    claims: dict[str, list[int]],
) -> PartitionSnapshot:
    run = client._runner.run
    indexes: list[int] = []
    fields = list(state.fields)
    if keys:
        meta = run("save_checkpoint", client._tq.async_kv_retrieve_meta(keys, pid, create=False), DataPlaneReadError)
        order = sorted(range(len(keys)), key=lambda i: meta.global_indexes[i])  # TransferQueue's claim order
        keys = [keys[i] for i in order]
        indexes = [meta.global_indexes[i] for i in order]
        fields += [f for f in meta.field_schema if f not in state.fields]
    held = run("save_checkpoint", client._fields_per_key(pid, fields, indexes), DataPlaneReadError) if keys else {}
    layout_index: dict[tuple[str, ...], int] = {}
    layout_ids = []
    for i in range(len(keys)):
        layout = tuple(f for f in fields if held[f][i])
        layout_ids.append(layout_index.setdefault(layout, len(layout_index)))
    columns = {}
    for name in fields:
        holders = [k for k, has in zip(keys, held.get(name, ()), strict=False) if has]
        blocks = [_block(client, pid, list(part), name) for part in chunks(holders, CHUNK)]
        spec = state.fields.get(name)
        kind = spec.kind if spec is not None else _kind(blocks)
        columns[name] = FieldColumn(kind, blocks)
    return PartitionSnapshot(
        keys=keys,
        tags=[dict(tags.get(k) or {}) for k in keys],
        layouts=list(layout_index),
        layout_ids=layout_ids,
        fields=columns,
        registration=_declaration(state.registration),
        tasks=_tasks(indexes, state, claims),
    )


def _block(client: Client, pid: str, keys: list[str], name: str) -> Block:
    column = client._runner.run("save_checkpoint", client._get(pid, keys, [name]), DataPlaneReadError).get(name)
    if not isinstance(column, torch.Tensor):
        return ObjectRows(list(column.tolist()))
    if column.is_nested:
        return RaggedRows(column.values(), column.offsets().to(torch.int64))
    return DenseRows(column)


def _kind(blocks: list[Block]) -> str:
    for b in blocks:
        if isinstance(b, ObjectRows):
            return OBJECT_KIND
        return field_kind(b.data if isinstance(b, DenseRows) else b.values)
    return OBJECT_KIND


def _declaration(reg: Registration | None) -> Declaration | None:
    if reg is None:
        return None
    enums = {k: list(v) for k, v in reg.enums.items()}
    return Declaration(list(reg.fields), reg.num_samples, list(reg.consumer_tasks), reg.grpo_group_size, enums)


def _tasks(indexes: list[int], state: ControlState, claims: dict[str, list[int]]) -> dict[str, TaskState]:
    """Each task's claimed positions, and its lifetime total (kvplane's count where it keeps one)."""
    position = {g: i for i, g in enumerate(indexes)}
    counted = state.registration is not None and state.registration.num_samples is not None
    out = {}
    for task in dict.fromkeys([*claims, *state.claimed]):
        claimed = sorted(position[g] for g in claims.get(task, ()) if g in position)
        total = state.claimed.get(task, 0) if counted else len(claimed)
        if claimed or total:
            out[task] = TaskState(max(total, len(claimed)), claimed)
    return out


# ---------------------------------------------------------------------------------------- load
def restore(client: Client, snapshot: StoreSnapshot) -> None:
    """Replace the deployment's whole state with ``snapshot``'s (see the module docstring).

    Raises:
        DataPlaneCheckpointError: The snapshot holds no storage, or a failed load could not put the
            previous state back (the message says so).
        DataPlaneBadRequest: The snapshot's data does not fit the deployment's capacity.
        DataPlaneError: Writing failed; the previous state was put back.
    """
    if not snapshot.storage_saved:
        raise DataPlaneCheckpointError(
            "this checkpoint was saved with include_storage=False: it holds no data, and a TransferQueue "
            "deployment keeps its data nowhere that outlives it; save with include_storage=True"
        )
    _check_capacity(client, snapshot)
    previous = take_snapshot(client)
    try:
        _replace(client, snapshot)
    except BaseException as exc:
        logger.warning("loading a checkpoint failed (%s); putting the previous state back", exc)
        try:
            _replace(client, previous)
        except Exception as again:
            raise DataPlaneCheckpointError(
                f"loading the checkpoint failed ({exc}) and putting the previous state back failed too "
                f"({again}): the store holds part of either; load a checkpoint again"
            ) from exc
        raise


def _check_capacity(client: Client, snapshot: StoreSnapshot) -> None:
    capacity = client._cfg.storage_capacity if not client._kv_storage else None
    if capacity is None:
        return
    stored = sum(
        sum(1 for i in p.layout_ids if p.layouts[i]) for p in snapshot.partitions.values()
    )
    if stored > capacity:
        raise DataPlaneBadRequest(
            f"the checkpoint holds {stored} samples with data; the deployment stores at most {capacity} "
            "(storage_capacity); nothing was changed"
        )


def _replace(client: Client, snapshot: StoreSnapshot) -> None:
    run = client._runner.run
    listing = run("load_checkpoint", client._tq.async_kv_list(None), DataPlaneReadError)
    controller = client._controller_handle()
    for pid in listing:
        owner = user_partition(pid)
        if owner is None:  # its control records and change log go with it
            run("load_checkpoint", client._clear_partition(pid, controller), DataPlaneWriteError)
        elif owner not in listing:
            run("load_checkpoint", client._control.wipe(owner), DataPlaneWriteError)
    with client._lock:
        client._claimed.clear()
        client._caches.clear()  # this client's group summaries are rebuilt from the restored keys
    for pid, part in snapshot.partitions.items():
        if user_partition(pid) is not None:  # backend bookkeeping (control records, change logs)
            logger.info("not restoring %r: records of the backend that wrote the checkpoint", pid)
            continue
        _write_partition(client, pid, part)


def _rows(block: Block) -> Iterator[Any]:
    if isinstance(block, DenseRows):
        yield from block.data.unbind(0)
    elif isinstance(block, RaggedRows):
        bounds = block.offsets.tolist()
        for a, b in zip(bounds, bounds[1:]):
            yield block.values[a:b]
    else:
        yield from block.values


def _write_partition(client: Client, pid: str, part: PartitionSnapshot) -> None:
    run = client._runner.run
    epoch = uuid.uuid4().hex
    if part.registration is not None:
        registration = Registration(*part.registration, epoch=epoch)
        run("load_checkpoint", client._control.register(pid, registration), DataPlaneWriteError)
    rows = {name: [r for b in column.blocks for r in _rows(b)] for name, column in part.fields.items()}
    taken = dict.fromkeys(part.fields, 0)
    cells: list[dict[str, Any]] = []
    for layout_id in part.layout_ids:
        layout = part.layouts[layout_id]
        cells.append({name: rows[name][taken[name]] for name in layout})
        for name in layout:
            taken[name] += 1
    # Keys go back in the snapshot's order (TransferQueue's claim order), a run of one layout per write.
    start = 0
    n = len(part.keys)
    while start < n:
        end = start + 1
        while end < n and end - start < CHUNK and part.layout_ids[end] == part.layout_ids[start]:
            end += 1
        layout = part.layouts[part.layout_ids[start]]
        columns = {name: _column(name, part.fields[name].kind, [c[name] for c in cells[start:end]]) for name in layout}
        specs = {name: FieldSpec.of(col) for name, col in columns.items()}
        wire = prepare_batch(TensorDict(columns, batch_size=[end - start])) if columns else None
        keys, tags = list(part.keys[start:end]), [dict(t) for t in part.tags[start:end]]
        run("load_checkpoint", client._put(pid, keys, wire, tags, specs), DataPlaneWriteError)
        start = end
    empty = {name: FieldSpec(OBJECT_KIND, None) for name, c in part.fields.items() if not taken[name] and c.kind == OBJECT_KIND}
    if empty:
        run("load_checkpoint", client._control.add_fields(pid, empty), DataPlaneWriteError)
    _restore_claims(client, pid, part, epoch)


def _column(name: str, kind: str, values: list[Any]) -> Any:
    if kind == OBJECT_KIND:
        return make_object_column(values)
    return stack_rows(name, values)


def _restore_claims(client: Client, pid: str, part: PartitionSnapshot, epoch: str) -> None:
    run = client._runner.run
    if not part.tasks:
        return
    indexes: list[int] = []
    if part.keys:
        meta = run("load_checkpoint", client._tq.async_kv_retrieve_meta(list(part.keys), pid, create=False),
                   DataPlaneReadError)  # fmt: skip
        indexes = list(meta.global_indexes)
    counted = part.registration is not None and part.registration.num_samples is not None
    restorer = ControlPlane(client._tq, f"restored-{epoch[:12]}")
    for task, state in part.tasks.items():
        want = sorted(indexes[i] for i in state.claimed)
        if want:
            got = mark_claimed(pid, task, want, timeout_s=client._cfg.request_timeout_s)
            if sorted(got) != want:
                raise DataPlaneWriteError(
                    f"restoring task {task!r}'s claims on partition {pid!r}: the controller marks "
                    f"{len(got)} samples claimed, the checkpoint {len(want)}"
                )
        if counted and state.claimed_total:
            run("load_checkpoint", restorer.set_claimed(pid, task, epoch, state.claimed_total), DataPlaneWriteError)
