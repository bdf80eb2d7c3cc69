"""Metadata records that travel instead of tensors.

:class:`KVBatchMeta` names a batch of samples in one partition (NeMo-RL's seven fields, in order);
:class:`DataPlaneGroupMeta` describes one rollout group derived from per-key tags;
:class:`DataPlaneCapabilities` says what a backend guarantees.

Every transform on :class:`KVBatchMeta` is pure: it returns a new meta whose lists and tag dicts are
independent copies, so editing one meta never changes another.

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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvplane.errors import DataPlaneBadRequest

__all__ = ["DataPlaneCapabilities", "DataPlaneGroupMeta", "KVBatchMeta"]


def _copy_tags(tags: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [dict(t) for t in tags]


@dataclass
class KVBatchMeta:
    """A batch of samples in one partition, by id, with optional per-sample lengths and tags.

    Args:
        partition_id: The partition the samples live in.
        task_name: The consumer task that claimed them, or ``None`` for direct-by-key metas.
        sample_ids: The sample keys, in batch order. Duplicates are allowed (``size`` counts them).
        fields: The field names the batch refers to, or ``None``.
        sequence_lengths: One length per sample (from the ``seq_len`` tag on claimed metas), or ``None``.
        extra_info: Free-form per-batch information (balancing plans, step counters, ...).
        tags: One tag dict per sample, aligned 1:1 with ``sample_ids``, or ``None``.

    Raises:
        DataPlaneBadRequest: ``tags`` (or ``sequence_lengths``) do not align 1:1 with ``sample_ids``.
    """

    partition_id: str
    task_name: str | None
    sample_ids: list[str]
    fields: list[str] | None = None
    sequence_lengths: list[int] | None = None
    extra_info: dict[str, Any] = field(default_factory=dict)
    tags: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        self.sample_ids = list(self.sample_ids)
        if self.tags is not None and len(self.tags) != len(self.sample_ids):
            raise DataPlaneBadRequest(
                f"KVBatchMeta: tags must align 1:1 with sample_ids "
                f"({len(self.tags)} tags for {len(self.sample_ids)} sample ids)"
            )
        if self.sequence_lengths is not None and len(self.sequence_lengths) != len(self.sample_ids):
            raise DataPlaneBadRequest(
                f"KVBatchMeta: sequence_lengths must align 1:1 with sample_ids "
                f"({len(self.sequence_lengths)} lengths for {len(self.sample_ids)} sample ids)"
            )

    @property
    def size(self) -> int:
        """The number of samples (duplicates counted)."""
        return len(self.sample_ids)

    def __len__(self) -> int:
        return len(self.sample_ids)

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
        fields = self.fields if fields is None else fields
        return KVBatchMeta(
            partition_id=self.partition_id,
            task_name=self.task_name,
            sample_ids=sample_ids,
            fields=None if fields is None else list(fields),
            sequence_lengths=sequence_lengths,
            extra_info=dict(self.extra_info),
            tags=tags,
        )

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
            None if tags is None else [dict(tags[i]) for i in idx],
        )

    def slice(self, start: int | None, stop: int | None) -> KVBatchMeta:
        """The rows ``[start:stop]`` with Python slice semantics."""
        sl = slice(start, stop)
        return self._replace(
            self.sample_ids[sl],
            None if self.sequence_lengths is None else list(self.sequence_lengths[sl]),
            None if self.tags is None else _copy_tags(self.tags[sl]),
        )

    def concat(self, *others: KVBatchMeta) -> KVBatchMeta:
        """This meta's rows followed by each of ``others``' rows (same partition required).

        ``sequence_lengths`` and ``tags`` survive only when every operand has them; ``task_name``,
        ``fields`` and ``extra_info`` come from ``self``.
        """
        metas = (self, *others)
        for other in others:
            if other.partition_id != self.partition_id:
                raise DataPlaneBadRequest(
                    f"KVBatchMeta.concat: partition_ids must match "
                    f"({self.partition_id!r} vs {other.partition_id!r})"
                )
        lengths = None
        if all(m.sequence_lengths is not None for m in metas):
            lengths = [n for m in metas for n in m.sequence_lengths]  # type: ignore[union-attr]
        tags = None
        if all(m.tags is not None for m in metas):
            tags = [dict(t) for m in metas for t in m.tags]  # type: ignore[union-attr]
        return self._replace([k for m in metas for k in m.sample_ids], lengths, tags)

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
        return self._replace(
            list(self.sample_ids),
            None if self.sequence_lengths is None else list(self.sequence_lengths),
            None if self.tags is None else _copy_tags(self.tags),
            fields=merged,
        )


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
