"""What goes onto TransferQueue's wire, and how what comes back is given kvplane's shapes.

TransferQueue returns every column with rows of rank >= 1 as a jagged nested tensor (even when the
rows are uniform), and MooncakeStore returns ``[B]`` columns as ``[B, 1]``. :func:`shape_column`
restores what went in: uniform jagged → a dense zero-copy view (:func:`kvplane.codec.densify`),
``[B, 1]`` → ``[B]`` where the field's recorded row rank is 0 (a genuine ``[B, 1]`` column has rank
1 and stays), ragged rows stay jagged, object columns pass through.

Examples:
    >>> import torch
    >>> from kvplane.adapters.transfer_queue.wire import shape_column
    >>> nt = torch.nested.nested_tensor([torch.arange(3), torch.arange(3)], layout=torch.jagged)
    >>> shape_column("ids", nt, rank=1).shape
    torch.Size([2, 3])
    >>> ones = torch.nested.nested_tensor([torch.ones(1), torch.ones(1)], layout=torch.jagged)
    >>> shape_column("reward", ones, rank=0).shape, shape_column("mask", ones, rank=1).shape
    (torch.Size([2]), torch.Size([2, 1]))
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import NonTensorStack, TensorDict, is_non_tensor

from kvplane.codec import densify, make_object_column
from kvplane.errors import DataPlaneBadRequest

__all__ = ["prepare_batch", "shape_column"]


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
