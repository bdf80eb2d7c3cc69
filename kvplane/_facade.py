"""The ``kv_*`` facade: TransferQueue's KV signatures, kvplane's strict semantics.

A process has one default client. :func:`init` builds it from a config (``None`` → the embedded
memory backend). A ``kv_*`` call (or :func:`get_client`) before any ``init`` initialises the embedded
default, logged once at INFO; after :func:`close` (idempotent) it raises
:class:`~kvplane.DataPlaneNotReady` until ``init`` is called again. Migrating from
``transfer_queue.kv_*`` is a change of import: the calls and arguments are the same, but a missing
key or field raises :class:`~kvplane.DataPlaneKeyError` instead of returning fewer rows, and a bad
write is rejected whole. ``data_parser=`` on the puts runs in the calling process, over the whole
batch, before anything is stored; each ``async_kv_*`` twin runs its sync function in a worker thread.

Design: docs/internals.md#kvplane_facadepy--the-processs-default-client

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
import logging
import os
import socket
import threading
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, ParamSpec, TypeVar

import torch
from tensordict import TensorDict, TensorDictBase, is_non_tensor

from kvplane._client import DataPlaneClient
from kvplane._config import DataPlaneConfig
from kvplane._data_parser import parse_batch
from kvplane._errors import DataPlaneBadRequest, DataPlaneKeyError, DataPlaneNotReady
from kvplane._factory import build_data_plane_client
from kvplane._meta import KVBatchMeta
from kvplane._tensors import make_object_column
from kvplane._validation import check_write

__all__ = [
    "async_kv_batch_get",
    "async_kv_batch_get_by_meta",
    "async_kv_batch_put",
    "async_kv_clear",
    "async_kv_list",
    "async_kv_put",
    "close",
    "get_client",
    "get_metrics_endpoint",
    "init",
    "kv_batch_get",
    "kv_batch_get_by_meta",
    "kv_batch_put",
    "kv_clear",
    "kv_list",
    "kv_put",
    "load_checkpoint",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_default: DataPlaneClient | None = None
_default_config: DataPlaneConfig | None = None
_closed = False  # close() was called and no init() since: kv_* calls raise instead of auto-initialising
_auto_logged = False


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
    global _default, _default_config, _closed
    cfg = DataPlaneConfig.load(config)
    with _lock:
        _closed = False
        if _default is not None:
            if cfg == _default_config:
                return _default
            raise DataPlaneBadRequest(
                "kvplane is already initialised with a different config; call kvplane.close() first"
            )
        _default = build_data_plane_client({"impl": "embedded"} if cfg is None else cfg)
        _default_config = cfg
        return _default


def close() -> None:
    """Close the process-default client (idempotent). Later ``kv_*`` calls raise until :func:`init`.

    Examples:
        >>> import kvplane
        >>> kvplane.close()
        >>> kvplane.kv_list()
        Traceback (most recent call last):
        ...
        kvplane._errors.DataPlaneNotReady: kvplane was closed; call kvplane.init() ...
        >>> _ = kvplane.init(); kvplane.kv_list()
        {}
        >>> kvplane.close()
    """
    global _default, _default_config, _closed
    with _lock:
        _closed = True
        client, _default, _default_config = _default, None, None
    if client is not None:
        client.close()


def get_client() -> DataPlaneClient:
    """The process-default client; before any :func:`init`, the embedded backend is initialised.

    Raises:
        DataPlaneNotReady: :func:`close` was called and :func:`init` not since.
    """
    global _default, _default_config, _auto_logged
    client = _default
    if client is not None:
        return client
    with _lock:
        if _closed:
            raise DataPlaneNotReady(
                "kvplane was closed; call kvplane.init() (or kvplane.init(config)) "
                "before using the kv_* functions again"
            )
        if _default is None:
            _default_config = DataPlaneConfig.load(None)
            _default = build_data_plane_client(_default_config)
            if not _auto_logged:
                _auto_logged = True
                logger.info("no kvplane.init() before the first kv_* call: using the embedded store")
        return _default


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


def _put(
    keys: Any, partition_id: str, fields: Any, tags: Any, data_parser: Callable[[dict[str, Any]], Any] | None
) -> KVBatchMeta:
    """Store one put, first running ``data_parser`` over its fields when one is given."""
    client = get_client()
    if data_parser is not None and fields is not None:
        keys, batch, tags = check_write(keys, partition_id, fields, tags)
        if batch is not None:
            fields = parse_batch(data_parser, batch)
    return client.put_samples(keys, partition_id, fields=fields, tags=tags)


def kv_put(
    key: str,
    partition_id: str,
    fields: Any = None,
    tag: dict[str, Any] | None = None,
    data_parser: Callable[[dict[str, Any]], Any] | None = None,
) -> KVBatchMeta:
    """Upsert one key: its fields (a dict of per-key values, or a TensorDict) and/or its tag dict.

    A tensor value is the key's row (``torch.tensor([1, 2])`` is stored as one row of length 2); any
    other value is stored as a Python object. ``data_parser`` (TransferQueue's) maps the one-row batch
    to what is stored: see :func:`kv_batch_put`. Returns the key's meta.
    """
    _require_payload(fields, tag)
    if not isinstance(key, str):
        raise DataPlaneBadRequest(f"key must be a string, got {type(key).__name__}")
    return _put([key], partition_id, _single_row(fields), None if tag is None else [tag], data_parser)


def kv_batch_put(
    keys: list[str],
    partition_id: str,
    fields: Any = None,
    tags: list[dict[str, Any]] | None = None,
    data_parser: Callable[[dict[str, Any]], Any] | None = None,
) -> KVBatchMeta:
    """Upsert many keys: ``fields`` has one row per key (TensorDict or dict of columns), ``tags`` one dict
    per key.

    ``data_parser`` (TransferQueue's) is called once with the batch as a plain dict of field name →
    batched values (a dense tensor column whole, a jagged or Python-object column as a list of rows)
    and returns a dict with the same names and row counts, which is stored instead. It runs in this
    process, after the put is validated and before anything is stored: a parser that raises or
    breaks those rules stores nothing (``DataPlaneBadRequest``, the parser's exception chained).

    Examples:
        >>> import kvplane
        >>> _ = kvplane.init()
        >>> def load(batch):
        ...     batch["text"] = [t.upper() for t in batch["text"]]
        ...     return batch
        >>> _ = kvplane.kv_batch_put(["a", "b"], "docs", {"text": ["x", "y"]}, data_parser=load)
        >>> kvplane.kv_batch_get(["a", "b"], "docs").get("text").tolist()
        ['X', 'Y']
        >>> kvplane.close()
    """
    _require_payload(fields, tags)
    return _put(keys, partition_id, fields, tags, data_parser)


def kv_batch_get(
    keys: list[str] | str, partition_id: str, select_fields: list[str] | str | None = None
) -> TensorDict:
    """Rows for ``keys`` in that order; ``select_fields=None`` returns every field the keys store."""
    return get_client().get_samples([keys] if isinstance(keys, str) else keys, partition_id, select_fields)


def kv_batch_get_by_meta(meta: KVBatchMeta, select_fields: list[str] | str | None = None) -> TensorDict:
    """Rows for ``meta.keys``: ``select_fields``, else ``meta.fields``, else every stored field.

    As in TransferQueue, ``select_fields`` must be among ``meta.fields`` when the meta lists fields.

    Raises:
        DataPlaneBadRequest: ``meta`` is not a ``KVBatchMeta`` or has no ``partition_id``.
        DataPlaneKeyError: A selected field is not in ``meta.fields``, or a key or field is not stored.
    """
    if not isinstance(meta, KVBatchMeta):
        raise DataPlaneBadRequest(f"meta must be a KVBatchMeta, got {type(meta).__name__}")
    if meta.partition_id is None:
        raise DataPlaneBadRequest("Must provide partition_id in the input KVBatchMeta.")
    if select_fields is None:
        fields = meta.fields
    else:
        fields = [select_fields] if isinstance(select_fields, str) else select_fields
        if meta.fields is not None and isinstance(fields, list):
            unknown = [name for name in fields if name not in meta.fields]
            if unknown:
                raise DataPlaneKeyError(
                    f"Some fields assigned in select_fields not found in the metadata: {unknown}; "
                    f"fields in KVBatchMeta: {meta.fields}"
                )
    return get_client().get_samples(meta.sample_ids, meta.partition_id, fields)


def kv_list(
    partition_id: str | None = None,
    cursor: int | None = None,
    count: int | None = None,
    match: str | None = None,
) -> dict[str, dict[str, dict[str, Any]]] | tuple[int, dict[str, dict[str, dict[str, Any]]]]:
    """``{partition_id: {key: tags}}`` for one partition (``{}`` if unknown) or all partitions.

    With ``cursor`` (``0`` to start), one page ``(next_cursor, {partition_id: {key: tags}})`` of a
    Redis-style ``SCAN`` (``count`` slots per page, ``match`` a key prefix; ``next_cursor == 0``
    when done): see :meth:`kvplane.DataPlaneClient.list_keys`.
    """
    if cursor is None and count is None and match is None:
        return get_client().list_keys(partition_id)
    return get_client().list_keys(partition_id, cursor, count, match)


def kv_clear(keys: list[str] | str | None, partition_id: str) -> None:
    """Remove keys (idempotent for keys already gone); ``None`` clears the whole partition."""
    get_client().clear_samples([keys] if isinstance(keys, str) else keys, partition_id)


def _host_ip() -> str:
    """This host's address as other hosts reach it (the interface of the default route), else loopback."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the interface
            return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def get_metrics_endpoint() -> str | None:
    """The default client's Prometheus endpoint as ``"host:port"``, or ``None`` when it serves none.

    A client serves metrics when its config enables observability with a ``prometheus_port``
    (TransferQueue's ``get_metrics_endpoint``, for kvplane's exporter). This never initialises a
    client: with no default client the answer is ``None``.

    Examples:
        >>> import kvplane
        >>> _ = kvplane.init()
        >>> kvplane.get_metrics_endpoint() is None
        True
        >>> kvplane.close()
    """
    exporter = getattr(_default, "prometheus", None)
    port = getattr(exporter, "port", None)
    return None if port is None else f"{_host_ip()}:{port}"


def _initialised(what: str) -> DataPlaneClient:
    client = _default
    if client is None:
        raise DataPlaneNotReady(f"kvplane is not initialised: call kvplane.init() before {what}")
    return client


def save_checkpoint(
    checkpoint_dir: str | os.PathLike[str],
    *,
    include_storage: bool = True,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Save the default client's whole store to ``checkpoint_dir`` (TransferQueue's signature).

    Crash-safe: written beside the target and renamed into place (the previous checkpoint waits in
    ``<dir>.old`` meanwhile), so a save killed at any moment leaves the old or the new one loadable.
    ``metadata`` (JSON values) is kept in ``metadata.json``. See
    :meth:`DataPlaneClient.save_checkpoint`.

    Raises:
        DataPlaneNotReady: :func:`init` was not called (a ``RuntimeError``, as TransferQueue's).

    Examples:
        >>> import tempfile, torch, kvplane
        >>> _ = kvplane.init()
        >>> _ = kvplane.kv_put("k0", "demo", fields={"x": torch.tensor([1.0])})
        >>> ckpt = tempfile.mkdtemp() + "/ckpt"
        >>> kvplane.save_checkpoint(ckpt, metadata={"step": 10})
        >>> kvplane.kv_clear(None, "demo")
        >>> kvplane.load_checkpoint(ckpt)  # returns the saved metadata
        {'step': 10}
        >>> kvplane.kv_batch_get(["k0"], "demo")["x"].tolist()
        [[1.0]]
        >>> kvplane.close()
    """
    _initialised("save_checkpoint").save_checkpoint(
        checkpoint_dir, include_storage=include_storage, metadata=metadata
    )


def load_checkpoint(checkpoint_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Replace the default client's store with a checkpoint's (TransferQueue's signature).

    Returns:
        The ``metadata`` saved with the checkpoint (TransferQueue returns ``None``).

    Raises:
        DataPlaneNotReady: :func:`init` was not called.
        CheckpointNotFoundError: The directory or its ``metadata.json`` is missing (also a
            ``FileNotFoundError``, as TransferQueue raises).
        DataPlaneCheckpointError: A file is corrupted, truncated or of another version; the store
            is exactly as it was.
    """
    return _initialised("load_checkpoint").load_checkpoint(checkpoint_dir)


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
