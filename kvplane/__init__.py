"""kvplane: the data plane for RL post-training, as a library.

Three faces over one contract: the ``kv_*`` facade (Redis-style, TransferQueue's signatures),
the :class:`DataPlaneClient` contract (NeMo-RL compatible), and the PyTorch loaders in ``loaders``.
Backends: the embedded memory backend (default) and TransferQueue on Ray.

Examples:
    >>> import torch, kvplane
    >>> _ = kvplane.init()                       # the embedded backend
    >>> _ = kvplane.kv_put("k0", "demo", fields={"x": torch.tensor([1, 2])}, tag={"seq_len": 2})
    >>> kvplane.kv_batch_get(["k0"], "demo")["x"].tolist()
    [[1, 2]]
    >>> kvplane.kv_list("demo")
    {'demo': {'k0': {'seq_len': 2}}}
    >>> kvplane.close()

Public names are loaded on first use from the module that defines them (the table below), so
``import kvplane`` stays cheap and every name has exactly one home.
"""

from __future__ import annotations

import importlib as _importlib
import logging as _logging
from typing import Any as _Any

_logging.getLogger(__name__).addHandler(_logging.NullHandler())

_HOMES: dict[str, str] = {
    # facade
    "init": "kvplane._facade",
    "close": "kvplane._facade",
    "get_client": "kvplane._facade",
    "kv_put": "kvplane._facade",
    "kv_batch_put": "kvplane._facade",
    "kv_batch_get": "kvplane._facade",
    "kv_batch_get_by_meta": "kvplane._facade",
    "kv_list": "kvplane._facade",
    "kv_clear": "kvplane._facade",
    "async_kv_put": "kvplane._facade",
    "async_kv_batch_put": "kvplane._facade",
    "async_kv_batch_get": "kvplane._facade",
    "async_kv_batch_get_by_meta": "kvplane._facade",
    "async_kv_list": "kvplane._facade",
    "async_kv_clear": "kvplane._facade",
    "get_metrics_endpoint": "kvplane._facade",
    "save_checkpoint": "kvplane._facade",
    "load_checkpoint": "kvplane._facade",
    # contract
    "DataPlaneClient": "kvplane._client",
    "KVBatchMeta": "kvplane._meta",
    "DataPlaneGroupMeta": "kvplane._meta",
    "DataPlaneCapabilities": "kvplane._meta",
    "DataPlaneConfig": "kvplane._config",
    "build_data_plane_client": "kvplane._factory",
    # jagged codec helpers (NeMo-RL's names)
    "materialize": "kvplane.codec",
    "to_nested_by_length": "kvplane.codec",
    "pack_jagged_fields": "kvplane.codec",
    "pack_per_token_field": "kvplane.codec",
    "response_from_nested": "kvplane.codec",
    "internal_partition": "kvplane._validation",
    "is_internal_partition": "kvplane._validation",
    "td_nbytes": "kvplane._tensors",
    # errors
    "DataPlaneError": "kvplane._errors",
    "DataPlaneUnavailable": "kvplane._errors",
    "DataPlaneTimeout": "kvplane._errors",
    "DataPlaneReadError": "kvplane._errors",
    "DataPlaneWriteError": "kvplane._errors",
    "DataPlaneClearError": "kvplane._errors",
    "DataPlaneNotReady": "kvplane._errors",
    "DataPlaneBadRequest": "kvplane._errors",
    "DataPlaneKeyError": "kvplane._errors",
    "DataPlaneCheckpointError": "kvplane._errors",
    "CheckpointNotFoundError": "kvplane._errors",
    "StorageKeyNotFoundError": "kvplane._errors",
    # middleware
    "MetricsDataPlaneClient": "kvplane._observability",
    "PrometheusExporter": "kvplane._prometheus",
    # balancing
    "shard_meta_for_dp": "kvplane.balancing",
}

#: Public submodules (importable as ``kvplane.<name>``); every other module is private (``_name``).
_SUBMODULES = ("adapters", "balancing", "codec", "replay", "testing")

__all__ = sorted(_HOMES)
__version__ = "0.1.0"


def __getattr__(name: str) -> _Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'kvplane' has no attribute {name!r}")
    value = getattr(_importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """Only the public API: the names of ``__all__``, the public submodules and ``__version__``."""
    return sorted({*_HOMES, *_SUBMODULES, "__version__"})
