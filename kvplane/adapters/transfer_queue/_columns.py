"""The columnar layout: one stored object per field per put, and reads that slice or gather rows.

A put's column becomes one *payload*, a small dict whose bulk is one flat NumPy ``uint8`` array (Ray
serialises it out of band: one copy into the object store, a zero-copy view on the way out):

- ``dense``: a ``[B, ...]`` tensor, any dtype (bfloat16 and bool included: the bytes are stored);
- ``ragged``: rows of different shapes (a jagged or strided nested tensor), their bytes concatenated
  with each row's start and shape;
- ``objects``: anything else (a ``NonTensorStack``): the rows as a Python list.

:func:`gather` builds a read's column from ``(payload, row)`` pairs: rows of one shape come back as
one dense tensor, filled by one copy per contiguous run of rows (so rows that lie in one object are
one slice copied once; a read never aliases stored memory, so callers may edit what they get);
rows of different first dimensions come back jagged; objects as a ``NonTensorStack``.

Examples:
    >>> import torch
    >>> from kvplane.adapters.transfer_queue._columns import encode, gather, rows_of
    >>> a = encode(torch.arange(6).view(3, 2))
    >>> a["kind"], rows_of(a)
    ('dense', 3)
    >>> gather([(a, 2), (a, 0)])
    tensor([[4, 5],
            [0, 1]])
    >>> nt = torch.nested.nested_tensor([torch.ones(1), torch.zeros(3)], layout=torch.jagged)
    >>> r = encode(nt)
    >>> [t.tolist() for t in gather([(r, 1), (r, 0)]).unbind()]
    [[0.0, 0.0, 0.0], [1.0]]
    >>> gather([(encode(torch.tensor([0.5, 1.5])), 1)])
    tensor([1.5000])
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from tensordict import NonTensorStack, is_non_tensor

from kvplane._tensors import make_object_column

__all__ = ["encode", "gather", "rows_of"]

Payload = dict[str, Any]
_DTYPES = {str(d): d for d in vars(torch).values() if isinstance(d, torch.dtype)}


def _raw(t: torch.Tensor) -> np.ndarray:
    """The bytes of ``t`` (made contiguous) as a flat ``uint8`` NumPy view."""
    flat = t.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy() if flat.numel() else np.empty(0, dtype=np.uint8)


def encode(column: Any) -> Payload:
    """The payload storing ``column`` (a batch's field) as one object."""
    if isinstance(column, torch.Tensor) and column.is_nested:
        rows = list(column.unbind())
        if column.layout is torch.jagged and column.is_contiguous():  # one buffer already: no per-row copy
            values, offsets = column.values(), column.offsets().tolist()
            inner = math.prod(values.shape[1:])
            starts = [o * inner * values.element_size() for o in offsets[:-1]]
            data = _raw(values)
        else:
            sizes = [r.numel() * r.element_size() for r in rows]
            starts = [0, *np.cumsum(sizes)[:-1].tolist()] if rows else []
            data = np.concatenate([_raw(r) for r in rows]) if rows else np.empty(0, dtype=np.uint8)
        return {
            "kind": "ragged",
            "dtype": str(column.dtype),
            "data": data,
            "starts": starts,
            "shapes": [tuple(r.shape) for r in rows],
        }
    if isinstance(column, torch.Tensor):
        return {"kind": "dense", "dtype": str(column.dtype), "shape": tuple(column.shape), "data": _raw(column)}
    values = column.tolist() if is_non_tensor(column) or isinstance(column, NonTensorStack) else list(column)
    return {"kind": "objects", "values": values}


def rows_of(payload: Payload) -> int:
    """How many rows ``payload`` holds."""
    if payload["kind"] == "dense":
        return payload["shape"][0]
    return len(payload["shapes"] if payload["kind"] == "ragged" else payload["values"])


def _view(payload: Payload) -> torch.Tensor:
    """The stored bytes as a (read-only) ``uint8`` tensor; never written to."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the given NumPy array is not writable"
        return torch.from_numpy(payload["data"])


def _dense(payload: Payload) -> torch.Tensor:
    return _view(payload).view(_DTYPES[payload["dtype"]]).view(payload["shape"])


def _row(payload: Payload, row: int) -> torch.Tensor:
    """One row of a ragged payload, as a view of the stored bytes."""
    dtype = _DTYPES[payload["dtype"]]
    shape = payload["shapes"][row]
    start = payload["starts"][row]
    nbytes = math.prod(shape) * dtype.itemsize
    return _view(payload)[start : start + nbytes].view(dtype).view(shape)


def gather(rows: list[tuple[Payload, int]]) -> Any:
    """A read's column from ``(payload, row)`` pairs, in order (see the module docstring)."""
    kinds = {p["kind"] for p, _ in rows}
    if kinds == {"objects"}:
        return make_object_column([p["values"][r] for p, r in rows])
    if kinds == {"dense"} and len({p["shape"][1:] for p, _ in rows}) == 1:
        return _gather_dense(rows)
    views = [_dense(p)[r] if p["kind"] == "dense" else _row(p, r) for p, r in rows]
    if len({v.shape for v in views}) == 1:
        return torch.stack(views)
    if len({v.shape[1:] for v in views}) == 1 and all(v.dim() >= 1 for v in views):
        return torch.nested.nested_tensor(views, layout=torch.jagged)
    return torch.nested.nested_tensor(views)  # the read path reports rows no jagged tensor can hold


def _gather_dense(rows: list[tuple[Payload, int]]) -> torch.Tensor:
    """Rows of dense payloads of one row shape: one copy per run of consecutive rows of one payload."""
    first = _dense(rows[0][0])
    out = torch.empty((len(rows), *first.shape[1:]), dtype=first.dtype)
    position = 0
    while position < len(rows):
        payload, start = rows[position]
        end = position + 1
        while end < len(rows) and rows[end][0] is payload and rows[end][1] == start + (end - position):
            end += 1
        out[position:end].copy_(_dense(payload)[start : start + end - position])
        position = end
    return out
