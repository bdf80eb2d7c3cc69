"""Jagged codec helpers: NeMo-RL's padded <-> jagged bridge, same names, signatures and results.

Variable-length (per-token) fields travel as ``torch.jagged`` nested tensors, so no padding is
stored or moved; a reader pads them back (:func:`materialize`) only when it needs rectangles.
Dtypes are preserved (bf16 included); bad shapes raise :class:`~kvplane._errors.DataPlaneBadRequest`
(a ``ValueError``). Differences from NeMo-RL: ``materialize`` returns a plain ``dict``, and inputs
NeMo-RL would slice silently into garbage (negative or too-long lengths, a response longer than its
row) are rejected.

Design: docs/internals.md#kvplanecodecpy--the-jagged-codec-helpers

Examples:
    >>> import torch
    >>> from kvplane import materialize, pack_jagged_fields, response_from_nested, to_nested_by_length
    >>> ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    >>> lengths = torch.tensor([3, 2])
    >>> wire = pack_jagged_fields({"input_ids": ids, "reward": torch.tensor([1.0, 0.5])},
    ...                           lengths=lengths, token_aligned_fields={"input_ids"})
    >>> wire["input_ids"].is_nested, [row.tolist() for row in wire["input_ids"].unbind()]
    (True, [[5, 6, 7], [8, 9]])
    >>> out = materialize(wire, pad_value_dict={"input_ids": -1}, pad_to_seqlen=4)
    >>> out["input_ids"].tolist(), out["reward"].tolist()
    ([[5, 6, 7, -1], [8, 9, -1, -1]], [1.0, 0.5])
    >>> logprobs = to_nested_by_length(torch.arange(8.0).view(2, 4), lengths)
    >>> mask = to_nested_by_length(torch.ones(2, 4), torch.tensor([2, 1]))
    >>> [row.tolist() for row in response_from_nested(logprobs, mask).unbind()]
    [[0.0, 1.0], [4.0]]
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
import torch
from tensordict import NonTensorData, NonTensorStack, TensorDict, TensorDictBase

from kvplane._errors import DataPlaneBadRequest

__all__ = [
    "SEQLEN_PAD_EXEMPT_FIELDS",
    "Layout",
    "materialize",
    "pack_jagged_fields",
    "pack_per_token_field",
    "response_from_nested",
    "to_nested_by_length",
]

Layout = Literal["padded", "jagged"]

#: Fields whose dimension 1 is not the token dimension, so ``pad_to_seqlen`` leaves them alone
#: (NeMo-RL's packed multimodal fields and its full-vocabulary distillation teacher payloads).
SEQLEN_PAD_EXEMPT_FIELDS: frozenset[str] = frozenset(
    {
        "pixel_values",
        "pixel_values_videos",
        "image_grid_thw",
        "video_grid_thw",
        "second_per_grid_ts",
        "input_features",
        "teacher_full_hidden_states",
        "teacher_full_logits",
    }
)


def _lengths_list(lengths: Any, rows: int, what: str) -> list[int]:
    """Validate per-row lengths (a 1-D integer tensor with ``rows`` entries) into a list."""
    if not isinstance(lengths, torch.Tensor) or lengths.is_nested:
        raise DataPlaneBadRequest(f"{what}: lengths must be a 1-D integer tensor, got {type(lengths).__name__}")
    if lengths.shape != (rows,):
        raise DataPlaneBadRequest(f"lengths shape {tuple(lengths.shape)} != ({rows},) (rows of padded)")
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise DataPlaneBadRequest(f"{what}: lengths must have an integer dtype, got {lengths.dtype}")
    return [int(n) for n in lengths.tolist()]  # one device sync, also for CUDA lengths


def _check_tensor(value: Any, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise DataPlaneBadRequest(f"{what} must be a torch.Tensor, got {type(value).__name__}")
    return value


def to_nested_by_length(padded: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Strip right padding off ``padded`` (``(N, S, ...)``): row ``i`` becomes ``padded[i, :lengths[i]]``.

    Args:
        padded: A rectangular tensor of shape ``(N, S, ...)``.
        lengths: Valid length of each row, an integer tensor of shape ``(N,)`` with values in
            ``[0, S]``.

    Returns:
        A ``torch.jagged`` nested tensor with ``padded``'s dtype and trailing dimensions (an empty
        one when ``N == 0``).

    Raises:
        DataPlaneBadRequest: ``padded`` is not at least 2-D, or ``lengths`` is not ``(N,)``
            integers within ``[0, S]``.

    Examples:
        >>> import torch
        >>> nested = to_nested_by_length(torch.tensor([[1, 2, 0], [3, 0, 0]]), torch.tensor([2, 1]))
        >>> [row.tolist() for row in nested.unbind()]
        [[1, 2], [3]]
    """
    padded = _check_tensor(padded, "to_nested_by_length: padded")
    if padded.is_nested or padded.dim() < 2:
        shape = "nested" if padded.is_nested else tuple(padded.shape)
        raise DataPlaneBadRequest(f"to_nested_by_length expects (N, S, ...); got shape {shape}")
    n, s = padded.shape[0], padded.shape[1]
    lens = _lengths_list(lengths, n, "to_nested_by_length")
    bad = [(i, length) for i, length in enumerate(lens) if not 0 <= length <= s]
    if bad:
        i, length = bad[0]
        raise DataPlaneBadRequest(f"to_nested_by_length: lengths[{i}] = {length} is outside [0, {s}] (S of padded)")
    if n == 0:
        values = padded.new_empty((0, *padded.shape[2:]))
        offsets = torch.zeros(1, dtype=torch.long, device=padded.device)
        return torch.nested.nested_tensor_from_jagged(values, offsets)
    return torch.nested.as_nested_tensor([padded[i, :length] for i, length in enumerate(lens)], layout=torch.jagged)


def pack_per_token_field(val: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Jaggedize a field known to be per-token; pass it through when its shape does not allow it.

    The sequence dimension may be wider than ``max(lengths)`` (sequence parallelism rounds it up);
    each row is cut to its own length. ``val`` passes through (detached, contiguous) when
    ``lengths`` is empty, ``val`` is 1-D, its first dimension is not ``len(lengths)``, or its second
    is shorter than ``max(lengths)``.

    Raises:
        DataPlaneBadRequest: ``val`` is not a tensor, or ``lengths`` is not a 1-D integer tensor
            (or holds a negative length).

    Examples:
        >>> import torch
        >>> wide = torch.arange(8).view(2, 4)            # S = 4 > max(lengths) = 3
        >>> [row.tolist() for row in pack_per_token_field(wide, torch.tensor([3, 1])).unbind()]
        [[0, 1, 2], [4]]
        >>> pack_per_token_field(torch.tensor([1.0, 2.0]), torch.tensor([3, 1])).tolist()   # 1-D: as is
        [1.0, 2.0]
    """
    val = _check_tensor(val, "pack_per_token_field: val")
    if not isinstance(lengths, torch.Tensor) or lengths.dim() != 1:
        shape = tuple(lengths.shape) if isinstance(lengths, torch.Tensor) else type(lengths).__name__
        raise DataPlaneBadRequest(f"pack_per_token_field: lengths must be a 1-D tensor, got {shape}")
    n = lengths.shape[0]
    if n == 0 or val.is_nested or val.dim() < 2 or val.shape[0] != n:
        return val if val.is_nested else val.detach().contiguous()
    if val.shape[1] < int(lengths.max().item()):
        return val.detach().contiguous()
    return to_nested_by_length(val.detach(), lengths)


def pack_jagged_fields(
    fields: Mapping[str, Any],
    *,
    lengths: torch.Tensor | None,
    token_aligned_fields: Iterable[str] | None = None,
    lengths_by_field: Mapping[str, torch.Tensor] | None = None,
    force_jagged_fields: Iterable[str] | None = None,
) -> TensorDict:
    """Pack a column dict into the wire ``TensorDict`` a put takes (a layout change, no copy if possible).

    Fields named in ``token_aligned_fields`` go through :func:`pack_per_token_field` with
    ``lengths``; fields named in ``lengths_by_field`` go through it with their own lengths; every
    other tensor passes through rectangular; an ``np.ndarray(dtype=object)`` column becomes a
    ``NonTensorStack`` with one element per row (NeMo-RL stores the bare array, which tensordict
    would share whole with every row on a per-sample store), and :func:`materialize` turns it back
    into an object array.

    Args:
        fields: Column name -> tensor or object array, one row per sample.
        lengths: Per-row valid lengths, ``(N,)``; ``None`` turns jagged packing off.
        token_aligned_fields: Names of the per-token fields.
        lengths_by_field: Per-field lengths for per-token fields whose rows have other lengths.
        force_jagged_fields: NeMo-RL's other name for ``token_aligned_fields`` (some of its versions
            use it); the two sets are joined.

    Returns:
        A ``TensorDict`` with ``batch_size=[N]``: ``N = len(lengths)``, or with ``lengths=None`` the
        common row count of the columns (0 when there are none).

    Raises:
        DataPlaneBadRequest: A value is neither a tensor nor an object array, or the columns do not
            all have ``N`` rows.

    Examples:
        >>> import torch
        >>> td = pack_jagged_fields({"lp": torch.zeros(2, 5), "x": torch.ones(2, 5)},
        ...                         lengths=torch.tensor([3, 5]), token_aligned_fields={"lp"})
        >>> td.batch_size, td["lp"].is_nested, td["x"].is_nested
        (torch.Size([2]), True, False)
    """
    if not isinstance(fields, Mapping):
        raise DataPlaneBadRequest(f"pack_jagged_fields: fields must be a mapping, got {type(fields).__name__}")
    aligned = frozenset(token_aligned_fields or ()) | frozenset(force_jagged_fields or ())
    per_field = dict(lengths_by_field or {})
    packed: dict[str, Any] = {}
    for key, value in fields.items():
        if isinstance(value, np.ndarray) and value.dtype == object:
            packed[key] = value  # wrapped per row below, once the row count is checked
        elif isinstance(value, torch.Tensor):
            if key in per_field:
                packed[key] = pack_per_token_field(value, per_field[key])
            elif lengths is not None and key in aligned:
                packed[key] = pack_per_token_field(value, lengths)
            else:
                packed[key] = value if value.is_nested else value.detach().contiguous()
        else:
            raise DataPlaneBadRequest(
                f"pack_jagged_fields: unsupported value type for {key!r}: {type(value).__name__} "
                "(use torch.Tensor or np.ndarray(dtype=object))"
            )
    if lengths is not None:
        n = int(_check_tensor(lengths, "pack_jagged_fields: lengths").shape[0])
    else:
        n = next((_rows(v) for v in packed.values()), 0)
    for key, value in packed.items():
        if _rows(value) != n:
            raise DataPlaneBadRequest(f"pack_jagged_fields: field {key!r} has {_rows(value)} rows, expected {n}")
        if isinstance(value, np.ndarray):
            # One element per row: a bare array would be one value shared by every row.
            packed[key] = NonTensorStack(*(NonTensorData(data=item, batch_size=[]) for item in value))
    return TensorDict(packed, batch_size=[n])


def _rows(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return int(value.size(0)) if value.dim() else 0
    return len(value)


def response_from_nested(full: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Cut each row's response slice out of jagged prompt+response rows, shifted left by one token.

    Output position ``i`` predicts input token ``i + 1``, so for a row of length ``L`` with response
    length ``R`` (row ``i`` of ``response_mask``) the slice is ``row[L - R - 1 : L - 1]``.

    Args:
        full: Jagged ``(N, prompt_len + response_len, ...)`` rows (e.g. per-token log-probs).
        response_mask: Jagged ``(N, response_len)``; only its row lengths are used.

    Returns:
        A jagged ``(N, response_len, ...)`` tensor with ``full``'s dtype.

    Raises:
        DataPlaneBadRequest: Either input is not a jagged nested tensor, the row counts differ, or
            a response does not fit its row (``R + 1 > L``).
    """
    for name, value in (("full", full), ("response_mask", response_mask)):
        if not isinstance(value, torch.Tensor) or not value.is_nested or value.layout != torch.jagged:
            raise DataPlaneBadRequest(f"response_from_nested: {name} must be a torch.jagged nested tensor")
    row_lens = full.offsets().diff().tolist()
    response_lens = response_mask.offsets().diff().tolist()
    if len(row_lens) != len(response_lens):
        raise DataPlaneBadRequest(
            f"response_from_nested: full has {len(row_lens)} rows, response_mask {len(response_lens)}"
        )
    values = full.values()
    ends = full.offsets()[1:].tolist()
    rows = []
    for i, (row_len, resp_len, end) in enumerate(zip(row_lens, response_lens, ends, strict=True)):
        if resp_len + 1 > row_len:
            raise DataPlaneBadRequest(
                f"response_from_nested: row {i} has {row_len} tokens, too few for a response of {resp_len} "
                "shifted by one"
            )
        rows.append(values[end - resp_len - 1 : end - 1])
    if not rows:
        return torch.nested.nested_tensor_from_jagged(values[:0], full.offsets()[:1])
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


def materialize(
    td: TensorDictBase | Mapping[str, Any],
    layout: Layout = "padded",
    pad_value_dict: Mapping[str, int | float] | None = None,
    pad_to_seqlen: int = 0,
) -> dict[str, Any]:
    """Turn a fetched wire ``TensorDict`` into what a trainer consumes.

    Args:
        td: The fetched batch (a ``TensorDict`` or a mapping of its leaves).
        layout: ``"padded"`` pads nested leaves with ``torch.nested.to_padded_tensor`` (pad value
            ``pad_value_dict[field]``, default 0); ``"jagged"`` leaves nested leaves as they are.
            Rectangular leaves pass through either way.
        pad_value_dict: Per-field pad values.
        pad_to_seqlen: When > 0, right-pad dimension 1 of every rectangular 2-D+ tensor shorter
            than this to exactly this length (with the field's pad value), so that every DP rank
            gets one shared length; never truncates; skips :data:`SEQLEN_PAD_EXEMPT_FIELDS`.

    Returns:
        A ``dict``: rectangular tensors (padded layout), nested tensors (jagged layout), and
        ``np.ndarray(dtype=object)`` for non-tensor columns; dtypes as stored.

    Raises:
        DataPlaneBadRequest: ``layout`` is not ``"padded"``/``"jagged"``, ``pad_to_seqlen`` is
            negative, or a leaf is neither a tensor nor a non-tensor column.
    """
    if layout not in ("padded", "jagged"):
        raise DataPlaneBadRequest(f"materialize: layout must be 'padded' or 'jagged', got {layout!r}")
    try:
        target = operator.index(pad_to_seqlen)  # int, numpy or 0-d torch integers
    except TypeError:
        target = -1
    if isinstance(pad_to_seqlen, bool) or target < 0:
        raise DataPlaneBadRequest(f"materialize: pad_to_seqlen must be an integer >= 0, got {pad_to_seqlen!r}")
    if isinstance(td, TensorDictBase):
        items = [(key, td.get(key)) for key in td.keys(include_nested=False)]
    elif isinstance(td, Mapping):
        items = list(td.items())
    else:
        raise DataPlaneBadRequest(f"materialize: td must be a TensorDict or a mapping, got {type(td).__name__}")
    pads = pad_value_dict or {}
    out: dict[str, Any] = {}
    for key, value in items:
        if not isinstance(value, torch.Tensor):
            out[key] = _object_column(key, value)
            continue
        pad = pads.get(key, 0)
        if value.is_nested:
            if layout == "jagged":
                out[key] = value
                continue
            value = torch.nested.to_padded_tensor(value, padding=pad)
        if 0 < target and value.dim() >= 2 and value.shape[1] < target:
            if key not in SEQLEN_PAD_EXEMPT_FIELDS:
                spec = [0, 0] * (value.dim() - 2) + [0, target - value.shape[1]]
                value = torch.nn.functional.pad(value, spec, value=pad)
        out[key] = value
    return out


def _object_column(key: str, value: Any) -> np.ndarray:
    """A non-tensor column as ``np.ndarray(dtype=object)``, one element per row."""
    if isinstance(value, NonTensorStack):
        items = value.tolist()
    elif isinstance(value, NonTensorData):
        data = value.data
        items = list(data) if isinstance(data, (np.ndarray, list, tuple)) else [data]
    elif isinstance(value, (np.ndarray, list, tuple)):
        items = list(value)
    else:
        raise DataPlaneBadRequest(
            f"materialize() received unexpected leaf type for {key!r}: {type(value).__name__} "
            "(expected a tensor or a non-tensor column)"
        )
    column = np.empty(len(items), dtype=object)  # no np.asarray: it would nest array-like items
    for i, item in enumerate(items):
        column[i] = item.data if isinstance(item, NonTensorData) else item
    return column
