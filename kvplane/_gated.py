"""``GatedDataPlaneClient``: the one validation gate every kvplane backend stands behind.

Each public method of the contract validates its arguments once (:mod:`kvplane._validation`),
answers the trivial cases itself (empty id lists, ``get_data``'s field choice, hiding kvplane's own
partitions from ``list_keys(None)``) and then calls the backend's protected implementation
(``_put_samples``, ``_claim_meta``, ...) with checked, normalised arguments. A backend therefore
cannot forget a check, and every backend rejects the same input with the same error.
:meth:`GatedDataPlaneClient._meta` builds every returned meta, so ``sequence_lengths`` follows one
rule (:func:`kvplane._groups.sequence_lengths`).

Examples:
    >>> from kvplane.adapters.memory import MemoryDataPlaneClient
    >>> client = MemoryDataPlaneClient()
    >>> client.get_samples(["a"], "p", 5)
    Traceback (most recent call last):
    ...
    kvplane._errors.DataPlaneBadRequest: select_fields must be a list of strings, got int
    >>> client.put_samples([], "p", None).sample_ids   # answered by the gate
    []
    >>> client.close()
"""

from __future__ import annotations

import os
from abc import abstractmethod
from pathlib import Path
from typing import Any

from tensordict import TensorDict

from kvplane._client import DataPlaneClient, FieldsLike, TagsLike
from kvplane._errors import DataPlaneBadRequest, DataPlaneTimeout
from kvplane._groups import groups_from_tags, sequence_lengths
from kvplane._meta import DataPlaneGroupMeta, KVBatchMeta
from kvplane._validation import (
    Declaration,
    check_claim,
    check_flag,
    check_ids,
    check_metadata,
    check_partition,
    check_path,
    check_registration,
    check_scan,
    check_select,
    check_timeout,
    check_write,
    is_internal_partition,
)

__all__ = ["GatedDataPlaneClient", "claim_timeout"]

Listing = dict[str, dict[str, dict[str, Any]]]


def claim_timeout(
    partition_id: str,
    task_name: str,
    batch_size: int,
    timeout_s: float,
    *,
    exists: bool | None,
    registration: Any,
    ready: int | None = None,
) -> DataPlaneTimeout:
    """The error a claim raises at its deadline, saying why no batch came and how to fix it.

    ``exists`` is ``None`` when the backend cannot tell; ``registration`` is the partition's
    declaration (anything with ``num_samples``) or ``None``; ``ready`` counts the unclaimed samples
    that hold the required fields, when known.

    Examples:
        >>> print(claim_timeout("p", "train", 8, 0.5, exists=False, registration=None))
        claim_meta(partition='p', task='train', batch_size=8): no batch became ready within 0.5s:
        partition 'p' was never registered and holds no samples; write samples to it, or call
        register_partition('p', fields, num_samples=N, consumer_tasks=['train']) first
    """
    head = f"claim_meta(partition={partition_id!r}, task={task_name!r}, batch_size={batch_size}): "
    head += f"no batch became ready within {timeout_s:g}s"
    have = "" if ready is None else f" ({ready} ready sample(s) waiting)"
    fix = f"register_partition({partition_id!r}, fields, num_samples=N, consumer_tasks=[{task_name!r}])"
    if registration is None and not exists:
        why = (
            f"partition {partition_id!r} was never registered"
            + (" and holds no samples; write samples to it, or call " if exists is False else "; call ")
            + f"{fix} first"
        )
    elif registration is None:
        why = (
            f"partition {partition_id!r} was never registered, so claims wait for full batches of "
            f"{batch_size}{have}; call {fix} so the last batch may be short, or claim fewer"
        )
    elif getattr(registration, "num_samples", None) is None:
        why = (
            f"partition {partition_id!r} is registered without num_samples, so claims wait for full "
            f"batches of {batch_size}{have}; register it again with num_samples=N (the stream's total) "
            "so the last batch may be short, or claim fewer"
        )
    else:
        why = f"too few samples hold the required fields yet{have}; wait longer or check the producers"
    return DataPlaneTimeout(f"{head}: {why}")


class GatedDataPlaneClient(DataPlaneClient):
    """A backend's base: public methods validate, protected ``_*`` methods store and fetch.

    Subclasses implement ``_register_partition``, ``_claim_meta``, ``_check_consumption_status``,
    ``_put_samples``, ``_get_samples``, ``_clear_samples``, ``_ping``, ``_list_keys``,
    ``get_capabilities`` and ``close``, and do not override the public methods.

    Args:
        seq_len_tag: The tag that fills ``sequence_lengths`` when ``input_lengths`` is absent.
    """

    def __init__(self, *, seq_len_tag: str = "seq_len") -> None:
        self._seq_len_tag = seq_len_tag

    def _meta(
        self,
        partition_id: str,
        task_name: str | None,
        keys: list[str],
        fields: list[str] | None,
        tags: list[dict[str, Any]],
    ) -> KVBatchMeta:
        """The meta every call returns: ``sequence_lengths`` derived from ``tags``."""
        lengths = sequence_lengths(tags, self._seq_len_tag)
        return KVBatchMeta(partition_id, task_name, keys, fields=fields, sequence_lengths=lengths, tags=tags)

    # ------------------------------------------------------------------ (A) task-mediated
    def register_partition(
        self,
        partition_id: str,
        fields: list[str],
        num_samples: int | None,
        consumer_tasks: list[str],
        grpo_group_size: int | None = None,
        enums: dict[str, list[str]] | None = None,
    ) -> None:
        pid = check_partition(partition_id)
        self._register_partition(
            pid, check_registration(fields, num_samples, consumer_tasks, grpo_group_size, enums)
        )

    def claim_meta(
        self,
        partition_id: str,
        task_name: str,
        required_fields: list[str],
        batch_size: int,
        dp_rank: int | None = None,
        blocking: bool = True,
        timeout_s: float = 60.0,
    ) -> KVBatchMeta:
        pid = check_partition(partition_id)
        claim = check_claim(task_name, required_fields, batch_size, dp_rank, blocking, timeout_s)
        return self._claim_meta(pid, *claim)

    def get_data(self, meta: KVBatchMeta, select_fields: list[str] | None = None) -> TensorDict:
        if not isinstance(meta, KVBatchMeta):
            raise DataPlaneBadRequest(f"get_data needs a KVBatchMeta, got {type(meta).__name__}")
        fields = select_fields if select_fields is not None else meta.fields
        if fields is None:
            raise DataPlaneBadRequest(
                "get_data needs select_fields or meta.fields; it never fetches all fields implicitly"
            )
        return self.get_samples(meta.sample_ids, meta.partition_id, fields)

    def check_consumption_status(self, partition_id: str, task_names: list[str]) -> bool:
        pid = check_partition(partition_id)
        return self._check_consumption_status(pid, check_ids(task_names, "task_names"))

    # ------------------------------------------------------------------ (B) direct-by-key
    def put_samples(
        self, sample_ids: list[str], partition_id: str, fields: FieldsLike = None, tags: TagsLike = None
    ) -> KVBatchMeta:
        keys, batch, tag_list = check_write(sample_ids, partition_id, fields, tags)
        if not keys:
            return KVBatchMeta(partition_id, None, [], fields=None)
        return self._put_samples(partition_id, keys, batch, tag_list)

    def get_samples(
        self, sample_ids: list[str], partition_id: str, select_fields: list[str] | None
    ) -> TensorDict:
        pid = check_partition(partition_id)
        keys = check_ids(sample_ids, "sample_ids")
        wanted = check_select(select_fields)
        if not keys:
            return TensorDict({}, batch_size=[0])
        return self._get_samples(pid, keys, wanted)

    def clear_samples(self, sample_ids: list[str] | None, partition_id: str) -> None:
        pid = check_partition(partition_id)
        keys = None if sample_ids is None else check_ids(sample_ids, "sample_ids")
        if keys is None or keys:
            self._clear_samples(pid, keys)

    # ------------------------------------------------------------------ (C) recovery / control plane
    def ping(self, timeout_s: float | None = None) -> None:
        self._ping(None if timeout_s is None else check_timeout(timeout_s))

    def list_keys(
        self,
        partition_id: str | None = None,
        cursor: int | None = None,
        count: int | None = None,
        match: str | None = None,
    ) -> Listing | tuple[int, Listing]:
        if cursor is not None or count is not None or match is not None:
            pid, position, page, prefix = check_scan(partition_id, cursor, count, match)
            return self._scan_keys(pid, position, page, prefix)
        if partition_id is not None:
            return self._list_keys(check_partition(partition_id))
        return {pid: keys for pid, keys in self._list_keys(None).items() if not is_internal_partition(pid)}

    def list_metadata(self, partition_id: str) -> list[DataPlaneGroupMeta]:
        return self._list_metadata(check_partition(partition_id))

    def depth(self, partition_id: str) -> int:
        return self._depth(check_partition(partition_id))

    # ------------------------------------------------------------------ durable state
    def save_checkpoint(
        self,
        checkpoint_dir: str | os.PathLike[str],
        *,
        include_storage: bool = True,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._save_checkpoint(
            check_path(checkpoint_dir, "checkpoint_dir"),
            check_flag(include_storage, "include_storage"),
            check_metadata(metadata),
        )

    def load_checkpoint(self, checkpoint_dir: str | os.PathLike[str]) -> dict[str, Any]:
        return self._load_checkpoint(check_path(checkpoint_dir, "checkpoint_dir"))

    def _save_checkpoint(self, path: Path, include_storage: bool, metadata: dict[str, Any]) -> None:
        """Save to a checked ``path``; ``metadata`` is a JSON-serialisable dict."""
        raise self._unsupported("save_checkpoint")

    def _load_checkpoint(self, path: Path) -> dict[str, Any]:
        """Load from a checked ``path`` (all or nothing); returns the checkpoint's user metadata."""
        raise self._unsupported("load_checkpoint")

    # ------------------------------------------------------------------ what a backend implements
    @abstractmethod
    def _register_partition(self, partition_id: str, declaration: Declaration) -> None:
        """Store (or replace) a valid declaration."""

    @abstractmethod
    def _claim_meta(
        self,
        partition_id: str,
        task_name: str,
        required_fields: list[str],
        batch_size: int,
        dp_rank: int | None,
        blocking: bool,
        timeout_s: float,
    ) -> KVBatchMeta:
        """Claim as :meth:`claim_meta` documents, with checked arguments."""

    @abstractmethod
    def _check_consumption_status(self, partition_id: str, task_names: list[str]) -> bool:
        """Answer :meth:`check_consumption_status` for checked task names."""

    @abstractmethod
    def _put_samples(
        self,
        partition_id: str,
        keys: list[str],
        batch: TensorDict | None,
        tags: list[dict[str, Any]] | None,
    ) -> KVBatchMeta:
        """Store a validated, non-empty write (``batch`` and ``tags`` not both ``None``).

        The backend still checks what needs its state (a field's dtype within the partition).
        Returns :meth:`_meta` with ``fields`` = every field all ``keys`` now hold (``None`` if none).
        """

    @abstractmethod
    def _get_samples(self, partition_id: str, keys: list[str], select_fields: list[str] | None) -> TensorDict:
        """Read checked, non-empty ``keys``; ``select_fields=None`` means every field they store."""

    @abstractmethod
    def _clear_samples(self, partition_id: str, keys: list[str] | None) -> None:
        """Remove checked, non-empty ``keys``, or the whole partition when ``None``."""

    @abstractmethod
    def _ping(self, timeout_s: float | None) -> None:
        """Raise unless the backend answers within a checked ``timeout_s``."""

    @abstractmethod
    def _list_keys(self, partition_id: str | None) -> Listing:
        """``{partition: {key: tags}}`` for one partition, or for all including kvplane's own."""

    def _scan_keys(
        self, partition_id: str, cursor: int, count: int, match: str | None
    ) -> tuple[int, Listing]:
        """One page of a cursor listing, as :meth:`DataPlaneClient.list_keys` documents (checked args)."""
        raise self._unsupported("list_keys with a cursor")

    def _list_metadata(self, partition_id: str) -> list[DataPlaneGroupMeta]:
        """The partition's groups; by default derived from a full listing (O(keys))."""
        return groups_from_tags(partition_id, self._list_keys(partition_id).get(partition_id, {}))

    def _depth(self, partition_id: str) -> int:
        """Committed, complete groups; by default counted over :meth:`_list_metadata`."""
        return sum(1 for g in self._list_metadata(partition_id) if g.committed and g.is_complete)
