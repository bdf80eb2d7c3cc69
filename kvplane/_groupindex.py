"""Rollout-group summaries kept up to date key by key, so group questions cost O(groups), not O(keys).

:class:`GroupIndex` holds, per group, its keys, how many of them are committed and its derived
:class:`~kvplane.DataPlaneGroupMeta` (built lazily, cached until the group changes), plus a running
count of groups that are committed and complete (``depth``, O(1)). A backend calls
:meth:`GroupIndex.apply` with each key's tags before and after every change; the derivation is
exactly :func:`kvplane._groups.groups_from_tags`'s (a key's group is its ``group_id`` tag or the key
alone; group fields come from the smallest key's tags; committed needs every key committed), which
``tests/unit/test_group_summaries.py`` checks against a full rescan after random changes.

Examples:
    >>> from kvplane._groupindex import GroupIndex
    >>> tags = {"a": {"group_id": "g", "committed": True, "expected_num_keys": 2}}
    >>> index = GroupIndex(tags.get)
    >>> index.apply([("a", None, tags["a"])])
    >>> index.depth()                       # one key of two: incomplete
    0
    >>> tags["b"] = {"group_id": "g", "committed": True}
    >>> index.apply([("b", None, tags["b"])])
    >>> index.depth(), [g.keys for g in index.metas("p")]
    (1, [['a', 'b']])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kvplane._errors import DataPlaneBadRequest
from kvplane._groups import as_bool, as_float, as_int
from kvplane._meta import DataPlaneGroupMeta
from kvplane._tags import copy_tags

__all__ = ["FrozenDict", "FrozenList", "GroupIndex", "group_of"]


def _read_only(self: Any, *args: Any, **kwargs: Any) -> Any:
    raise DataPlaneBadRequest(
        f"a group meta's {type(self).__name__[6:].lower()} is shared and read-only; copy it first "
        "(list(meta.keys), dict(meta.tags))"
    )


class FrozenList(list):  # type: ignore[type-arg]
    """A list that refuses to change: a cached group meta's ``keys``, shared between calls.

    It compares, iterates and indexes like a list and pickles and copies as a plain list.
    """

    __slots__ = ()
    append = extend = insert = pop = remove = clear = sort = reverse = _read_only
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (list(self),))


class FrozenDict(dict):  # type: ignore[type-arg]
    """A dict that refuses to change: a cached group meta's ``tags`` (pickles as a plain dict)."""

    __slots__ = ()
    pop = popitem = clear = update = setdefault = _read_only
    __setitem__ = __delitem__ = __ior__ = _read_only

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))


Tags = Mapping[str, Any]


def group_of(key: str, tags: Tags | None) -> str:
    """The group a key belongs to: its ``group_id`` tag when truthy, else the key itself."""
    gid = tags.get("group_id") if tags else None
    return str(gid) if gid else key


class _Group:
    __slots__ = ("committed", "first", "keys", "meta", "ready")

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.committed = 0  # keys whose ``committed`` tag is true
        self.first = ""  # the smallest key (its tags give the group's fields)
        self.meta: DataPlaneGroupMeta | None = None
        self.ready = False  # committed and complete


class GroupIndex:
    """The group summaries of one partition. Not thread-safe: call under the owner's lock.

    Args:
        tags_of: The current tags of a stored key (``None`` if it is gone); read for a group's
            first key when its meta is built or its readiness recomputed.
    """

    def __init__(self, tags_of: Callable[[str], Tags | None]) -> None:
        self._tags_of = tags_of
        self._groups: dict[str, _Group] = {}
        self._ready = 0
        self._order: list[str] | None = []  # group ids sorted by first key; None: to re-sort

    def __len__(self) -> int:
        return len(self._groups)

    def depth(self) -> int:
        """The number of groups that are committed and complete."""
        return self._ready

    def apply(self, changes: Iterable[tuple[str, Tags | None, Tags | None]]) -> None:
        """Record changes ``(key, tags before, tags after)``; ``None`` means absent (new or removed key).

        Call after the store holds the new tags (``tags_of`` must answer with them).
        """
        removed: dict[str, set[str]] = {}
        touched: set[str] = set()
        for key, old, new in changes:
            if old is not None:
                gid = group_of(key, old)
                group = self._groups.get(gid)
                if group is not None:
                    if new is not None and group_of(key, new) == gid:  # stays in its group
                        group.committed += as_bool(new.get("committed", False)) - as_bool(
                            old.get("committed", False)
                        )
                        touched.add(gid)
                        continue
                    removed.setdefault(gid, set()).add(key)
                    group.committed -= as_bool(old.get("committed", False))
                    touched.add(gid)
            if new is not None:
                gid = group_of(key, new)
                group = self._groups.get(gid)
                if group is None:
                    group = self._groups[gid] = _Group()
                    group.first = key
                    self._order = None
                elif key < group.first:
                    group.first = key
                    self._order = None
                group.keys.append(key)
                group.committed += as_bool(new.get("committed", False))
                touched.add(gid)
        for gid, keys in removed.items():
            group = self._groups[gid]
            group.keys = [k for k in group.keys if k not in keys]
            if group.first in keys and group.keys:
                group.first = min(group.keys)
                self._order = None
        for gid in touched:
            self._refresh(gid)

    def _refresh(self, gid: str) -> None:
        group = self._groups[gid]
        was = group.ready
        group.meta = None
        if not group.keys:
            del self._groups[gid]
            group.ready = False
        else:
            n = len(group.keys)
            expected = _expected(self._tags_of(group.first) or {})
            group.ready = group.committed == n and (expected is None or expected == n)
        self._ready += group.ready - was

    def metas(self, partition_id: str) -> list[DataPlaneGroupMeta]:
        """Every group, in ``groups_from_tags`` order (by smallest key). The metas are cached until
        their group changes and shared between calls: their ``keys`` and ``tags`` are read-only."""
        if self._order is None:
            self._order = sorted(self._groups, key=lambda gid: self._groups[gid].first)
        elif len(self._order) != len(self._groups):
            self._order = [gid for gid in self._order if gid in self._groups]
        out = []
        for gid in self._order:
            group = self._groups[gid]
            if group.meta is None:
                group.meta = self._build(partition_id, gid, group)
            out.append(group.meta)
        return out

    def _build(self, partition_id: str, gid: str, group: _Group) -> DataPlaneGroupMeta:
        first = FrozenDict(copy_tags(self._tags_of(group.first) or {}))
        return DataPlaneGroupMeta(
            partition_id=partition_id,
            group_id=gid,
            keys=FrozenList(sorted(group.keys)),
            weight_version=as_int(first.get("weight_version")),
            created_at=as_float(first.get("created_at")),
            committed=group.committed == len(group.keys),
            expected_num_keys=_expected(first),
            size_bytes=as_int(first.get("size_bytes")),
            tags=first,
        )


def _expected(tags: Tags) -> int | None:
    return as_int(tags["expected_num_keys"] if "expected_num_keys" in tags else tags.get("num_keys"))
