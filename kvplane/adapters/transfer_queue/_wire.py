"""What goes onto TransferQueue's wire, and how what comes back is given kvplane's shapes.

TransferQueue returns every column with rows of rank >= 1 as a jagged nested tensor (even when the
rows are uniform), and MooncakeStore returns ``[B]`` columns as ``[B, 1]``. :func:`shape_column`
restores what went in: uniform jagged → a dense zero-copy view (:func:`kvplane._tensors.densify`),
``[B, 1]`` → ``[B]`` where the field's recorded row rank is 0 (a genuine ``[B, 1]`` column has rank
1 and stays), ragged rows stay jagged, object columns pass through.
On SimpleStorage, :func:`read_dense` fetches uniform columns dense in the first place.

Examples:
    >>> import torch
    >>> from kvplane.adapters.transfer_queue._wire import shape_column
    >>> nt = torch.nested.nested_tensor([torch.arange(3), torch.arange(3)], layout=torch.jagged)
    >>> shape_column("ids", nt, rank=1).shape
    torch.Size([2, 3])
    >>> ones = torch.nested.nested_tensor([torch.ones(1), torch.ones(1)], layout=torch.jagged)
    >>> shape_column("reward", ones, rank=0).shape, shape_column("mask", ones, rank=1).shape
    (torch.Size([2]), torch.Size([2, 1]))
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

import torch
from tensordict import NonTensorStack, TensorDict, is_non_tensor
from transfer_queue import BatchMeta

from kvplane._errors import DataPlaneBadRequest
from kvplane._tensors import densify, make_object_column

__all__ = ["prepare_batch", "read_dense", "shape_column"]


def prepare_batch(batch: TensorDict) -> TensorDict:
    """A validated batch as TransferQueue should receive it (no tensor data is copied).

    Tensors are detached (TransferQueue's encoder cannot take autograd tensors); a non-tensor column
    that is not a ``NonTensorStack`` (one ``NonTensorData`` shared by all rows) becomes one, because
    TransferQueue's SimpleStorage wire strips ``NonTensorData`` payloads.
    """
    columns: dict[str, Any] = {}
    for name in batch.keys():
        value = batch.get(name)
        if isinstance(value, torch.Tensor):
            value = value.detach()
        elif is_non_tensor(value) and not isinstance(value, NonTensorStack):
            value = make_object_column(value.tolist())
        columns[name] = value
    return TensorDict(columns, batch_size=batch.batch_size)


def shape_column(name: str, value: Any, rank: int | None) -> Any:
    """Give one column read from TransferQueue the shape it was written with.

    Args:
        name: The field (for error messages).
        value: The column as TransferQueue returned it.
        rank: The field's recorded row rank, or ``None`` when unknown (no ``[B, 1]`` squeeze).

    Raises:
        DataPlaneBadRequest: The rows differ in more than their first dimension (no jagged tensor
            can hold them; the memory backend refuses the same read).
    """
    if not isinstance(value, torch.Tensor):
        return value
    if value.is_nested:
        if value.layout is not torch.jagged:
            shapes = sorted({tuple(row.shape) for row in value.unbind()})[:3]
            raise DataPlaneBadRequest(
                f"field {name!r}: rows differ in more than their first dimension ({shapes}...); "
                "a jagged tensor cannot hold them"
            )
        value = densify(value)
    if rank == 0 and not value.is_nested and value.dim() == 2 and value.shape[1] == 1:
        value = value.squeeze(1)
    return value


async def read_dense(manager: Any, meta: BatchMeta) -> TensorDict:
    """SimpleStorage's ``get_data`` for ``meta``, with uniform tensor columns stacked dense.

    The same requests to the same storage units (with TransferQueue's retries); only the packing
    differs: ``get_data`` copies each column's per-row tensors into a jagged nested tensor, which
    kvplane then views as dense again. Stacking rows of one shape and dtype is the same single copy
    without building the nested tensor (about 5% of a 512-sample GRPO read). Any other column
    (ragged rows, scalars, objects) is packed exactly as TransferQueue packs it.
    """
    fields = list(meta.field_names)
    routing = manager._group_by_hash(meta.global_indexes)
    answers = await asyncio.gather(
        *(
            manager._request_with_retry(
                "get",
                unit,
                f"samples={len(group.global_indexes)} fields={fields}",
                partial(
                    manager._get_from_single_storage_unit,
                    group.global_indexes,
                    fields,
                    target_storage_unit=unit,
                ),
            )
            for unit, group in routing.items()
        )
    )
    columns = {}
    for name in fields:
        rows: list[Any] = [None] * meta.size
        for group, (_, data) in zip(routing.values(), answers, strict=True):
            for position, row in zip(group.batch_positions, data[name], strict=True):
                rows[position] = row
        first = rows[0]
        uniform = isinstance(first, torch.Tensor) and first.dim() >= 1
        uniform = uniform and all(
            isinstance(r, torch.Tensor) and r.shape == first.shape and r.dtype == first.dtype for r in rows
        )
        columns[name] = torch.stack(rows) if uniform else manager._pack_field_values(rows)
    return TensorDict(columns, batch_size=meta.size)
