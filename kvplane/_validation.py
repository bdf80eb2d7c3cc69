"""Input validation for every public call of the contract, and the names of kvplane's own partitions.

The checks run once, in :class:`kvplane._gated.GatedDataPlaneClient`, before a backend sees the
call, so a rejected call leaves no trace and every backend rejects the same input the same way.

kvplane's own partitions (backend records, loader plan logs) are named by :func:`internal_partition`
and recognised by :func:`is_internal_partition`: ``list_keys(None)`` / ``kv_list()`` hide them, a
call naming one lists or reads it. Those under ``__kvplane__/backend/`` hold a backend's private
records: every contract call naming one is rejected.

Examples:
    >>> import torch
    >>> from kvplane._validation import to_batch, internal_partition, is_internal_partition, check_partition
    >>> td = to_batch({"ids": torch.zeros(2, 3), "text": ["a", "b"]}, 2)
    >>> td.batch_size, td.get("text").tolist()
    (torch.Size([2]), ['a', 'b'])
    >>> internal_partition("plans", "rollouts:train"), is_internal_partition("__kvplane__/plans/x")
    ('__kvplane__/plans/rollouts:train', True)
    >>> from kvplane import DataPlaneBadRequest
    >>> try:
    ...     check_partition(internal_partition("backend", "p"))
    ... except DataPlaneBadRequest as exc:
    ...     print(exc)
    partition '__kvplane__/backend/p' is reserved for the backend's own records
"""

from __future__ import annotations

import copy
import json
import math
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tensordict import NonTensorData, NonTensorStack, TensorDict, TensorDictBase, is_non_tensor

from kvplane._errors import DataPlaneBadRequest
from kvplane._tags import SCALARS, copy_value
from kvplane._tensors import make_object_column, stack_rows

__all__ = [
    "BACKEND_OWNER",
    "INTERNAL_PREFIX",
    "MAX_COUNT",
    "Claim",
    "Declaration",
    "check_claim",
    "check_flag",
    "check_ids",
    "check_metadata",
    "check_partition",
    "check_path",
    "check_registration",
    "check_scan",
    "check_select",
    "check_tags",
    "check_text",
    "check_timeout",
    "check_write",
    "internal_partition",
    "is_internal_partition",
    "to_batch",
]

#: Every partition kvplane keeps for itself starts with this.
INTERNAL_PREFIX = "__kvplane__/"
#: The owner of a backend's private records (``__kvplane__/backend/<partition>``).
BACKEND_OWNER = "backend"
#: The largest count a call may name (``batch_size``, ``num_samples``, ``dp_rank``, ...): a C int.
MAX_COUNT = 2**31 - 1


def check_text(value: str, what: str) -> str:
    """A name must encode as UTF-8: a lone surrogate (``"bad\\ud800"``) cannot cross a process."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataPlaneBadRequest(
            f"{what} {value!r} is not valid Unicode text (a lone surrogate at position {exc.start})"
        ) from None
    return value


def internal_partition(owner: str, name: str) -> str:
    """The id of one of kvplane's own partitions: ``__kvplane__/<owner>/<name>``."""
    return f"{INTERNAL_PREFIX}{owner}/{name}"


def is_internal_partition(partition_id: Any) -> bool:
    """True for kvplane's own partitions (hidden from ``list_keys(None)`` and ``kv_list()``)."""
    return isinstance(partition_id, str) and partition_id.startswith(INTERNAL_PREFIX)


def check_partition(partition_id: Any) -> str:
    """A partition id must be a non-empty string outside the backends' reserved records."""
    if not isinstance(partition_id, str) or not partition_id:
        raise DataPlaneBadRequest(f"partition_id must be a non-empty string, got {partition_id!r}")
    if partition_id.startswith(internal_partition(BACKEND_OWNER, "")):
        raise DataPlaneBadRequest(f"partition {partition_id!r} is reserved for the backend's own records")
    return check_text(partition_id, "partition_id")


#: Keys examined per page of a cursor listing when ``count`` is not given.
SCAN_COUNT = 1000


def check_scan(partition_id: Any, cursor: Any, count: Any, match: Any) -> tuple[str, int, int, str | None]:
    """Arguments of a cursor listing: ``(partition, cursor, count, match)``.

    Examples:
        >>> check_scan("p", 0, None, "g1/")
        ('p', 0, 1000, 'g1/')
        >>> check_scan(None, 0, 10, None)
        Traceback (most recent call last):
        ...
        kvplane._errors.DataPlaneBadRequest: a cursor listing names one partition (partition_id=None given)
    """
    if partition_id is None:
        raise DataPlaneBadRequest("a cursor listing names one partition (partition_id=None given)")
    pid = check_partition(partition_id)
    if cursor is None:
        raise DataPlaneBadRequest("count and match page a cursor listing: pass cursor=0 to start one")
    if isinstance(cursor, bool) or not isinstance(cursor, int) or cursor < 0:
        raise DataPlaneBadRequest(f"cursor must be an int >= 0 (0 starts a scan), got {cursor!r}")
    page = SCAN_COUNT if count is None else count
    if isinstance(page, bool) or not isinstance(page, int) or not 0 < page <= MAX_COUNT:
        raise DataPlaneBadRequest(f"count must be an int in [1, {MAX_COUNT}], got {count!r}")
    if match is not None and not isinstance(match, str):
        raise DataPlaneBadRequest(f"match must be a key prefix (a string) or None, got {match!r}")
    return pid, cursor, page, None if not match else check_text(match, "match")


def check_ids(ids: Any, what: str = "keys") -> list[str]:
    """Ids must be a list (or tuple) of distinct non-empty strings."""
    if not isinstance(ids, (list, tuple)):
        raise DataPlaneBadRequest(f"{what} must be a list of strings, got {type(ids).__name__}")
    seen: set[str] = set()
    for key in ids:
        if not isinstance(key, str) or not key:
            raise DataPlaneBadRequest(f"{what} must be non-empty strings, got {key!r} ({type(key).__name__})")
        if key in seen:
            raise DataPlaneBadRequest(f"{what} contain {key!r} more than once")
        seen.add(key)
    if not "".join(ids).isascii():  # one pass for the common all-ASCII case
        for key in ids:
            check_text(key, what[:-1] if what.endswith("s") else what)
    return list(ids)


def check_select(select_fields: Any) -> list[str] | None:
    """``None`` (every field), a field name, or a list of distinct field names."""
    if select_fields is None:
        return None
    return check_ids([select_fields] if isinstance(select_fields, str) else select_fields, "select_fields")


def _tag_leaf(where: str) -> Any:
    def check(value: Any) -> None:
        if type(value) is str:
            check_text(value, f"{where} holds a string")

    return check


def check_tags(tags: Any, n: int) -> list[dict[str, Any]] | None:
    """Tags must be ``None`` or one mapping with string keys per id; returns the store's own copies.

    Containers among the values are copied (see :mod:`kvplane._tags`), so the caller's later edits
    never reach the store; every string, in names and values, must be valid Unicode text.
    """
    if tags is None:
        return None
    if isinstance(tags, Mapping) or not isinstance(tags, Sequence) or isinstance(tags, (str, bytes)):
        raise DataPlaneBadRequest(f"tags must be a list with one dict per key, got {type(tags).__name__}")
    if len(tags) != n:
        raise DataPlaneBadRequest(f"got {len(tags)} tags for {n} keys; pass exactly one tag dict per key")
    out = []
    texts: list[str] = []  # names and string values, checked for valid Unicode together below
    for i, tag in enumerate(tags):
        if tag is None:
            tag = {}
        if not isinstance(tag, Mapping):
            raise DataPlaneBadRequest(f"tags[{i}] must be a dict, got {type(tag).__name__}")
        own: dict[str, Any] = {}
        for name, value in tag.items():
            if not isinstance(name, str):
                raise DataPlaneBadRequest(f"tags[{i}] has a non-string tag name {name!r}")
            texts.append(name)
            kind = type(value)
            if kind in _PLAIN:  # immutable and nothing to check: shared, as copy_value would
                own[name] = value
                continue
            if kind is str:
                texts.append(value)
                own[name] = value
                continue
            try:
                own[name] = copy_value(value, _tag_leaf(f"tags[{i}][{name!r}]"))
            except DataPlaneBadRequest:
                raise
            except (TypeError, ValueError, copy.Error, RecursionError) as exc:
                raise DataPlaneBadRequest(
                    f"tags[{i}][{name!r}] cannot be copied into the store "
                    f"({type(value).__name__}: {exc}); use plain values"
                ) from exc
        out.append(own)
    if not "".join(texts).isascii():  # one pass for the common all-ASCII case; else say which
        for i, tag in enumerate(out):
            for name, value in tag.items():
                check_text(name, f"tags[{i}] name")
                if type(value) is str:
                    check_text(value, f"tags[{i}][{name!r}]")
    return out


#: Tag value types stored as they are, with no check (strings are checked for valid Unicode).
_PLAIN = SCALARS - {str}


def check_timeout(timeout_s: Any, what: str = "timeout_s") -> float:
    """A deadline must be a finite number of seconds in ``[0, threading.TIMEOUT_MAX)``.

    ``threading.TIMEOUT_MAX`` (about 292 years on Linux) is the longest wait the platform can make.
    """
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)):
        raise DataPlaneBadRequest(f"{what} must be a finite number of seconds, got {timeout_s!r}")
    try:
        seconds = float(timeout_s)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise DataPlaneBadRequest(f"{what} must be a finite number of seconds, got {timeout_s!r}")
    if seconds < 0:
        raise DataPlaneBadRequest(f"{what} must not be negative, got {timeout_s!r}")
    if seconds >= threading.TIMEOUT_MAX:
        raise DataPlaneBadRequest(
            f"{what}={timeout_s!r} is beyond the longest wait this platform supports "
            f"(threading.TIMEOUT_MAX = {threading.TIMEOUT_MAX:g} s)"
        )
    return seconds


def _optional_int(name: str, value: Any, minimum: int) -> int | None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_COUNT
    ):
        raise DataPlaneBadRequest(f"{name} must be an int in [{minimum}, {MAX_COUNT}] or None, got {value!r}")
    return value


def _check_enums(enums: Any) -> dict[str, list[str]]:
    if enums is None:
        return {}
    if not isinstance(enums, Mapping):
        raise DataPlaneBadRequest(f"enums must be a dict of field -> values, got {type(enums).__name__}")
    out = {}
    for name, values in enums.items():
        if not isinstance(name, str) or not name:
            raise DataPlaneBadRequest(f"enums names fields by non-empty strings, got {name!r}")
        check_text(name, "enums field")
        if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
            raise DataPlaneBadRequest(f"enums[{name!r}] must be a list of strings, got {values!r}")
        out[name] = [check_text(v, f"enums[{name!r}] value") for v in values]
    return out


class Declaration(NamedTuple):
    """A validated ``register_partition`` call."""

    fields: list[str]
    num_samples: int | None
    consumer_tasks: list[str]
    grpo_group_size: int | None
    enums: dict[str, list[str]]


def check_registration(
    fields: Any, num_samples: Any, consumer_tasks: Any, grpo_group_size: Any = None, enums: Any = None
) -> Declaration:
    """Validate a ``register_partition`` call (the partition id is checked by the caller)."""
    checked_enums = _check_enums(enums)
    return Declaration(
        check_ids(fields, "fields"),
        _optional_int("num_samples", num_samples, 0),
        check_ids(consumer_tasks, "consumer_tasks"),
        _optional_int("grpo_group_size", grpo_group_size, 1),
        checked_enums,
    )


class Claim(NamedTuple):
    """A validated ``claim_meta`` call (the partition id is checked by the caller)."""

    task_name: str
    required_fields: list[str]
    batch_size: int
    dp_rank: int | None
    blocking: bool
    timeout_s: float


def check_claim(
    task_name: Any,
    required_fields: Any,
    batch_size: Any,
    dp_rank: Any = None,
    blocking: Any = True,
    timeout_s: Any = 60.0,
) -> Claim:
    """Validate a ``claim_meta`` call."""
    if not isinstance(task_name, str) or not task_name:
        raise DataPlaneBadRequest(f"task_name must be a non-empty string, got {task_name!r}")
    check_text(task_name, "task_name")
    required = check_ids(required_fields, "required_fields")
    if not required:
        raise DataPlaneBadRequest(
            "required_fields must name at least one field (readiness is field production)"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_COUNT:
        raise DataPlaneBadRequest(f"batch_size must be an int in [1, {MAX_COUNT}], got {batch_size!r}")
    if not isinstance(blocking, bool):
        raise DataPlaneBadRequest(f"blocking must be True or False, got {blocking!r}")
    rank = _optional_int("dp_rank", dp_rank, 0)
    return Claim(task_name, required, batch_size, rank, blocking, check_timeout(timeout_s))


def check_write(
    sample_ids: Any, partition_id: Any, fields: Any, tags: Any
) -> tuple[list[str], TensorDict | None, list[dict[str, Any]] | None]:
    """Validate a whole ``put_samples`` call before anything is stored.

    Returns the ids, the fields as a flat ``TensorDict`` (or ``None``) and the tag dicts (or ``None``).

    Raises:
        DataPlaneBadRequest: Any part of the call is invalid, or it writes neither fields nor tags.
    """
    check_partition(partition_id)
    keys = check_ids(sample_ids, "sample_ids")
    batch = to_batch(fields, len(keys))
    tag_list = check_tags(tags, len(keys))
    if keys and batch is None and tag_list is None:
        raise DataPlaneBadRequest("a write needs fields, tags, or both")
    return keys, batch, tag_list


def _check_storable(name: str, value: torch.Tensor, what: str = "is") -> None:
    """A stored tensor must hold its bytes on a real device in the strided (or jagged) layout."""
    if value.device.type == "meta":
        raise DataPlaneBadRequest(f"field {name!r} {what} on the meta device: it has no data to store")
    if value.layout not in (torch.strided, torch.jagged):
        raise DataPlaneBadRequest(
            f"field {name!r} {what} {value.layout} tensors; store dense tensors (call .to_dense())"
        )


def _column_from_list(name: str, values: Sequence[Any]) -> torch.Tensor | NonTensorStack:
    if values and all(isinstance(v, torch.Tensor) for v in values):
        for row in values:
            _check_storable(name, row, "has rows")
        devices = {str(v.device) for v in values}
        if len(devices) > 1:
            raise DataPlaneBadRequest(f"field {name!r} has rows on devices {sorted(devices)}; use one")
        dtypes = {v.dtype for v in values}
        if len(dtypes) > 1:
            raise DataPlaneBadRequest(
                f"field {name!r} mixes row dtypes {sorted(map(str, dtypes))}; use one dtype"
            )
        return stack_rows(name, list(values))
    if any(isinstance(v, torch.Tensor) for v in values):
        raise DataPlaneBadRequest(f"field {name!r} mixes tensors and other values")
    return make_object_column(values)


def to_batch(fields: Any, n: int) -> TensorDict | None:
    """Normalise ``fields`` into a flat ``TensorDict`` with batch size ``[n]``.

    Accepts ``None``, a ``TensorDict`` whose first batch dim is ``n``, or a dict whose values are
    tensors with leading dim ``n`` (nested jagged allowed), ``NonTensorStack``s of ``n`` items, or
    lists of ``n`` per-row values (tensors → stacked or jagged; anything else → ``NonTensorStack``).
    Nothing is copied here.

    Raises:
        DataPlaneBadRequest: Wrong type, row count mismatch, nested sub-dicts, non-string names.
    """
    if fields is None:
        return None
    if isinstance(fields, TensorDictBase):
        if fields.batch_dims < 1 or fields.batch_size[0] != n:
            raise DataPlaneBadRequest(
                f"fields has batch size {list(fields.batch_size)} but there are {n} keys; "
                "the first batch dimension must equal the number of keys"
            )
        items = {k: fields.get(k) for k in fields.keys()}
    elif isinstance(fields, Mapping):
        items = dict(fields)
    else:
        raise DataPlaneBadRequest(f"fields must be a TensorDict or a dict, got {type(fields).__name__}")
    if not items:
        raise DataPlaneBadRequest("fields is empty; pass None for a tag-only write")
    columns: dict[str, Any] = {}
    for name, value in items.items():
        if not isinstance(name, str) or not name:
            raise DataPlaneBadRequest(f"field names must be non-empty strings, got {name!r}")
        check_text(name, "field name")
        if isinstance(value, TensorDictBase) and not is_non_tensor(value):
            raise DataPlaneBadRequest(f"field {name!r} is a nested TensorDict; store flat fields only")
        if isinstance(value, (list, tuple)):
            if len(value) != n:
                raise DataPlaneBadRequest(f"field {name!r} has {len(value)} rows for {n} keys")
            value = _column_from_list(name, value)
        elif isinstance(value, NonTensorData) and not isinstance(value, NonTensorStack):
            value = make_object_column([value.data] * n) if n == 1 else value
        if isinstance(value, torch.Tensor):
            _check_storable(name, value)
            if value.dim() == 0 or value.size(0) != n:
                shape = list(value.shape) if not value.is_nested else f"nested of {value.size(0)} rows"
                raise DataPlaneBadRequest(f"field {name!r} has shape {shape} but there are {n} keys")
        elif is_non_tensor(value):
            if value.batch_size[:1] != torch.Size([n]):
                raise DataPlaneBadRequest(f"field {name!r} has {list(value.batch_size)} rows for {n} keys")
        else:
            raise DataPlaneBadRequest(
                f"field {name!r} must be a tensor, a NonTensorStack or a list of {n} values, "
                f"got {type(value).__name__}"
            )
        columns[name] = value
    return TensorDict(columns, batch_size=[n])


def check_path(value: Any, what: str) -> Path:
    """A file-system path: a non-empty ``str`` or ``os.PathLike``."""
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise DataPlaneBadRequest(f"{what} must be a non-empty path (str or os.PathLike), got {value!r}")
    path = os.fspath(value)
    if not isinstance(path, str):
        raise DataPlaneBadRequest(f"{what} must be a text path, got {value!r}")
    return Path(path)


def check_flag(value: Any, what: str) -> bool:
    """A ``bool`` (not a truthy stand-in)."""
    if not isinstance(value, bool):
        raise DataPlaneBadRequest(f"{what} must be true or false, got {value!r}")
    return value


def check_metadata(metadata: Any) -> dict[str, Any]:
    """User metadata for ``metadata.json``: ``None`` or a JSON-serialisable dict with string keys."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise DataPlaneBadRequest(f"metadata must be a dict with string keys, got {metadata!r}")
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise DataPlaneBadRequest(f"metadata must be JSON-serialisable: {e}") from e
    return dict(metadata)
