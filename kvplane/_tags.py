"""Copies of tag dicts that share nothing mutable with the original.

A store keeps its own tags: what a writer passes in, and what a listing or a claimed meta hands out,
must not alias what is stored. Scalars (``None``, bools, numbers, strings, bytes) are immutable and
kept as they are; containers (``dict``, ``list``, ``tuple``, ``set``, ``frozenset``) are rebuilt
recursively; any other object is deep-copied. A tag dict of scalars costs one ``dict`` copy.

Examples:
    >>> from kvplane._tags import copy_tags
    >>> stored = {"step": 3, "history": [1, 2]}
    >>> handed_out = copy_tags(stored)
    >>> handed_out["history"].append(99)
    >>> stored
    {'step': 3, 'history': [1, 2]}
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["SCALARS", "copy_tags", "copy_value"]

#: Immutable tag value types, shared rather than copied.
SCALARS = frozenset({type(None), bool, int, float, complex, str, bytes})


def copy_value(value: Any, leaf: Callable[[Any], Any] | None = None) -> Any:
    """``value`` with every container rebuilt; ``leaf`` (if given) sees every scalar and object first.

    Raises:
        TypeError, copy.Error, RecursionError: An object that cannot be deep-copied.
    """
    if leaf is not None:
        leaf(value)
    kind = type(value)
    if kind in SCALARS:
        return value
    if kind is dict:
        return {copy_value(k, leaf): copy_value(v, leaf) for k, v in value.items()}
    if kind is list:
        return [copy_value(v, leaf) for v in value]
    if kind is tuple:
        return tuple(copy_value(v, leaf) for v in value)
    if kind in (set, frozenset):
        return kind(copy_value(v, leaf) for v in value)
    return copy.deepcopy(value)


def copy_tags(tag: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of one key's tags (see the module docstring); cheap when every value is a scalar."""
    out = dict(tag)
    for name, value in out.items():
        if type(value) not in SCALARS:
            out[name] = copy_value(value)
    return out
