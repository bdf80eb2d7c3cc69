"""``DataPlaneClient``: the contract every backend and middleware implements.

The abstract methods are exactly NeMo-RL's eight (same names and signatures), so an adapter written
for NeMo-RL subclasses this class unchanged; kvplane's extensions have concrete defaults. kvplane's
own backends subclass :class:`kvplane._gated.GatedDataPlaneClient`, which validates every call once.
There is no ``mark_consumed``: a stage signals that it is done by *producing a field*.

Every implementation keeps the rules: a read of a missing partition, key or field raises
:class:`~kvplane.DataPlaneKeyError`; a rejected write leaves no trace; what comes back has the shape
and dtype that went in; every wait has a deadline.

Design: docs/internals.md#kvplane_clientpy--the-contract

Examples:
    >>> import torch
    >>> from tensordict import TensorDict
    >>> from kvplane import build_data_plane_client
    >>> client = build_data_plane_client({"impl": "memory"})
    >>> client.register_partition("rollouts", ["ids"], num_samples=2, consumer_tasks=["train"])
    >>> ids = TensorDict(ids=torch.arange(4).view(2, 2), batch_size=[2])
    >>> _ = client.put_samples(["s0", "s1"], "rollouts", ids, tags=[{"seq_len": 2}, {"seq_len": 2}])
    >>> meta = client.claim_meta("rollouts", "train", ["ids"], batch_size=2)
    >>> meta.sample_ids, meta.sequence_lengths
    (['s0', 's1'], [2, 2])
    >>> client.get_data(meta)["ids"].tolist()
    [[0, 1], [2, 3]]
    >>> client.check_consumption_status("rollouts", ["train"])
    True
    >>> client.close()
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any

from tensordict import TensorDict

from kvplane._errors import DataPlaneError
from kvplane._meta import DataPlaneCapabilities, DataPlaneGroupMeta, KVBatchMeta

__all__ = ["DataPlaneClient", "FieldsLike", "TagsLike"]

#: What ``put_samples`` accepts as ``fields``: a TensorDict with one row per id, or a plain dict of
#: columns (tensors with a leading dim of ``len(ids)``, lists of per-row values) — see
#: :func:`kvplane._validation.to_batch`.
FieldsLike = Any
TagsLike = Any


class DataPlaneClient(ABC):
    """The data plane contract. See the module docstring for the rules."""

    # ------------------------------------------------------------------ (A) task-mediated
    @abstractmethod
    def register_partition(
        self,
        partition_id: str,
        fields: list[str],
        num_samples: int | None,
        consumer_tasks: list[str],
        grpo_group_size: int | None = None,
        enums: dict[str, list[str]] | None = None,
    ) -> None:
        """Declare a partition: its fields, expected sample count and consumer tasks.

        May come before or after the first write (partitions are also created implicitly by a write).
        Registering again overwrites the previous declaration. ``fields`` is a superset hint, not a
        schema lock: writing another field is allowed.

        Args:
            partition_id: The partition.
            fields: The columns producers will write.
            num_samples: The expected total number of samples, or ``None`` for an unbounded stream.
                With a known total, a claim returns a short last batch instead of waiting forever.
            consumer_tasks: The task names that will claim from the partition. A claim by any other
                task raises :class:`~kvplane.DataPlaneKeyError` (a typo guard).
            grpo_group_size: Samples per rollout group (stored, informational).
            enums: Fixed vocabularies per field (stored, informational).

        Raises:
            DataPlaneBadRequest: Bad argument types or values.
        """

    @abstractmethod
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
        """Claim ready samples for ``task_name``: exactly once per task, across all processes.

        A sample is ready when every field in ``required_fields`` has been written for it. A
        non-empty claim has exactly ``batch_size`` samples, except the last one of a partition whose
        ``num_samples`` is known: when fewer than ``batch_size`` remain unclaimed and all have been
        produced, it returns the remainder. A task that has claimed all ``num_samples`` gets an
        empty meta at once. Claimed samples stay readable (``get_samples``) until cleared.

        Args:
            partition_id: The partition.
            task_name: The consumer task whose cursor advances.
            required_fields: Fields every returned sample has; they become ``meta.fields``.
            batch_size: Samples per claim (> 0).
            dp_rank: Reserved (forwarded to backends that use it).
            blocking: Wait for enough ready samples; otherwise return an empty meta at once.
            timeout_s: The deadline of a blocking claim (at least one attempt always happens).

        Returns:
            A meta with ``task_name``, ``fields=required_fields``, the samples' tags, and
            ``sequence_lengths`` from the tags (:func:`kvplane._groups.sequence_lengths`: NeMo-RL's
            ``input_lengths`` when present, else the ``seq_len`` tag when every sample carries it).

        Raises:
            DataPlaneTimeout: A blocking claim found too few ready samples before ``timeout_s``.
            DataPlaneKeyError: ``task_name`` is not one of the partition's registered consumer tasks.
            DataPlaneBadRequest: Bad arguments.
        """

    @abstractmethod
    def get_data(self, meta: KVBatchMeta, select_fields: list[str] | None = None) -> TensorDict:
        """Read the samples of ``meta`` (no cursor moves).

        The fields are ``select_fields`` if given, else ``meta.fields``; with neither this raises
        rather than fetching everything implicitly.

        Raises:
            DataPlaneBadRequest: ``meta`` is not a :class:`~kvplane.KVBatchMeta`, or neither
                ``select_fields`` nor ``meta.fields`` is set.
            DataPlaneKeyError: A sample or field is missing.
        """

    @abstractmethod
    def check_consumption_status(self, partition_id: str, task_names: list[str]) -> bool:
        """True iff every task in ``task_names`` has claimed every sample of the partition.

        "Every sample" is every sample now stored and, when ``num_samples`` is registered, at least
        ``num_samples`` samples in all. The answer comes from shared state, never a per-process cache.

        Raises:
            DataPlaneKeyError: The partition does not exist.
        """

    # ------------------------------------------------------------------ (B) direct-by-key
    @abstractmethod
    def put_samples(
        self,
        sample_ids: list[str],
        partition_id: str,
        fields: FieldsLike = None,
        tags: TagsLike = None,
    ) -> KVBatchMeta:
        """Write (upsert) fields and/or tags for ``sample_ids``.

        Writing fields to an existing id adds or replaces those columns and keeps the others; tags
        merge into the id's tag dict. A tag-only write is legal. The whole call is validated first
        (id types, duplicates, row count, tag count, dtype stability per field within the
        partition); a rejected call stores nothing.

        Args:
            sample_ids: The ids, one per row of ``fields`` (an empty list is a no-op).
            partition_id: The partition (created by the first write).
            fields: A TensorDict with ``batch_size[0] == len(sample_ids)``, or a dict of columns.
            tags: One dict of primitive values per id, or ``None``.

        Returns:
            A meta with the ids, ``fields`` = every field that all of the ids now hold, in the
            partition's first-write order (also after a tag-only write; ``None`` when they hold no
            common field), ``tags`` = each id's merged tags after the write. Reading it back with
            ``get_data`` therefore returns earlier writes' fields too (TransferQueue's ``kv_put``).

        Raises:
            DataPlaneBadRequest: The input is invalid (nothing was stored).
            DataPlaneWriteError: The backend failed to store valid input.
        """

    @abstractmethod
    def get_samples(
        self, sample_ids: list[str], partition_id: str, select_fields: list[str] | None
    ) -> TensorDict:
        """Read rows by id, in the order of ``sample_ids`` (no cursor moves).

        Args:
            sample_ids: The ids (an empty list returns an empty TensorDict of batch size 0).
            partition_id: The partition.
            select_fields: The fields to return. ``None`` is an explicit request for every field the
                ids store; when they do not all store the same fields, that is an error naming the
                difference (never a silent intersection), and ids that store no field at all (tag-only
                keys) raise ``DataPlaneKeyError``.

        Raises:
            DataPlaneKeyError: The partition, an id, or a field of an id is missing.
            DataPlaneBadRequest: ``select_fields=None`` over ids that store different fields.
        """

    @abstractmethod
    def clear_samples(self, sample_ids: list[str] | None, partition_id: str) -> None:
        """Remove ids (data and tags) from a partition; idempotent for ids already gone.

        ``None`` clears the whole partition: every id, every consumption cursor and the
        registration, so the partition can be declared afresh. ``[]`` is a no-op.
        """

    # ------------------------------------------------------------------ (C) recovery / control plane
    def ping(self, timeout_s: float | None = None) -> None:
        """Raise unless the request path to the backend is healthy within ``timeout_s``.

        Raises:
            DataPlaneUnavailable: The client is closed or the backend is gone.
            DataPlaneTimeout: The backend did not answer in time.
            DataPlaneError: The backend does not implement ``ping`` (the default).
        """
        raise self._unsupported("ping")

    def list_keys(
        self,
        partition_id: str | None = None,
        cursor: int | None = None,
        count: int | None = None,
        match: str | None = None,
    ) -> dict[str, dict[str, dict[str, Any]]] | tuple[int, dict[str, dict[str, dict[str, Any]]]]:
        """``{partition_id: {key: tags}}`` for one partition or all (non-consuming, no tensor read).

        An unknown partition gives ``{}``. All partitions leaves out kvplane's own
        (:func:`kvplane.is_internal_partition`: backend records, loader plans), which can still be
        listed by name. This is what ``kv_list`` returns.

        **Cursor listing** (Redis ``SCAN cursor MATCH prefix COUNT n``): with ``cursor`` given (``0``
        starts), one page of one partition comes back as ``(next_cursor, {partition_id: {key:
        tags}})``; call again with ``next_cursor`` until it is ``0``. Every key present for the whole
        scan is returned exactly once; keys added or removed meanwhile may or may not be. ``count``
        (default 1000) is how many key slots a page examines, so a page may hold fewer keys, even
        none, before the scan ends; ``match`` keeps keys starting with that prefix. An unknown
        partition gives ``(0, {})``. Cursors are opaque ints, valid for the partition they came from.

        Raises:
            DataPlaneError: The backend does not implement ``list_keys`` (the default); the listing
                extensions (``list_metadata``, ``list_sample_ids``, ``depth``) derive from it.
        """
        raise self._unsupported("list_keys")

    def list_metadata(self, partition_id: str) -> list[DataPlaneGroupMeta]:
        """The partition's rollout groups, derived from per-key tags (non-consuming).

        See :func:`kvplane._groups.groups_from_tags` for the derivation. kvplane's backends keep the
        groups up to date as keys change (O(groups) per call, :mod:`kvplane._groupindex`) and return
        shared metas whose ``keys`` and ``tags`` are read-only (copy them to edit).
        """
        from kvplane._groups import groups_from_tags

        return groups_from_tags(partition_id, self.list_keys(partition_id).get(partition_id, {}))

    def list_sample_ids(self, partition_id: str) -> list[str]:
        """The partition's ids, sorted (non-consuming; ``[]`` for an unknown partition)."""
        return sorted(self.list_keys(partition_id).get(partition_id, {}))

    def depth(self, partition_id: str) -> int:
        """The number of groups that are both committed and complete."""
        return sum(1 for g in self.list_metadata(partition_id) if g.committed and g.is_complete)

    def pop(self, keys: list[str], partition_id: str) -> None:
        """Release keys that were trained on (same effect as ``clear_samples(keys, ...)``)."""
        self.clear_samples(keys, partition_id)

    def evict(self, keys: list[str], partition_id: str) -> None:
        """Release keys that are stale or abandoned (same effect as ``clear_samples(keys, ...)``)."""
        self.clear_samples(keys, partition_id)

    def get_capabilities(self) -> DataPlaneCapabilities:
        """What this backend guarantees (the default: nothing beyond the contract)."""
        return DataPlaneCapabilities()

    # ------------------------------------------------------------------ durable state
    def save_checkpoint(
        self,
        checkpoint_dir: str | os.PathLike[str],
        *,
        include_storage: bool = True,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Save the whole store (every partition, its data, tags, registrations and claim cursors).

        TransferQueue 0.1.11's semantics: the new checkpoint is written beside ``checkpoint_dir``
        and renamed into place (the previous one is moved to ``<dir>.old`` meanwhile), so a crash
        at any moment leaves the old or the new checkpoint loadable; ``metadata`` (JSON values) is
        kept in ``metadata.json``.

        Raises:
            DataPlaneBadRequest: Bad arguments, or a path that is not a checkpoint's to replace.
            DataPlaneWriteError: The file system failed; the previous checkpoint is untouched.
        """
        raise self._unsupported("save_checkpoint")

    def load_checkpoint(self, checkpoint_dir: str | os.PathLike[str]) -> dict[str, Any]:
        """Replace the store's whole state with a checkpoint's; claims continue where they were.

        Returns:
            The ``metadata`` the checkpoint was saved with (NeMo-RL's return; TransferQueue's is
            ``None``, which callers there ignore).

        Raises:
            CheckpointNotFoundError: The directory or its ``metadata.json`` is missing (also a
                ``FileNotFoundError``).
            DataPlaneCheckpointError: A file is corrupted, truncated or of another version (the
                message names it); the store is exactly as it was.
        """
        raise self._unsupported("load_checkpoint")

    def _unsupported(self, method: str) -> DataPlaneError:
        return DataPlaneError(f"{method} is not supported by this backend ({type(self).__name__})")

    # ------------------------------------------------------------------ (D) lifecycle
    @abstractmethod
    def close(self) -> None:
        """Release the client's resources. Idempotent."""

    def __enter__(self) -> DataPlaneClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
