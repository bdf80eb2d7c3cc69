"""The ``kv_*`` facade: TransferQueue's KV signatures, kvplane's strict semantics.

A process has one default client. :func:`init` builds it from a config (``None`` → the embedded
memory backend); any ``kv_*`` call before ``init`` initialises the embedded default; :func:`close`
closes it (idempotent). Migrating from ``transfer_queue.kv_*`` is a change of import: the calls and
arguments are the same, but a missing key or field raises :class:`~kvplane.DataPlaneKeyError`
instead of returning fewer rows, and a bad write is rejected whole instead of leaving ghost keys.

Every ``async_kv_*`` twin is derived from its sync function (run in a worker thread), so the two
can never drift apart.

Examples:
    >>> import torch, kvplane
    >>> from tensordict import TensorDict
    >>> _ = kvplane.init()
    >>> meta = kvplane.kv_batch_put(["a", "b"], "train", TensorDict(x=torch.ones(2, 3), batch_size=[2]),
    ...                             tags=[{"seq_len": 3}, {"seq_len": 3}])
    >>> meta.sample_ids, meta.fields
    (['a', 'b'], ['x'])
    >>> kvplane.kv_batch_get_by_meta(meta)["x"].shape
    torch.Size([2, 3])
    >>> kvplane.kv_clear(["a", "zz"], "train")        # idempotent for keys already gone
    >>> sorted(kvplane.kv_list("train")["train"])
    ['b']
    >>> import asyncio
    >>> asyncio.run(kvplane.async_kv_list("train"))
    {'train': {'b': {'seq_len': 3}}}
    >>> kvplane.close()
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, ParamSpec, TypeVar

import torch
from tensordict import TensorDict, TensorDictBase, is_non_tensor

from kvplane.client import DataPlaneClient
from kvplane._tensors import make_object_column
from kvplane.config import DataPlaneConfig
from kvplane.errors import DataPlaneBadRequest
from kvplane.factory import build_data_plane_client
from kvplane.meta import KVBatchMeta

__all__ = [
    "async_kv_batch_get",
    "async_kv_batch_get_by_meta",
    "async_kv_batch_put",
    "async_kv_clear",
    "async_kv_list",
    "async_kv_put",
    "close",
    "get_client",
    "init",
    "kv_batch_get",
    "kv_batch_get_by_meta",
    "kv_batch_put",
    "kv_clear",
    "kv_list",
    "kv_put",
]

_lock = threading.Lock()
_default: DataPlaneClient | None = None
_default_config: DataPlaneConfig | None = None


def init(config: DataPlaneConfig | Mapping[str, Any] | str | None = None) -> DataPlaneClient:
    """Build the process-default client and return it.

    Args:
        config: ``None`` (embedded memory backend), a mapping, a YAML path, or a ``DataPlaneConfig``.

    Returns:
        The default client. Calling ``init`` again with an equal config returns the same client.

    Raises:
        DataPlaneBadRequest: The config is invalid, or a default client with a different config
            exists (``close()`` it first).
    """
    global _default, _default_config
    cfg = DataPlaneConfig.load(config)
    with _lock:
        if _default is not None:
            if cfg == _default_config:
                return _default
            raise DataPlaneBadRequest(
                "kvplane is already initialised with a different config; call kvplane.close() first"
            )
        _default = build_data_plane_client(cfg)
        _default_config = cfg
        return _default


def close() -> None:
    """Close the process-default client (idempotent). A later ``kv_*`` call starts a fresh default."""
    global _default, _default_config
    with _lock:
        client, _default, _default_config = _default, None, None
    if client is not None:
        client.close()


def get_client() -> DataPlaneClient:
    """The process-default client, initialising the embedded backend if there is none."""
    client = _default
    return client if client is not None else init(None)


def _single_row(fields: Any) -> TensorDict | None:
    """``kv_put``'s ``fields`` as a batch of one row."""
    if fields is None:
        return None
    if isinstance(fields, TensorDictBase):
        if fields.batch_dims == 0:
            return fields.unsqueeze(0)
        return fields
    if not isinstance(fields, Mapping):
        raise DataPlaneBadRequest(f"fields must be a dict or a TensorDict, got {type(fields).__name__}")
    row: dict[str, Any] = {}
    for name, value in fields.items():
        if isinstance(value, torch.Tensor):
            if value.is_nested:
                raise DataPlaneBadRequest(f"field {name!r} is a nested tensor; use kv_batch_put for batches")
            row[name] = value.unsqueeze(0)
        elif is_non_tensor(value):
            row[name] = make_object_column([value.tolist() if hasattr(value, "tolist") else value.data])
        else:
            row[name] = make_object_column([value])
    return TensorDict(row, batch_size=[1])  # an empty row is rejected by to_batch, as in kv_batch_put


def _require_payload(fields: Any, tags: Any) -> None:
    if fields is None and tags is None:
        raise DataPlaneBadRequest("provide fields, tags, or both")


def kv_put(key: str, partition_id: str, fields: Any = None, tag: dict[str, Any] | None = None) -> KVBatchMeta:
    """Upsert one key: its fields (a dict of per-key values, or a TensorDict) and/or its tag dict.

    A tensor value is the key's row (``torch.tensor([1, 2])`` is stored as one row of length 2); any
    other value is stored as a Python object. Returns the key's meta.
    """
    _require_payload(fields, tag)
    if not isinstance(key, str):
        raise DataPlaneBadRequest(f"key must be a string, got {type(key).__name__}")
    return get_client().put_samples(
        [key], partition_id, fields=_single_row(fields), tags=None if tag is None else [tag]
    )


def kv_batch_put(
    keys: list[str], partition_id: str, fields: Any = None, tags: list[dict[str, Any]] | None = None
) -> KVBatchMeta:
    """Upsert many keys: ``fields`` has one row per key (TensorDict or dict of columns), ``tags`` one dict
    per key."""
    _require_payload(fields, tags)
    return get_client().put_samples(keys, partition_id, fields=fields, tags=tags)


def kv_batch_get(
    keys: list[str] | str, partition_id: str, select_fields: list[str] | str | None = None
) -> TensorDict:
    """Rows for ``keys`` in that order; ``select_fields=None`` returns every field the keys store."""
    return get_client().get_samples([keys] if isinstance(keys, str) else keys, partition_id, select_fields)


def kv_batch_get_by_meta(meta: KVBatchMeta, select_fields: list[str] | str | None = None) -> TensorDict:
    """Rows for ``meta.sample_ids``: ``select_fields``, else ``meta.fields``, else every stored field."""
    if not isinstance(meta, KVBatchMeta):
        raise DataPlaneBadRequest(f"meta must be a KVBatchMeta, got {type(meta).__name__}")
    fields = select_fields if select_fields is not None else meta.fields
    return get_client().get_samples(meta.sample_ids, meta.partition_id, fields)


def kv_list(partition_id: str | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """``{partition_id: {key: tags}}`` for one partition (``{}`` if unknown) or all partitions."""
    return get_client().list_keys(partition_id)


def kv_clear(keys: list[str] | str | None, partition_id: str) -> None:
    """Remove keys (idempotent for keys already gone); ``None`` clears the whole partition."""
    get_client().clear_samples([keys] if isinstance(keys, str) else keys, partition_id)


P = ParamSpec("P")
R = TypeVar("R")


def _async_twin(fn: Callable[P, R]) -> Callable[P, Coroutine[Any, Any, R]]:
    """The coroutine version of ``fn``: same arguments, run in a worker thread."""

    @functools.wraps(fn)
    async def twin(*args: P.args, **kwargs: P.kwargs) -> R:
        return await asyncio.to_thread(fn, *args, **kwargs)

    twin.__name__ = twin.__qualname__ = f"async_{fn.__name__}"
    twin.__doc__ = f"Async twin of :func:`{fn.__name__}` (same arguments and result).\n\n{fn.__doc__}"
    return twin


async_kv_put = _async_twin(kv_put)
async_kv_batch_put = _async_twin(kv_batch_put)
async_kv_batch_get = _async_twin(kv_batch_get)
async_kv_batch_get_by_meta = _async_twin(kv_batch_get_by_meta)
async_kv_list = _async_twin(kv_list)
async_kv_clear = _async_twin(kv_clear)
