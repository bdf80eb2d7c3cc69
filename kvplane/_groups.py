"""Rollout groups derived from per-key tags: the metadata replay buffers recover from.

A producer tags every key of a rollout group with the group's fields (``group_id``,
``weight_version``, ``created_at``, ``committed``, ``expected_num_keys``); :func:`groups_from_tags`
turns a partition's ``{key: tags}`` into :class:`~kvplane.DataPlaneGroupMeta` records without
reading a tensor.

Derivation (identical on every backend): keys are walked in sorted order; a key's group is
``str(tags["group_id"])`` when that is truthy, else the key alone. Group fields come from the tags of
the group's first (smallest) key, coerced leniently (``"4"`` → 4, ``"12.5"`` → 12.5, ``"true"`` →
True; an unparsable value → ``None``); ``committed`` needs every key of the group committed.

Examples:
    >>> from kvplane._groups import groups_from_tags
    >>> tags = {"a": {"group_id": "g1", "committed": True, "expected_num_keys": "2", "weight_version": 3},
    ...         "b": {"group_id": "g1", "committed": "true"},
    ...         "c": {"group_id": "g2", "committed": False}}
    >>> groups = groups_from_tags("p", tags)
    >>> [(g.group_id, g.keys, g.weight_version, g.committed, g.is_complete) for g in groups]
    [('g1', ['a', 'b'], 3, True, True), ('g2', ['c'], None, False, True)]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kvplane._meta import DataPlaneGroupMeta

__all__ = ["INPUT_LENGTHS_TAG", "as_bool", "as_float", "as_int", "groups_from_tags", "sequence_lengths"]

#: NeMo-RL's per-sample length tag; it takes precedence over the configured ``seq_len_tag``.
INPUT_LENGTHS_TAG = "input_lengths"


def as_int(value: Any) -> int | None:
    """``int(value)``, or ``None`` when absent or unparsable."""
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def as_float(value: Any) -> float | None:
    """``float(value)``, or ``None`` when absent or unparsable."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def as_bool(value: Any) -> bool:
    """A tag value as a bool: strings are true only for ``1``, ``true`` or ``yes``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes"}
    return bool(value)


def groups_from_tags(
    partition_id: str, key_tags: Mapping[str, Mapping[str, Any] | None]
) -> list[DataPlaneGroupMeta]:
    """Group a partition's keys by their ``group_id`` tag (see the module docstring)."""
    members: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    for key in sorted(key_tags):
        tag = key_tags[key] or {}
        gid = tag.get("group_id")
        members.setdefault(str(gid) if gid else key, []).append((key, tag))
    groups = []
    for gid, items in members.items():
        first = dict(items[0][1])
        expected = first["expected_num_keys"] if "expected_num_keys" in first else first.get("num_keys")
        groups.append(
            DataPlaneGroupMeta(
                partition_id=partition_id,
                group_id=gid,
                keys=[k for k, _ in items],
                weight_version=as_int(first.get("weight_version")),
                created_at=as_float(first.get("created_at")),
                committed=all(as_bool(t.get("committed", False)) for _, t in items),
                expected_num_keys=as_int(expected),
                size_bytes=as_int(first.get("size_bytes")),
                tags=first,
            )
        )
    return groups


def sequence_lengths(tags: list[Mapping[str, Any]], tag: str = "seq_len") -> list[int] | None:
    """Per-sample lengths for a meta, from its tags.

    NeMo-RL's ``input_lengths`` tag comes first: when any sample carries it, every sample's length is
    its ``input_lengths`` (0 where absent, as NeMo-RL does). Otherwise ``tag`` (the configured
    ``seq_len_tag``) is used when every sample carries it. ``None`` when neither applies or a value is
    not a number.

    Examples:
        >>> sequence_lengths([{"seq_len": 3}, {"seq_len": "5"}], "seq_len")
        [3, 5]
        >>> sequence_lengths([{"seq_len": 3}, {}], "seq_len") is None
        True
        >>> sequence_lengths([{"input_lengths": 7, "seq_len": 3}, {"seq_len": 4}], "seq_len")
        [7, 0]
    """
    if not tags:
        return None
    if any(INPUT_LENGTHS_TAG in t for t in tags):
        values = [t.get(INPUT_LENGTHS_TAG, 0) for t in tags]
    else:
        values = [t.get(tag) for t in tags]
    if set(map(type, values)) == {int}:  # the common case, without a Python call per sample
        return values
    lengths = [as_int(v) for v in values]
    return None if None in lengths else lengths  # type: ignore[return-value]
