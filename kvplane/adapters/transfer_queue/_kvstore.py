"""MooncakeStore reads and writes that also carry zero-byte rows (empty ragged rows, ``[B, 0]`` columns).

TransferQueue's KV storage manager stores every (sample, field) as one MooncakeStore object, and
MooncakeStore refuses zero-byte objects (``INVALID_PARAMS``): a batch holding one empty row fails
whole. A zero-byte row needs no bytes to rebuild, only its shape and dtype, which the controller
records anyway; so these two functions do what ``KVStorageManager.put_data``/``get_data`` do, minus
the storage round trip of zero-byte rows (and with the blocking MooncakeStore read moved off the
client's event loop, so other requests and deadlines keep running meanwhile).

Examples:
    >>> import torch
    >>> from kvplane.adapters.transfer_queue._kvstore import is_empty_row
    >>> is_empty_row(torch.empty(0)), is_empty_row(torch.zeros(2, 0)), is_empty_row(torch.zeros(1))
    (True, True, False)
    >>> is_empty_row("an object")
    False
"""

from __future__ import annotations

import asyncio
import itertools
import math
from typing import Any

import torch
from tensordict import TensorDict
from transfer_queue import BatchMeta
from transfer_queue.metadata import extract_field_schema
from transfer_queue.storage.managers.base import KVStorageManager

__all__ = ["get_rows", "is_empty_row", "put_rows"]


def is_empty_row(value: Any) -> bool:
    """True for a tensor row that holds no bytes."""
    return isinstance(value, torch.Tensor) and value.numel() == 0


async def put_rows(manager: KVStorageManager, data: TensorDict, meta: BatchMeta) -> None:
    """Store ``data`` for ``meta``'s samples, then announce it to the controller."""
    fields = sorted(data.keys())
    keys = manager._generate_keys(fields, meta.global_indexes)
    values = manager._generate_values(data)
    stored = [i for i, value in enumerate(values) if not is_empty_row(value)]
    backend_meta: list[Any] = [None] * len(keys)
    if stored:
        loop = asyncio.get_running_loop()
        answers = await loop.run_in_executor(
            None, manager.storage_client.put, [keys[i] for i in stored], [values[i] for i in stored]
        )
        for i, answer in zip(stored, answers or [None] * len(stored), strict=True):
            backend_meta[i] = answer
    per_sample: dict[int, dict[str, Any]] = {gi: {} for gi in meta.global_indexes}
    for (field, gi), answer in zip(itertools.product(fields, meta.global_indexes), backend_meta, strict=True):
        per_sample[gi][field] = answer
    await manager.notify_data_update(
        meta.partition_ids[0], meta.global_indexes, extract_field_schema(data), per_sample
    )


async def get_rows(manager: KVStorageManager, meta: BatchMeta) -> TensorDict:
    """Read ``meta``'s fields for its samples (zero-byte rows are rebuilt from their recorded shape)."""
    keys = manager._generate_keys(meta.field_names, meta.global_indexes)
    shapes, dtypes, backend_meta = manager._get_shape_type_custom_backend_meta_list(meta)
    empty = {
        i
        for i, (shape, dtype) in enumerate(zip(shapes, dtypes, strict=True))
        if dtype is not None and shape is not None and math.prod(shape) == 0
    }
    wanted = [i for i in range(len(keys)) if i not in empty]
    values: list[Any] = [None] * len(keys)
    if wanted:
        loop = asyncio.get_running_loop()
        fetched = await loop.run_in_executor(
            None,
            lambda: manager.storage_client.get(
                keys=[keys[i] for i in wanted],
                shapes=[shapes[i] for i in wanted],
                dtypes=[dtypes[i] for i in wanted],
                custom_backend_meta=[backend_meta[i] for i in wanted],
            ),
        )
        for i, value in zip(wanted, fetched, strict=True):
            values[i] = value
    for i in empty:
        values[i] = torch.empty(tuple(shapes[i]), dtype=dtypes[i])
    return manager._merge_tensors_to_tensordict(meta, values)
