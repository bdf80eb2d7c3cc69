"""One partition of the embedded backend: compact per-key records, scan slots and group summaries.

A key's record is one tuple ``(slot, cols, row, schema, *tag values)``:

- ``cols`` is the :class:`Put` that wrote all of the key's fields (shared by every key of that put,
  the key's cells being row ``row`` of its columns), or, once a key's fields come from several puts,
  a dict ``{field: cell}`` of its own;
- the tags are the values of a tag-name tuple ``schema`` interned per partition, so keys tagged
  alike share one schema and no per-key dict is kept;
- ``slot`` is the key's position in :attr:`Partition.slots`, fixed while the key lives (freed slots
  are reused), which is what a cursor listing (:meth:`Partition.scan`) walks: a key present for a
  whole scan is returned exactly once.

:class:`~kvplane._groupindex.GroupIndex` keeps the groups up to date on every put and clear; the kv
bench measures kvplane's bytes per key (``memory_per_key``). Call every method with the lock held.

Examples:
    >>> import torch
    >>> part = Partition()
    >>> put = Put({"x": own_column(torch.arange(3))})
    >>> part.write(["a", "b", "c"], put, [{"group_id": "g"}] * 3)
    >>> part.tags_of("b"), [name for name, _ in part.row_items("b")]
    ({'group_id': 'g'}, ['x'])
    >>> part.scan(0, 2, None)
    (2, ['a', 'b'])
    >>> part.scan(2, 2, None)
    (0, ['c'])
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from functools import cache, lru_cache
from typing import Any

import torch
from tensordict import is_non_tensor

from kvplane._errors import DataPlaneBadRequest, DataPlaneWriteError
from kvplane._groupindex import GroupIndex
from kvplane._tags import SCALARS, copy_tags
from kvplane._validation import Declaration

__all__ = [
    "Cell",
    "Chunk",
    "Partition",
    "Put",
    "own_column",
    "record_tags",
    "release",
    "resolve",
    "tags_builder",
]

# A cell: ("chunk", Chunk, slot) — a row of a put's dense column; ("row", tensor) — a standalone row
# (from a jagged column); ("obj", value) — a Python object. Read paths resolve a chunk cell under the
# lock into ("chunk", tensor, row) (see Chunk.resolve).
Cell = tuple

_TAGS = 4  # record[_TAGS:] are the tag values
_INTS: list[int] = []  # shared int objects for rows within a put (a row number costs no memory per key)
_INTS_GROWING = threading.Lock()  # stores of different clients grow it from different threads


@cache
def _literal_maker(width: int) -> Callable[..., Callable[[tuple], dict[str, Any]]]:
    """``make(*names)`` → ``lambda record: {names[0]: record[4], ...}`` for ``width`` tag names.

    The source holds only indices (the names are closure cells), so it is the same for every schema
    of one width; a dict literal builds a record's tags 2-3× faster than ``dict(zip(...))``.
    """
    names = [f"n{i}" for i in range(width)]
    body = ", ".join(f"{name}: r[{_TAGS + i}]" for i, name in enumerate(names))
    scope: dict[str, Any] = {}
    exec(f"def make({', '.join(names)}):\n    return lambda r: {{{body}}}\n", scope)  # noqa: S102
    return scope["make"]


@lru_cache(maxsize=4096)
def tags_builder(schema: tuple[str, ...]) -> Callable[[tuple], dict[str, Any]]:
    """The function that turns a record with tag names ``schema`` into a new tag dict.

    Examples:
        >>> tags_builder(("group_id", "seq_len"))((0, None, None, ("group_id", "seq_len"), "g", 7))
        {'group_id': 'g', 'seq_len': 7}
    """
    return _literal_maker(len(schema))(*schema)


def record_tags(records: Iterable[tuple]) -> list[dict[str, Any]]:
    """New tag dicts of ``records`` (values shared), with one builder lookup per run of one schema."""
    out, schema, build = [], None, None
    for rec in records:
        if rec[3] is not schema:
            schema = rec[3]
            build = tags_builder(schema)
        out.append(build(rec))  # type: ignore[misc]
    return out


def _ints(n: int) -> list[int]:
    if len(_INTS) < n:
        with _INTS_GROWING:
            _INTS.extend(range(len(_INTS), n))
    return _INTS


class Chunk:
    """One put's copy of a dense column. Each key's cell names its *slot* (its row in that put).

    The tensor is never edited in place: :meth:`release` replaces it with a compacted copy once at
    most half of its rows are live, so a reader that resolved its rows earlier keeps reading the old,
    unchanged tensor.
    """

    __slots__ = ("rows", "tensor")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        self.rows: dict[int, int] | None = None  # live slot -> row of tensor; None: every slot, row == slot

    def resolve(self, slot: int) -> Cell:
        return ("chunk", self.tensor, slot if self.rows is None else self.rows[slot])

    def release(self, slot: int) -> None:
        """Forget ``slot``; compact when at most half of the tensor's rows are still live."""
        if self.rows is None:
            self.rows = {i: i for i in range(self.tensor.shape[0])}
        del self.rows[slot]
        if self.rows and 2 * len(self.rows) <= self.tensor.shape[0]:
            live = sorted(self.rows, key=self.rows.__getitem__)
            index = torch.tensor([self.rows[s] for s in live], dtype=torch.long)
            self.tensor = self.tensor.index_select(0, index)
            self.rows = {s: i for i, s in enumerate(live)}


class Put:
    """One put's owned columns: ``{field: ("chunk", Chunk) | ("rows", rows) | ("objs", values)}``."""

    __slots__ = ("cols", "names")

    def __init__(self, cols: dict[str, tuple[str, Any]]) -> None:
        self.cols = cols
        self.names = tuple(cols)

    def cell(self, name: str, row: int) -> Cell:
        form, data = self.cols[name]
        if form == "chunk":
            return ("chunk", data, row)
        return ("row" if form == "rows" else "obj", data[row])

    def release(self, name: str, row: int) -> None:
        form, data = self.cols[name]
        if form == "chunk":
            data.release(row)
        else:
            data[row] = None  # the row's tensor or object is freed with its key


_NO_FIELDS = Put({})


def own_column(value: Any) -> tuple[str, Any]:
    """Copy a validated column into storage form (outside the lock)."""
    if isinstance(value, torch.Tensor):
        if value.is_nested:  # one copy per row, so each row's memory is freed with its key
            return "rows", [row.clone() for row in value.detach().unbind()]
        return "chunk", Chunk(value.detach().clone())
    if is_non_tensor(value):
        values = value.tolist()
        try:
            return "objs", copy.deepcopy(values)
        except Exception as exc:  # a lock, a generator, a socket...: anything deepcopy cannot copy
            raise DataPlaneWriteError(
                f"a value of this column cannot be copied into the store ({type(exc).__name__}: {exc}); "
                "store plain data (tensors, numbers, strings, lists, dicts)"
            ) from exc
    raise DataPlaneBadRequest(f"cannot store a column of type {type(value).__name__}")


def release(cell: Cell) -> None:
    """Forget a cell of a key's own dict (a chunk row is released; other cells just go)."""
    if cell[0] == "chunk":
        cell[1].release(cell[2])


def resolve(cell: Cell) -> Cell:
    """A cell that stays valid after the lock is released."""
    return cell[1].resolve(cell[2]) if cell[0] == "chunk" else cell


class Partition:
    """One partition's keys, fields, tags, claim cursors and group summaries (see the module doc)."""

    def __init__(self, registration: Declaration | None = None) -> None:
        self.registration = registration
        self.records: dict[str, tuple] = {}  # key -> (slot, cols, row, schema, *tag values), write order
        self.slots: list[str | None] = []  # slot -> key (None: free)
        self.free: list[int] = []
        self.schemas: dict[tuple[str, ...], tuple[str, ...]] = {}
        self.nested: set[str] = set()  # keys whose tags hold a non-scalar (copied deeply)
        self.kinds: dict[str, str] = {}  # field -> dtype fixed by its first write
        # task -> unclaimed keys in write order. An OrderedDict: claims delete from the front, and a plain
        # dict's iteration would walk every deleted slot before the first live one (quadratic over a stream).
        self.unclaimed: dict[str, OrderedDict[str, None]] = {}
        self.holders: dict[str, int] = {}  # field -> live keys holding it (claim fast path)
        self.claimed_total: dict[str, int] = {}  # task -> samples ever claimed
        self.groups = GroupIndex(self.tags_of)

    def task_queue(self, task: str) -> OrderedDict[str, None]:
        queue = self.unclaimed.get(task)
        if queue is None:
            queue = self.unclaimed[task] = OrderedDict.fromkeys(self.records)
            self.claimed_total[task] = 0
        return queue

    # ------------------------------------------------------------------ reading a record
    def tags_of(self, key: str) -> dict[str, Any] | None:
        """The key's tags as a new dict (values shared with the store), or ``None`` if absent."""
        rec = self.records.get(key)
        return None if rec is None else tags_builder(rec[3])(rec)

    def tag_dicts(self, keys: list[str]) -> list[dict[str, Any]]:
        """Tag dicts of present ``keys`` to hand out: new dicts, and new containers where a tag holds one."""
        tags = record_tags(map(self.records.__getitem__, keys))
        if self.nested:
            tags = [copy_tags(t) if k in self.nested else t for k, t in zip(keys, tags, strict=True)]
        return tags

    def fields_of(self, key: str) -> Any:
        """The names of the fields ``key`` holds (a tuple or a dict's keys)."""
        cols = self.records[key][1]
        return cols.names if type(cols) is Put else cols.keys()

    def cell(self, key: str, name: str) -> Cell | None:
        _, cols, row = self.records[key][:3]
        if type(cols) is Put:
            return cols.cell(name, row) if name in cols.cols else None
        return cols.get(name)

    def put_columns(self, keys: list[str], names: list[str] | None) -> dict[str, Any] | None:
        """Columns ``names`` (``None``: all) of present ``keys`` when one put wrote every one of them
        for every key (a batch read back as it was put), else ``None``. A dense column comes as
        ``(tensor, rows)``, resolved (it stays valid after the lock); any other as the keys' cells.
        """
        recs = list(map(self.records.__getitem__, keys))
        cols = recs[0][1]
        if type(cols) is not Put or not cols.names or any(rec[1] is not cols for rec in recs):
            return None
        if names is None:
            names = list(cols.names)
        elif not all(name in cols.cols for name in names):
            return None
        rows = [rec[2] for rec in recs]
        columns: dict[str, Any] = {}
        for name in names:
            form, data = cols.cols[name]
            if form == "chunk":
                live = data.rows
                columns[name] = (data.tensor, rows if live is None else [live[row] for row in rows])
            else:
                columns[name] = [cols.cell(name, row) for row in rows]
        return columns

    def row_items(self, key: str) -> list[tuple[str, Cell]]:
        _, cols, row = self.records[key][:3]
        if type(cols) is Put:
            return [(name, cols.cell(name, row)) for name in cols.names]
        return list(cols.items())

    def tensors(self) -> Iterator[torch.Tensor]:
        """Every tensor the partition keeps (a shared one repeatedly)."""
        for _, cols, row, *_ in self.records.values():
            for _, cell in self._items(cols, row):
                if cell[0] == "chunk":
                    yield cell[1].tensor
                elif cell[0] == "row":
                    yield cell[1]

    @staticmethod
    def _items(cols: Any, row: int | None) -> list[tuple[str, Cell]]:
        return [(n, cols.cell(n, row)) for n in cols.names] if type(cols) is Put else list(cols.items())

    # ------------------------------------------------------------------ changing records
    def write(self, keys: list[str], put: Put | None, tag_list: list[dict[str, Any]] | None) -> None:
        """Store a validated write: ``put``'s rows for ``keys`` (``None``: tags only), tags merged."""
        put = put if put is not None and put.names else None
        rows = _ints(len(keys))
        records, schemas = self.records, self.schemas
        changes = []
        for i, key in enumerate(keys):
            rec = records.get(key)
            if rec is None:
                slot = self._take_slot(key)
                cols, row, old = _NO_FIELDS, None, None
                for queue in self.unclaimed.values():
                    queue[key] = None
            else:
                slot, cols, row = rec[:3]
                old = tags_builder(rec[3])(rec)
            if put is not None:
                cols, row = self._with_fields(cols, row, put, rows[i])
            tags = old if old is not None else {}
            if tag_list is not None:
                tag = tag_list[i]
                tags = {**tags, **tag}
                if any(type(v) not in SCALARS for v in tag.values()):
                    self.nested.add(key)
            schema = tuple(tags)
            schema = schemas.setdefault(schema, schema)
            records[key] = (slot, cols, row, schema, *tags.values())
            if old is None or tag_list is not None:
                changes.append((key, old, tags))
        self.groups.apply(changes)

    def _with_fields(self, cols: Any, row: int | None, put: Put, new_row: int) -> tuple[Any, int | None]:
        """A key's (cols, row) after ``put`` writes its row ``new_row``; old cells are released."""
        names = put.names
        holders = self.holders
        if type(cols) is Put and all(n in put.cols for n in cols.names):  # every old field replaced
            for name in cols.names:
                cols.release(name, row)
            for name in names:
                if name not in cols.cols:
                    holders[name] = holders.get(name, 0) + 1
            return put, new_row
        own = dict(self._items(cols, row))
        if type(cols) is Put:  # the key leaves its shared put: its kept rows become its own cells
            for name in cols.names:
                if name in put.cols:
                    cols.release(name, row)
                elif cols.cols[name][0] != "chunk":
                    cols.cols[name][1][row] = None
        else:
            for name in names:
                if name in own:
                    release(own[name])
        for name in names:
            if name not in own:
                holders[name] = holders.get(name, 0) + 1
            own[name] = put.cell(name, new_row)
        return own, None

    def load(self, key: str, cells: dict[str, Cell], tags: dict[str, Any]) -> None:
        """Add a key restored from a checkpoint (its cells its own), without group bookkeeping."""
        schema = tuple(tags)
        schema = self.schemas.setdefault(schema, schema)
        self.records[key] = (self._take_slot(key), cells, None, schema, *tags.values())
        if any(type(v) not in SCALARS for v in tags.values()):
            self.nested.add(key)
        for name in cells:
            self.holders[name] = self.holders.get(name, 0) + 1

    def reindex(self) -> None:
        """Build the group summaries from scratch (after :meth:`load`)."""
        self.groups = GroupIndex(self.tags_of)
        self.groups.apply((key, None, self.tags_of(key)) for key in self.records)

    def remove(self, keys: list[str]) -> None:
        """Remove keys (absent ones are skipped)."""
        changes = []
        for key in keys:
            rec = self.records.pop(key, None)
            if rec is None:
                continue
            slot, cols, row = rec[:3]
            for name, cell in self._items(cols, row):
                self.holders[name] -= 1
                if type(cols) is Put:
                    cols.release(name, row)
                else:
                    release(cell)
            self.slots[slot] = None
            self.free.append(slot)
            self.nested.discard(key)
            for queue in self.unclaimed.values():
                queue.pop(key, None)
            changes.append((key, tags_builder(rec[3])(rec), None))
        self.groups.apply(changes)

    def _take_slot(self, key: str) -> int:
        if self.free:
            slot = self.free.pop()
            self.slots[slot] = key
        else:
            slot = len(self.slots)
            self.slots.append(key)
        return slot

    # ------------------------------------------------------------------ cursor listing
    def scan(self, cursor: int, count: int, match: str | None) -> tuple[int, list[str]]:
        """Up to ``count`` slots from ``cursor`` on: ``(next cursor or 0 when done, their keys)``."""
        end = cursor + count
        window = self.slots[cursor:end]
        if match is None:
            keys = [k for k in window if k is not None]
        else:
            keys = [k for k in window if k is not None and k.startswith(match)]
        return (end if end < len(self.slots) else 0), keys
