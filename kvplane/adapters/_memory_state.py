"""The embedded backend's partitions as a :class:`~kvplane._checkpoint.StoreSnapshot`, and back.

``copy_partitions`` copies the store's structure under its lock (keys, per-key field cells, tags,
registrations, claim cursors); ``export_state`` builds the column blocks outside it without copying
tensor bytes (a run of keys stored from one put is a view of that put's chunk; only scattered rows
are stacked). ``import_state`` builds every partition first; the backend then swaps them in under its
lock, so a failed load leaves the store exactly as it was. Loading **replaces** the store's state, as
TransferQueue's ``load_checkpoint`` does; claim cursors continue exactly.

Examples:
    >>> import tempfile, torch
    >>> from kvplane import build_data_plane_client
    >>> a = build_data_plane_client({"impl": "embedded"})
    >>> _ = a.put_samples(["k0", "k1"], "p", {"x": torch.tensor([1, 2])}, tags=[{"n": 0}, {"n": 1}])
    >>> a.claim_meta("p", "train", ["x"], batch_size=1).sample_ids
    ['k0']
    >>> ckpt = tempfile.mkdtemp() + "/ckpt"
    >>> a.save_checkpoint(ckpt, metadata={"step": 1})
    >>> b = build_data_plane_client({"impl": "embedded"})
    >>> b.load_checkpoint(ckpt)
    {'step': 1}
    >>> b.claim_meta("p", "train", ["x"], batch_size=1).sample_ids     # k0 stays claimed
    ['k1']
    >>> b.get_samples(["k0"], "p", ["x"])["x"].tolist()
    [1]
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

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
from kvplane._errors import DataPlaneBadRequest
from kvplane._tensors import OBJECT_KIND
from kvplane._validation import Declaration

__all__ = ["export_state", "import_state"]

#: A run of rows from one stored chunk at least this large is written straight from the chunk;
#: smaller runs (e.g. keys put one at a time) are stacked into one block with their neighbours.
_VIEW_MIN_BYTES = 64 << 10

Cell = tuple  # a resolved cell: ("chunk", tensor, row) | ("row", tensor) | ("obj", value)


# ---------------------------------------------------------------------------------------- export
def copy_partitions(partitions: Mapping[str, Any], resolve: Callable[[Cell], Cell]) -> dict[str, _Copied]:
    """What a snapshot needs of the store's partitions; call it under the store's lock (cheap:
    ``resolve`` turns each stored cell into an immutable resolved one; tag dicts are replaced, never
    edited, by the store, so they and the cursors are copied one level)."""
    return {pid: _copy_partition(part, resolve) for pid, part in partitions.items()}


def export_state(copied: Mapping[str, _Copied]) -> StoreSnapshot:
    """A snapshot of every partition :func:`copy_partitions` copied (kvplane's own included);
    builds the column blocks outside the store's lock."""
    return StoreSnapshot({pid: _snapshot_partition(*parts) for pid, parts in copied.items()})


_Copied = tuple[
    list[str], list[tuple[tuple[str, Cell], ...]], list[dict[str, Any]], dict[str, str], Declaration | None,
    dict[str, TaskState],
]  # fmt: skip


def _copy_partition(part: Any, resolve: Callable[[Cell], Cell]) -> _Copied:
    """What the snapshot needs of a partition, copied under the store's lock."""
    keys = list(part.records)
    rows = [tuple((name, resolve(cell)) for name, cell in part.row_items(k)) for k in keys]
    tags = [part.tags_of(k) for k in keys]
    position = {k: i for i, k in enumerate(keys)}
    tasks = {
        task: TaskState(part.claimed_total[task], _claimed(keys, position, queue))
        for task, queue in part.unclaimed.items()
    }
    return keys, rows, tags, dict(part.kinds), _copy_declaration(part.registration), tasks


def _copy_declaration(reg: Declaration | None) -> Declaration | None:
    if reg is None:
        return None
    enums = {k: list(v) for k, v in reg.enums.items()}
    tasks = list(reg.consumer_tasks)
    return Declaration(list(reg.fields), reg.num_samples, tasks, reg.grpo_group_size, enums)


def _claimed(keys: list[str], position: dict[str, int], queue: OrderedDict) -> list[int]:
    unclaimed = {position[k] for k in queue}
    return [i for i in range(len(keys)) if i not in unclaimed]


def _snapshot_partition(
    keys: list[str],
    rows: list[tuple[tuple[str, Cell], ...]],
    tags: list[dict[str, Any]],
    kinds: dict[str, str],
    registration: Declaration | None,
    tasks: dict[str, TaskState],
) -> PartitionSnapshot:
    layout_index: dict[tuple[str, ...], int] = {}
    layout_ids = []
    cells: dict[str, list[Cell]] = {name: [] for name in kinds}
    for row in rows:
        layout = tuple(name for name, _ in row)
        layout_ids.append(layout_index.setdefault(layout, len(layout_index)))
        for name, cell in row:
            cells[name].append(cell)
    fields = {name: FieldColumn(kind, _blocks(kind, cells[name])) for name, kind in kinds.items()}
    return PartitionSnapshot(keys, tags, list(layout_index), layout_ids, fields, registration, tasks)


def _blocks(kind: str, cells: list[Cell]) -> list[Block]:
    """A field's cells (in key order) as few blocks: chunk runs as views, the rest packed."""
    if kind == OBJECT_KIND:
        return [ObjectRows([c[1] for c in cells])] if cells else []
    blocks: list[Block] = []
    loose: list[torch.Tensor] = []
    i = 0
    while i < len(cells):
        cell = cells[i]
        if cell[0] != "chunk":
            loose.append(cell[1])
            i += 1
            continue
        chunk, first = cell[1], cell[2]
        j = i + 1
        while j < len(cells) and _continues(cells[j], chunk, first + j - i):
            j += 1
        run = chunk[first : first + j - i]
        if run.numel() * run.element_size() >= _VIEW_MIN_BYTES:
            blocks.extend(_pack(loose))
            loose = []
            blocks.append(DenseRows(run))
        else:
            loose.extend(run.unbind(0))
        i = j
    blocks.extend(_pack(loose))
    return blocks


def _continues(cell: Cell, chunk: torch.Tensor, row: int) -> bool:
    """Whether ``cell`` is row ``row`` of ``chunk`` (a run of keys stored from one put goes on)."""
    return cell[0] == "chunk" and cell[1] is chunk and cell[2] == row


def _pack(rows: list[torch.Tensor]) -> Iterator[Block]:
    """Consecutive rows of one shape → dense blocks; of one rank and inner shape → ragged blocks."""
    start = 0
    while start < len(rows):
        head = rows[start]
        end = start + 1
        same = True
        while end < len(rows):
            row = rows[end]
            jagged_ok = row.dim() == head.dim() > 0 and row.shape[1:] == head.shape[1:]
            if row.shape != head.shape and not jagged_ok:
                break
            same = same and row.shape == head.shape
            end += 1
        group = rows[start:end]
        if same:
            yield DenseRows(torch.stack(group))
        else:
            lengths = torch.tensor([0] + [r.shape[0] for r in group], dtype=torch.int64)
            yield RaggedRows(torch.cat(group), lengths.cumsum(0))
        start = end


# ---------------------------------------------------------------------------------------- import
def import_state(
    snapshot: StoreSnapshot, new_partition: Callable[..., Any], new_chunk: Callable[[torch.Tensor], Any]
) -> dict[str, Any]:
    """The store's partitions rebuilt from ``snapshot``: ``new_partition(registration=...)`` makes an
    empty one, ``new_chunk(tensor)`` the store's holder of a dense block (its cells are
    ``("chunk", holder, row)``). The caller
    swaps them in under its lock, so an error here changes nothing.

    Raises:
        DataPlaneBadRequest: The snapshot holds no storage (saved with ``include_storage=False``):
            the embedded backend keeps its data nowhere else, so it cannot be restored from it.
    """
    if not snapshot.storage_saved:
        raise DataPlaneBadRequest(
            "this checkpoint was saved with include_storage=False: it holds no data, and the embedded "
            "backend keeps its data nowhere else; save with include_storage=True"
        )
    return {pid: _build(part, new_partition, new_chunk) for pid, part in snapshot.partitions.items()}


def _cells(block: Block, new_chunk: Callable[[torch.Tensor], Any]) -> Iterator[Cell]:
    if isinstance(block, DenseRows):
        chunk = new_chunk(block.data)
        for r in range(len(block)):
            yield ("chunk", chunk, r)
    elif isinstance(block, RaggedRows):
        bounds = block.offsets.tolist()
        for a, b in zip(bounds, bounds[1:]):
            yield ("row", block.values[a:b])
    else:
        for value in block.values:
            yield ("obj", value)


def _build(
    snap: PartitionSnapshot, new_partition: Callable[..., Any], new_chunk: Callable[[torch.Tensor], Any]
) -> Any:
    part = new_partition(registration=snap.registration)
    part.kinds = {name: column.kind for name, column in snap.fields.items()}
    streams = {
        name: (c for b in column.blocks for c in _cells(b, new_chunk)) for name, column in snap.fields.items()
    }
    for key, tag, layout_id in zip(snap.keys, snap.tags, snap.layout_ids, strict=True):
        layout = snap.layouts[layout_id]
        try:
            cells = {name: next(streams[name]) for name in layout}
        except StopIteration:
            raise DataPlaneBadRequest(
                f"the snapshot's columns hold fewer rows than its keys (at key {key!r})"
            ) from None
        part.load(key, cells, dict(tag))
    for task, state in snap.tasks.items():
        claimed = set(state.claimed)
        part.unclaimed[task] = OrderedDict.fromkeys(k for i, k in enumerate(snap.keys) if i not in claimed)
        part.claimed_total[task] = state.claimed_total
    return part
