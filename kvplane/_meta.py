"""Metadata records that travel instead of tensors.

:class:`KVBatchMeta` names a batch of samples in one partition. It has two faces on one class:
NeMo-RL's (seven fields in order: ``partition_id, task_name, sample_ids, fields, sequence_lengths,
extra_info, tags``; ``subset``/``slice``/``concat``/``drop``/``with_fields``/``stamp_tags``) and
TransferQueue 0.1.11's (``KVBatchMeta(keys=..., tags=..., partition_id=..., fields=...,
extra_info=...)``; ``keys``, ``select_keys``, ``reorder``, ``chunk``, ``KVBatchMeta.concat([...])``).
:class:`DataPlaneGroupMeta` describes one rollout group derived from per-key tags;
:class:`DataPlaneCapabilities` says what a backend guarantees.

A meta owns its lists: the constructor copies ``tags`` and ``extra_info`` (TransferQueue's form
deep-copies them, as TransferQueue does), and every transform except the in-place ``reorder`` and
``stamp_tags`` returns a new meta with its own lists and tag dicts, so editing one meta never changes
another.

Examples:
    >>> from kvplane import KVBatchMeta
    >>> meta = KVBatchMeta("train", None, ["a", "b", "c"], fields=["x"], sequence_lengths=[5, 7, 9])
    >>> meta.stamp_tags({"group_id": ["g0", "g0", "g1"]})
    >>> meta.subset([2, 0]).sample_ids, meta.subset([2, 0]).tags
    (['c', 'a'], [{'group_id': 'g1'}, {'group_id': 'g0'}])
    >>> meta.slice(1, None).sequence_lengths
    [7, 9]
    >>> meta.drop([0, 1]).sample_ids
    ['c']
    >>> meta.with_fields(["y", "x"]).fields
    ['x', 'y']

    TransferQueue's face on the same class:

    >>> tq_meta = KVBatchMeta(keys=["k0", "k1", "k2"], tags=[{}, {}, {}], partition_id="train", fields=["x"])
    >>> tq_meta.keys == tq_meta.sample_ids, [len(c) for c in tq_meta.chunk(2)]
    (True, [2, 1])
    >>> print(KVBatchMeta.concat(tq_meta.chunk(2)))
    KVBatchMeta(size=3, field_names=['x'], extra_info={})
"""

from __future__ import annotations

import copy
import logging
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from kvplane._errors import DataPlaneBadRequest, DataPlaneKeyError

__all__ = ["DataPlaneCapabilities", "DataPlaneGroupMeta", "KVBatchMeta"]

logger = logging.getLogger(__name__)


def _same_value(a: Any, b: Any) -> bool:
    """Whether two ``extra_info`` values agree (tensors by value; incomparable values never agree)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return bool(np.array_equal(a, b))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - an ambiguous comparison (arrays, ...) is a disagreement
        return False


class _ConcatMethod:
    """``concat`` on the class is TransferQueue's ``KVBatchMeta.concat(list)``; on a meta it is
    NeMo-RL's ``meta.concat(*others)`` (a single list argument there means TransferQueue's form,
    as calling a classmethod through an instance does)."""

    def __get__(self, obj: KVBatchMeta | None, objtype: type[KVBatchMeta] | None = None) -> Callable[..., Any]:
        if obj is None:
            return types.MethodType(_concat_list, objtype)
        return types.MethodType(_concat_rows, obj)


@dataclass(init=False)
class KVBatchMeta:
    """A batch of samples in one partition, by key, with optional per-sample lengths and tags.

    Two ways to build one (``sample_ids`` given or not decides which rules apply):

    * NeMo-RL's: ``KVBatchMeta(partition_id, task_name, sample_ids, fields=None,
      sequence_lengths=None, extra_info=None, tags=None)``. ``tags`` may be ``None`` (no tags) and
      ``sample_ids`` may repeat (``size`` counts repeats).
    * TransferQueue's: ``KVBatchMeta(keys=[...], tags=[...], partition_id=None, fields=None,
      extra_info=None)``; everything optional (``KVBatchMeta()`` is empty). ``tags`` default to
      ``[]`` and must give one dict per key; keys and fields must be unique.

    ``keys`` is ``sample_ids`` under TransferQueue's name (a property, assignable). In both forms
    ``fields`` must not repeat a name, ``tags``/``sequence_lengths`` align 1:1 with the samples, and
    ``tags``/``extra_info`` are copied (``extra_info=None`` becomes ``{}``): one level deep in
    NeMo-RL's form (tag values may be any object), deep in TransferQueue's form (as TransferQueue).

    Args:
        partition_id: The partition the samples live in.
        task_name: The consumer task that claimed them, or ``None`` for direct-by-key metas.
        sample_ids: The sample keys, in batch order.
        fields: The field names the batch refers to, or ``None``.
        sequence_lengths: One length per sample (from the ``seq_len`` tag on claimed metas), or ``None``.
        extra_info: Free-form per-batch information (balancing plans, step counters, ...).
        tags: One tag dict per sample, aligned 1:1 with the samples, or ``None``.
        keys: TransferQueue's name for ``sample_ids`` (pass one of the two).

    Raises:
        DataPlaneBadRequest: (a ``ValueError``) misaligned ``tags``/``sequence_lengths``, repeated
            fields, both ``keys`` and ``sample_ids``; in TransferQueue's form also repeated keys or
            tags/extra_info that cannot be deep-copied.

    Examples:
        >>> KVBatchMeta(keys=["a", "a"], tags=[{}, {}])
        Traceback (most recent call last):
        ...
        kvplane._errors.DataPlaneBadRequest: Got duplicated keys.
        >>> KVBatchMeta("p", None, ["a", "a"]).size    # NeMo-RL's form counts repeats
        2
    """

    partition_id: str | None
    task_name: str | None
    sample_ids: list[str]
    fields: list[str] | None = None
    sequence_lengths: list[int] | None = None
    extra_info: dict[str, Any] = field(default_factory=dict)
    tags: list[dict[str, Any]] | None = None

    def __init__(
        self,
        partition_id: str | None = None,
        task_name: str | None = None,
        sample_ids: Sequence[str] | None = None,
        fields: Sequence[str] | None = None,
        sequence_lengths: Sequence[int] | None = None,
        extra_info: Mapping[str, Any] | None = None,
        tags: Sequence[Mapping[str, Any]] | None = None,
        *,
        keys: Sequence[str] | None = None,
    ) -> None:
        try:
            self._init(partition_id, task_name, sample_ids, fields, sequence_lengths, extra_info, tags, keys)
        except DataPlaneBadRequest:
            raise
        except (TypeError, ValueError, RuntimeError) as exc:  # a value of the wrong type (no len(), ...)
            raise DataPlaneBadRequest(f"KVBatchMeta: invalid argument: {exc}") from exc

    def _init(
        self,
        partition_id: Any,
        task_name: Any,
        sample_ids: Any,
        fields: Any,
        sequence_lengths: Any,
        extra_info: Any,
        tags: Any,
        keys: Any,
    ) -> None:
        if keys is not None and sample_ids is not None:
            raise DataPlaneBadRequest("KVBatchMeta: pass keys or sample_ids, not both (they are one field)")
        transfer_queue_form = sample_ids is None
        ids = list(keys if transfer_queue_form and keys is not None else sample_ids or [])
        if transfer_queue_form:
            tags = [] if tags is None else tags
            if len(ids) != len(tags):
                raise DataPlaneBadRequest(
                    f"keys and tags must have same length, but got {len(ids)} and {len(tags)}"
                )
            if len(set(ids)) != len(ids):
                raise DataPlaneBadRequest("Got duplicated keys.")
        elif tags is not None and len(tags) != len(ids):
            raise DataPlaneBadRequest(
                f"KVBatchMeta: tags must align 1:1 with sample_ids ({len(tags)} tags for {len(ids)} sample ids)"
            )
        if sequence_lengths is not None and len(sequence_lengths) != len(ids):
            raise DataPlaneBadRequest(
                f"KVBatchMeta: sequence_lengths must align 1:1 with sample_ids "
                f"({len(sequence_lengths)} lengths for {len(ids)} sample ids)"
            )
        if fields is not None and len(set(fields)) != len(fields):
            raise DataPlaneBadRequest("Got duplicated fields.")
        self.partition_id = partition_id
        self.task_name = task_name
        self.sample_ids = ids
        self.fields = None if fields is None else list(fields)
        self.sequence_lengths = None if sequence_lengths is None else list(sequence_lengths)
        self.extra_info = dict(extra_info or {})
        self.tags = None if tags is None else [dict(t) for t in tags]
        if transfer_queue_form:
            try:
                self.extra_info, self.tags = copy.deepcopy((self.extra_info, self.tags))
            except Exception as exc:  # noqa: BLE001 - whatever deepcopy raises, the input is the cause
                raise DataPlaneBadRequest(f"KVBatchMeta: tags and extra_info must be deep-copyable: {exc}") from exc

    @property
    def keys(self) -> list[str]:
        """The sample keys (TransferQueue's name for :attr:`sample_ids`; the same list)."""
        return self.sample_ids

    @keys.setter
    def keys(self, value: Sequence[str]) -> None:
        self.sample_ids = list(value)

    @property
    def size(self) -> int:
        """The number of samples."""
        return len(self.sample_ids)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __str__(self) -> str:
        return f"KVBatchMeta(size={self.size}, field_names={self.fields}, extra_info={self.extra_info})"

    def stamp_tags(self, scalars: Mapping[str, Sequence[Any]]) -> None:
        """Set per-sample tag values in place: ``tags[i][name] = values[i]``.

        Args:
            scalars: For each tag name, one value per sample.

        Raises:
            DataPlaneBadRequest: A value list does not have ``size`` entries.

        Examples:
            >>> m = KVBatchMeta("p", None, ["a", "b"])
            >>> m.stamp_tags({"seq_len": [3, 4]}); m.tags
            [{'seq_len': 3}, {'seq_len': 4}]
        """
        for name, values in scalars.items():
            if len(values) != self.size:
                raise DataPlaneBadRequest(
                    f"stamp_tags: {name!r} has {len(values)} values, expected {self.size}"
                )
        if self.tags is None:
            self.tags = [{} for _ in range(self.size)]
        for name, values in scalars.items():
            for tag, value in zip(self.tags, values, strict=True):
                tag[name] = value

    def _replace(
        self,
        sample_ids: list[str],
        sequence_lengths: list[int] | None,
        tags: list[dict[str, Any]] | None,
        fields: list[str] | None = None,
    ) -> KVBatchMeta:
        """A meta with these rows and this meta's other fields, every list and dict copied one level.

        Rows taken from a valid meta stay aligned, so the constructor's checks are not re-run.
        """
        out = copy.copy(self)
        out.sample_ids = list(sample_ids)
        fields = self.fields if fields is None else fields
        out.fields = None if fields is None else list(fields)
        out.sequence_lengths = None if sequence_lengths is None else list(sequence_lengths)
        out.extra_info = dict(self.extra_info)
        out.tags = None if tags is None else [dict(t) for t in tags]
        return out

    def subset(self, indices: Sequence[int]) -> KVBatchMeta:
        """The rows at ``indices``, in that order (repeats allowed; out of range raises IndexError)."""
        idx = [int(i) for i in indices]
        n = len(self.sample_ids)
        if idx and not (-n <= min(idx) and max(idx) < n):
            bad = next(i for i in idx if not -n <= i < n)
            raise IndexError(f"KVBatchMeta.subset: index {bad} out of range for size {n}")
        ids, lengths, tags = self.sample_ids, self.sequence_lengths, self.tags
        return self._replace(
            [ids[i] for i in idx],
            None if lengths is None else [lengths[i] for i in idx],
            None if tags is None else [tags[i] for i in idx],
        )

    def slice(self, start: int | None, stop: int | None) -> KVBatchMeta:
        """The rows ``[start:stop]`` with Python slice semantics."""
        sl = slice(start, stop)
        return self._replace(
            self.sample_ids[sl],
            None if self.sequence_lengths is None else self.sequence_lengths[sl],
            None if self.tags is None else self.tags[sl],
        )

    # ``meta.concat(*others)`` (NeMo-RL) and ``KVBatchMeta.concat([...])`` (TransferQueue):
    # see _concat_rows and _concat_list below.
    concat = _ConcatMethod()

    def drop(self, indices: Iterable[int]) -> KVBatchMeta | None:
        """Every row not in ``indices``, in original order; ``None`` when nothing remains.

        Out-of-range indices are ignored; order and repeats do not matter.
        """
        gone = {int(i) for i in indices}
        keep = [i for i in range(self.size) if i not in gone]
        if not keep and self.size:
            return None
        return self.subset(keep)

    def with_fields(self, names: Iterable[str]) -> KVBatchMeta:
        """A copy whose ``fields`` add ``names`` (order kept, duplicates dropped)."""
        merged = list(dict.fromkeys([*(self.fields or []), *names]))
        return self._replace(self.sample_ids, self.sequence_lengths, self.tags, fields=merged)

    def select_keys(self, keys_to_select: Sequence[str]) -> KVBatchMeta:
        """The rows of ``keys_to_select``, in that order (TransferQueue's ``select_keys``).

        Raises:
            DataPlaneBadRequest: ``keys_to_select`` repeats a key.
            DataPlaneKeyError: A key is not in this batch (also a ``RuntimeError``, as TransferQueue raises).

        Examples:
            >>> m = KVBatchMeta(keys=["a", "b", "c"], tags=[{"i": 0}, {"i": 1}, {"i": 2}])
            >>> m.select_keys(["c", "a"]).tags
            [{'i': 2}, {'i': 0}]
        """
        wanted = list(keys_to_select)
        if len(set(wanted)) != len(wanted):
            raise DataPlaneBadRequest("Contain duplicate keys.")
        position: dict[str, int] = {}
        for i, key in enumerate(self.sample_ids):
            position.setdefault(key, i)
        absent = [k for k in wanted if k not in position]
        if absent:
            raise DataPlaneKeyError(f"Keys {absent} not found in current batch.")
        return self.subset([position[k] for k in wanted])

    def reorder(self, indexes: Sequence[int]) -> None:
        """Put the rows in the order ``indexes`` gives, in place (TransferQueue's ``reorder``).

        Raises:
            DataPlaneBadRequest: ``indexes`` is not one index per row, or repeats an index.
            IndexError: An index is out of range.

        Examples:
            >>> m = KVBatchMeta("p", None, ["a", "b", "c"], sequence_lengths=[1, 2, 3])
            >>> m.reorder([2, 0, 1]); m.sample_ids, m.sequence_lengths
            (['c', 'a', 'b'], [3, 1, 2])
        """
        order = [int(i) for i in indexes]
        if len(order) != self.size:
            raise DataPlaneBadRequest(
                f"Attempted to reorder with indexes length {len(order)} that does not match "
                f"the batch size {self.size}."
            )
        if len(set(order)) != len(order):
            raise DataPlaneBadRequest("Contain duplicate indexes.")
        moved = self.subset(order)
        self.sample_ids, self.sequence_lengths, self.tags = moved.sample_ids, moved.sequence_lengths, moved.tags

    def chunk(self, chunks: int) -> list[KVBatchMeta]:
        """Split into ``chunks`` consecutive metas (TransferQueue's ``chunk``).

        The first ``size % chunks`` chunks get one row more; with more chunks than rows the last ones
        are empty (logged as a warning, as TransferQueue does).

        Raises:
            DataPlaneBadRequest: ``chunks`` is not a positive integer.

        Examples:
            >>> [c.keys for c in KVBatchMeta(keys=["a", "b"], tags=[{}, {}]).chunk(3)]
            [['a'], ['b'], []]
        """
        if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
            raise DataPlaneBadRequest(f"KVBatchMeta.chunk: chunks must be a positive integer, got {chunks!r}")
        if self.size < chunks:
            logger.warning(
                "KVBatchMeta.chunk: %d chunks for %d samples; the last %d chunks are empty",
                chunks,
                self.size,
                chunks - self.size,
            )
        base, extra = divmod(self.size, chunks)
        out, start = [], 0
        for i in range(chunks):
            stop = start + base + (1 if i < extra else 0)
            out.append(self.slice(start, stop))
            start = stop
        return out


def _concat_rows(self: KVBatchMeta, *others: KVBatchMeta | Sequence[KVBatchMeta]) -> KVBatchMeta:
    """This meta's rows followed by each of ``others``' rows (NeMo-RL's ``meta.concat(*others)``).

    Every operand must share ``partition_id``. ``sequence_lengths`` and ``tags`` survive only when
    every operand has them; ``task_name``, ``fields`` and ``extra_info`` come from ``self``.
    ``meta.concat([a, b])`` (one list) is TransferQueue's ``KVBatchMeta.concat([a, b])``.
    """
    if len(others) == 1 and isinstance(others[0], (list, tuple)):
        return _concat_list(type(self), others[0])
    metas: list[KVBatchMeta] = [self]
    for other in others:
        if not isinstance(other, KVBatchMeta):
            raise DataPlaneBadRequest(f"KVBatchMeta.concat: expected KVBatchMeta, got {type(other).__name__}")
        if other.partition_id != self.partition_id:
            raise DataPlaneBadRequest(
                f"KVBatchMeta.concat: partition_ids must match ({self.partition_id!r} vs {other.partition_id!r})"
            )
        metas.append(other)
    lengths = None
    if all(m.sequence_lengths is not None for m in metas):
        lengths = [n for m in metas for n in m.sequence_lengths]  # type: ignore[union-attr]
    tags = None
    if all(m.tags is not None for m in metas):
        tags = [t for m in metas for t in m.tags]  # type: ignore[union-attr]
    return self._replace([k for m in metas for k in m.sample_ids], lengths, tags)


def _concat_list(cls: type[KVBatchMeta], data: Sequence[KVBatchMeta | None]) -> KVBatchMeta:
    """One meta from ``data``'s rows in order (TransferQueue's ``KVBatchMeta.concat(list)``).

    Empty (or ``None``) chunks are skipped; nothing left → an empty ``KVBatchMeta()``. The non-empty
    chunks must share ``partition_id`` and field set (a chunk with ``fields=None`` is not checked);
    ``extra_info`` is the union of theirs, and a key with different values raises. Fields and
    ``task_name`` come from the first non-empty chunk; lengths and tags as for ``meta.concat``.

    Raises:
        DataPlaneBadRequest: Partition or field set mismatch; conflicting ``extra_info``; a key in
            two chunks.
    """
    chunks = [m for m in data if m is not None and m.size > 0]
    if not chunks:
        logger.warning("KVBatchMeta.concat: no non-empty chunks to concatenate; returning an empty KVBatchMeta")
        return cls()
    first = chunks[0]
    base_fields = set(first.fields or [])
    for chunk in chunks:
        if chunk.fields is not None and set(chunk.fields) != base_fields:
            raise DataPlaneBadRequest(
                f"Field names do not match for concatenation: {first.fields} vs {chunk.fields}"
            )
        if chunk.partition_id != first.partition_id:
            raise DataPlaneBadRequest(
                f"Partition do not match for concatenation: {first.partition_id!r} vs {chunk.partition_id!r}"
            )
    merged: dict[str, Any] = {}
    for chunk in chunks:
        for key, value in chunk.extra_info.items():
            if key in merged and not _same_value(merged[key], value):
                raise DataPlaneBadRequest(
                    f"KVBatchMeta.concat: extra_info key {key!r} has conflicting values across chunks "
                    f"({merged[key]!r} vs {value!r})"
                )
            merged.setdefault(key, value)
    out = _concat_rows(first, *chunks[1:])
    if len(set(out.sample_ids)) != out.size:
        raise DataPlaneBadRequest("Got duplicated keys.")
    out.extra_info = copy.deepcopy(merged)
    return out
@dataclass(frozen=True)
class DataPlaneCapabilities:
    """What a backend guarantees (reported honestly per backend by ``get_capabilities``).

    Attributes:
        supports_persistent_recovery: Data survives the loss of the serving processes.
        supports_server_side_filtering: Claims can filter by tag inside the backend.
        supports_atomic_batch_put: A batch put lands whole or not at all, and readers never see
            a partly written batch.
        supports_verified_clear: A clear returns only after the data is gone everywhere.
    """

    supports_persistent_recovery: bool = False
    supports_server_side_filtering: bool = False
    supports_atomic_batch_put: bool = False
    supports_verified_clear: bool = False


@dataclass(frozen=True)
class DataPlaneGroupMeta:
    """One rollout group, derived from the tags of its keys (no tensor is read).

    ``is_complete`` is True when ``expected_num_keys`` is unknown or equals ``len(keys)``.
    """

    partition_id: str
    group_id: str
    keys: list[str]
    weight_version: int | None
    created_at: float | None
    committed: bool
    expected_num_keys: int | None = None
    size_bytes: int | None = None
    tags: dict[str, Any] = field(default_factory=dict)

    @property
    def is_complete(self) -> bool:
        """True when all the keys the group expects are present."""
        return self.expected_num_keys is None or len(self.keys) == self.expected_num_keys
