"""Tensor shaping shared by every backend: one output shape for every kind of column.

Reads come back dense ``[B, ...]`` when rows are uniform, ``[B]`` for per-row scalars, a jagged
nested tensor for ragged rows, a ``NonTensorStack`` for Python objects. Input validation lives in
:mod:`kvplane._validation`.

Examples:
    >>> import torch
    >>> from kvplane._tensors import stack_rows, densify, td_nbytes
    >>> stack_rows("x", [torch.ones(2), torch.ones(3)]).is_nested
    True
    >>> nt = torch.nested.nested_tensor([torch.arange(3), torch.arange(3)], layout=torch.jagged)
    >>> densify(nt).shape
    torch.Size([2, 3])
    >>> from tensordict import TensorDict
    >>> td_nbytes(TensorDict(x=torch.zeros(2, 4), batch_size=[2]))
    32
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from tensordict import NonTensorData, NonTensorStack, TensorDictBase

from kvplane._errors import DataPlaneBadRequest

__all__ = ["OBJECT_KIND", "densify", "field_kind", "make_object_column", "stack_rows", "td_nbytes"]

#: The ``field_kind`` of a non-tensor column.
OBJECT_KIND = "object"


def make_object_column(values: Sequence[Any]) -> NonTensorStack:
    """A ``NonTensorStack`` holding one Python object per row (lists stay whole objects)."""
    return NonTensorStack(*[NonTensorData(v) for v in values])


def field_kind(value: Any) -> str:
    """What a column must keep within a partition: its dtype, and its device when that is not the CPU.

    ``"torch.float32"``, ``"torch.float32 on cuda:0"``…, or ``"object"``.
    """
    if isinstance(value, torch.Tensor):
        return str(value.dtype) if value.device.type == "cpu" else f"{value.dtype} on {value.device}"
    return OBJECT_KIND


def stack_rows(
    name: str,
    rows: list[torch.Tensor],
    alloc: Callable[[tuple[int, ...], torch.dtype], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Rows of equal shape → one dense tensor (into ``alloc(shape, dtype)`` when given and the rows
    share a dtype); ragged rows → a jagged nested tensor.

    Raises:
        DataPlaneBadRequest: Rows differ in rank or in a dimension other than their first.
    """
    if not rows:
        return torch.empty(0)
    first = rows[0].shape
    if all(r.shape == first for r in rows):
        dtype = rows[0].dtype
        if alloc is not None and all(r.dtype == dtype for r in rows):
            return torch.stack(rows, out=alloc((len(rows), *first), dtype))
        return torch.stack(rows)
    if any(r.dim() != len(first) or r.dim() == 0 or r.shape[1:] != first[1:] for r in rows):
        raise DataPlaneBadRequest(
            f"field {name!r}: rows differ in more than their first dimension "
            f"({sorted({tuple(r.shape) for r in rows})[:3]}...); a jagged tensor cannot hold them"
        )
    return torch.nested.nested_tensor(rows, layout=torch.jagged)


def densify(value: torch.Tensor) -> torch.Tensor:
    """A jagged nested tensor whose rows all have one length → a dense view (zero-copy).

    Anything else is returned unchanged.
    """
    if not (isinstance(value, torch.Tensor) and value.is_nested):
        return value
    offsets = value.offsets()
    if offsets is None:
        return value
    lengths = offsets.diff()
    batch = lengths.numel()
    if batch == 0 or bool((lengths != lengths[0]).any()):
        return value
    inner = value.values()
    return inner.view(batch, int(lengths[0]), *inner.shape[1:])


def td_nbytes(td: TensorDictBase | None) -> int:
    """Payload bytes of a TensorDict's tensor leaves (non-tensor leaves count 0)."""
    if td is None:
        return 0
    total = 0
    for key in td.keys(include_nested=True, leaves_only=True):
        value = td.get(key)
        if isinstance(value, torch.Tensor):
            data = value.values() if value.is_nested else value
            total += data.numel() * data.element_size()
    return total
