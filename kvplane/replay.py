"""Rollout groups for replay buffers: write them whole, select the fresh ones, evict the rest.

Works on any :class:`~kvplane.DataPlaneClient` (memory, TransferQueue, wrapped in middleware) and
reads tags only to select. :func:`write_group` writes a group's data with ``committed=False``, then
commits every key; :func:`select_groups` splits the committed, complete groups into fresh and stale
by ``current_version - weight_version``; :func:`evict_stale` evicts the stale groups and those
abandoned (uncommitted or incomplete) for longer than ``abandon_after_s``. Each key has one writer,
its group's producer: readers never write tags and release keys only through ``pop``/``evict``.

Design: docs/internals.md#kvplanereplaypy--rollout-groups-for-replay-buffers

Examples:
    >>> import torch
    >>> from kvplane.adapters.memory import MemoryDataPlaneClient
    >>> from kvplane.replay import evict_stale, keys_of, select_groups, write_group
    >>> client = MemoryDataPlaneClient()
    >>> for version in (3, 5):
    ...     _ = write_group(client, "buf", [f"v{version}-0", f"v{version}-1"],
    ...                     {"reward": torch.tensor([1.0, 0.0])}, group_id=f"g{version}",
    ...                     weight_version=version, extra_tags=[{"seq_len": 7}, {"seq_len": 9}])
    >>> fresh, stale = select_groups(client, "buf", current_version=6, max_staleness=2)
    >>> [g.group_id for g in fresh], [g.group_id for g in stale]
    (['g5'], ['g3'])
    >>> client.get_samples(keys_of(fresh), "buf", ["reward"])["reward"].tolist()
    [1.0, 0.0]
    >>> [g.group_id for g in evict_stale(client, "buf", current_version=6, max_staleness=2)]
    ['g3']
    >>> client.list_sample_ids("buf")
    ['v5-0', 'v5-1']
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from kvplane._client import DataPlaneClient, FieldsLike
from kvplane._errors import DataPlaneBadRequest
from kvplane._meta import DataPlaneGroupMeta, KVBatchMeta
from kvplane._tensors import td_nbytes
from kvplane._validation import check_ids, check_partition, check_tags, to_batch

__all__ = [
    "GROUP_TAG_NAMES",
    "GroupSelection",
    "evict_stale",
    "keys_of",
    "requeue_unfinished",
    "select_groups",
    "write_group",
]

logger = logging.getLogger(__name__)

#: The tags :func:`write_group` owns; ``extra_tags`` may not set them.
GROUP_TAG_NAMES = ("group_id", "weight_version", "created_at", "committed", "expected_num_keys", "size_bytes")

# client -> partition -> group_id -> when a group without ``created_at`` was first seen (its ``now``).
_first_seen: weakref.WeakKeyDictionary[Any, dict[str, dict[str, float]]] = weakref.WeakKeyDictionary()
_first_seen_lock = threading.Lock()


def _ages(
    client: DataPlaneClient, partition_id: str, groups: list[DataPlaneGroupMeta], now: float
) -> dict[str, float | None]:
    """``created_at`` of ``groups`` (the partition's groups that are not ready): its tag, else when
    this process first saw the group."""
    ageless = [g.group_id for g in groups if g.created_at is None]
    with _first_seen_lock:
        try:
            partitions = _first_seen.setdefault(client, {})
        except TypeError:  # a client that cannot be weakly referenced: unknown ages stay unknown
            return {g.group_id: g.created_at for g in groups}
        seen = partitions.get(partition_id, {})
        partitions[partition_id] = {gid: seen.get(gid, now) for gid in ageless}
        first = partitions[partition_id]
    return {g.group_id: first[g.group_id] if g.created_at is None else g.created_at for g in groups}


class GroupSelection(NamedTuple):
    """The committed, complete groups of a partition, split by staleness (``list_metadata`` order)."""

    selected: list[DataPlaneGroupMeta]
    stale: list[DataPlaneGroupMeta]


def keys_of(groups: Iterable[DataPlaneGroupMeta]) -> list[str]:
    """Every key of ``groups``, group after group (ready for ``get_samples``, ``pop`` or ``evict``)."""
    return [key for group in groups for key in group.keys]


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataPlaneBadRequest(f"{name} must be a non-negative int, got {value!r}")
    return value


def _check_seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataPlaneBadRequest(f"{name} must be a finite number of seconds, got {value!r}")
    return float(value)


def _extra_tags(
    extra_tags: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None, n: int
) -> list[dict[str, Any]]:
    if extra_tags is None:
        return [{} for _ in range(n)]
    per_key = check_tags([extra_tags] * n if isinstance(extra_tags, Mapping) else extra_tags, n) or []
    for tag in per_key:
        reserved = sorted(set(tag) & set(GROUP_TAG_NAMES))
        if reserved:
            raise DataPlaneBadRequest(
                f"extra_tags may not set the group tags {reserved}; write_group owns them"
            )
    return per_key


def write_group(
    client: DataPlaneClient,
    partition_id: str,
    keys: list[str],
    fields: FieldsLike,
    *,
    group_id: str,
    weight_version: int,
    created_at: float | None = None,
    extra_tags: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
) -> KVBatchMeta:
    """Write a rollout group's data with uncommitted group tags, then commit it.

    Args:
        client: Any data plane client.
        partition_id: The partition.
        keys: The group's keys (at least one; this producer must be their only writer).
        fields: One row per key, as ``put_samples`` accepts them.
        group_id: The group's id (a non-empty string, unique within the partition).
        weight_version: The policy version that produced the group (a non-negative int).
        created_at: Seconds since the epoch; defaults to now. :func:`evict_stale` ages groups by it.
        extra_tags: More tags: one dict for every key, or one dict per key (e.g. ``seq_len``).

    Returns:
        The meta of the group's keys: ``fields`` written, each key's merged tags after the commit.

    Raises:
        DataPlaneBadRequest: Invalid input (checked before anything is written), or a rejected write.
        DataPlaneError: The backend failed; the group stays uncommitted and the call may be retried.
    """
    check_partition(partition_id)
    keys = check_ids(keys, "keys")
    if not keys:
        raise DataPlaneBadRequest("a group needs at least one key")
    if fields is None:
        raise DataPlaneBadRequest("write_group needs fields: a group without data cannot be trained on")
    if not isinstance(group_id, str) or not group_id:
        raise DataPlaneBadRequest(f"group_id must be a non-empty string, got {group_id!r}")
    _check_count("weight_version", weight_version)
    created = time.time() if created_at is None else _check_seconds("created_at", created_at)
    per_key = _extra_tags(extra_tags, len(keys))
    batch = to_batch(fields, len(keys))
    group_tags = {
        "group_id": group_id,
        "weight_version": weight_version,
        "created_at": created,
        "expected_num_keys": len(keys),
        "size_bytes": td_nbytes(batch),
        "committed": False,
    }
    written = client.put_samples(
        keys, partition_id, batch, tags=[{**extra, **group_tags} for extra in per_key]
    )
    committed = client.put_samples(keys, partition_id, None, tags=[{"committed": True} for _ in keys])
    logger.debug(
        "committed group %r (%d keys, version %d) in %r", group_id, len(keys), weight_version, partition_id
    )
    return dataclasses.replace(committed, fields=written.fields)


def _forget(client: DataPlaneClient, partition_id: str, group_ids: list[str]) -> None:
    """Drop evicted groups' first sightings: a group written again under the same id is new."""
    with _first_seen_lock:
        try:
            seen = _first_seen.get(client, {}).get(partition_id, {})
        except TypeError:  # not weakly referenceable: nothing was recorded
            return
        for gid in group_ids:
            seen.pop(gid, None)


class _States(NamedTuple):
    selected: list[DataPlaneGroupMeta]
    stale: list[DataPlaneGroupMeta]
    abandoned: list[DataPlaneGroupMeta]


def _classify(
    client: DataPlaneClient,
    partition_id: str,
    current_version: int,
    max_staleness: int,
    abandon_after_s: float | None = None,
    now: float | None = None,
) -> _States:
    """Split the partition's groups (one ``list_metadata``; one pass, no per-group call)."""
    _check_count("current_version", current_version)
    _check_count("max_staleness", max_staleness)
    if abandon_after_s is not None and _check_seconds("abandon_after_s", abandon_after_s) < 0:
        raise DataPlaneBadRequest(f"abandon_after_s must be >= 0, got {abandon_after_s!r}")
    now = time.time() if now is None else _check_seconds("now", now)
    oldest = current_version - max_staleness
    selected: list[DataPlaneGroupMeta] = []
    stale: list[DataPlaneGroupMeta] = []
    unready: list[DataPlaneGroupMeta] = []
    for g in client.list_metadata(partition_id):
        if g.committed and (g.expected_num_keys is None or len(g.keys) == g.expected_num_keys):
            version = g.weight_version
            (selected if version is not None and version >= oldest else stale).append(g)
        else:
            unready.append(g)
    created = _ages(client, partition_id, unready, now)  # only groups being written can be abandoned
    abandoned = []
    if abandon_after_s is not None:
        abandoned = [
            g for g in unready if (at := created.get(g.group_id)) is not None and now - at > abandon_after_s
        ]
    ahead = [g.group_id for g in selected if g.weight_version > current_version]  # type: ignore[operator]
    if ahead:
        logger.warning(
            "%d group(s) of partition %r (e.g. %r) carry a weight_version above current_version=%d; "
            "counted as fresh. Was the version counter reset on resume?",
            len(ahead),
            partition_id,
            ahead[0],
            current_version,
        )
    return _States(selected, stale, abandoned)


def select_groups(
    client: DataPlaneClient, partition_id: str, *, current_version: int, max_staleness: int
) -> GroupSelection:
    """Split the committed, complete groups into fresh (``selected``) and ``stale`` (tags only).

    See the module docstring for the exact rules. Uncommitted and incomplete groups are in neither
    list. Nothing is consumed or changed; an unknown partition gives two empty lists.

    Raises:
        DataPlaneBadRequest: ``current_version`` or ``max_staleness`` is not a non-negative int.
    """
    states = _classify(client, partition_id, current_version, max_staleness)
    return GroupSelection(states.selected, states.stale)


def evict_stale(
    client: DataPlaneClient,
    partition_id: str,
    *,
    current_version: int,
    max_staleness: int,
    abandon_after_s: float | None = None,
    now: float | None = None,
) -> list[DataPlaneGroupMeta]:
    """Evict the stale groups and, with ``abandon_after_s``, the abandoned ones (one ``evict`` call).

    Args:
        client: Any data plane client.
        partition_id: The partition.
        current_version: The trainer's current weight version.
        max_staleness: How many versions behind a group may be and still be selected.
        abandon_after_s: Evict groups that are not committed and complete and were created more than
            this many seconds before ``now``; ``None`` keeps them.
        now: The clock to age groups by (seconds since the epoch); defaults to ``time.time()``.

    Returns:
        The evicted groups.

    Examples:
        >>> import torch
        >>> from kvplane.adapters.memory import MemoryDataPlaneClient
        >>> client = MemoryDataPlaneClient()
        >>> _ = client.put_samples(["k0"], "buf", {"x": torch.ones(1)},        # a producer died here
        ...                        tags=[{"group_id": "g", "created_at": 100.0, "committed": False}])
        >>> evict_stale(client, "buf", current_version=0, max_staleness=0, abandon_after_s=60, now=160.0)
        []
        >>> [g.group_id for g in evict_stale(client, "buf", current_version=0, max_staleness=0,
        ...                                  abandon_after_s=60, now=160.5)]
        ['g']
        >>> _ = client.put_samples(["raw"], "buf", {"x": torch.ones(1)})   # no created_at: first seen
        >>> evict_stale(client, "buf", current_version=0, max_staleness=0, abandon_after_s=60, now=200.0)
        []
        >>> [g.keys for g in evict_stale(client, "buf", current_version=0, max_staleness=0,
        ...                              abandon_after_s=60, now=260.5)]
        [['raw']]
    """
    states = _classify(client, partition_id, current_version, max_staleness, abandon_after_s, now)
    doomed = sorted(states.stale + states.abandoned, key=lambda g: g.keys[0])  # list_metadata order
    if doomed:
        client.evict(keys_of(doomed), partition_id)
        _forget(client, partition_id, [g.group_id for g in doomed])
        logger.info("evicted %d group(s) (%d keys) from %r", len(doomed), len(keys_of(doomed)), partition_id)
    return doomed


def requeue_unfinished(
    client: DataPlaneClient,
    partition_id: str,
    *,
    new_task: str,
    fields: list[str],
    streaming: bool = False,
) -> list[str]:
    """After a consumer crash, make every sample still stored claimable again under ``new_task``.

    The recovery path for a partition with one consumer task whose consumer ``pop``s each sample only
    after finishing it: the samples still stored are then exactly those never claimed plus those
    claimed but unfinished when the consumer died. The partition is registered again with
    ``consumer_tasks=[new_task]``, whose cursor starts empty, so ``new_task`` claims each of them once;
    the old task name is fenced off (its claims raise :class:`~kvplane.DataPlaneKeyError`), so a
    consumer that was presumed dead cannot keep claiming. Delivery across the crash is at least once:
    a sample finished but not yet popped when the consumer died is delivered again.

    Args:
        client: Any data plane client.
        partition_id: The partition.
        new_task: A task name never used on this partition (e.g. ``"train#2"``).
        fields: The partition's fields (the registration's superset hint).
        streaming: ``False`` registers ``num_samples`` = the samples still stored, so the last claim
            returns a short batch (call it after the producers finished); ``True`` registers an
            unbounded stream for producers that are still writing.

    Returns:
        The requeued sample ids, sorted. Each must eventually store the fields ``new_task`` claims
        with (evict tag-only leftovers first, e.g. with :func:`evict_stale`).

    Examples:
        >>> import torch
        >>> from kvplane.adapters.memory import MemoryDataPlaneClient
        >>> client = MemoryDataPlaneClient()
        >>> client.register_partition("p", ["x"], num_samples=4, consumer_tasks=["train"])
        >>> _ = client.put_samples(["a", "b", "c", "d"], "p", {"x": torch.arange(4)})
        >>> done = client.claim_meta("p", "train", ["x"], 2); client.pop(done.sample_ids, "p")
        >>> lost = client.claim_meta("p", "train", ["x"], 2)            # ... and the consumer dies
        >>> requeue_unfinished(client, "p", new_task="train#2", fields=["x"])
        ['c', 'd']
        >>> client.claim_meta("p", "train#2", ["x"], 2).sample_ids
        ['c', 'd']
    """
    if not isinstance(new_task, str) or not new_task:
        raise DataPlaneBadRequest(f"new_task must be a non-empty string, got {new_task!r}")
    remaining = client.list_sample_ids(partition_id)
    client.register_partition(partition_id, fields, None if streaming else len(remaining), [new_task])
    logger.info("requeued %d sample(s) of %r under task %r", len(remaining), partition_id, new_task)
    return remaining
