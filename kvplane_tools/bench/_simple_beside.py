"""Raw TransferQueue SimpleStorage beside a ``columnar`` deployment: the anchor of issue 17's targets.

TransferQueue allows one deployment per process, and the bench interleaves contenders within one
process; so for ``backend: columnar`` this module starts one SimpleStorage unit on the running
deployment (TransferQueue's own SimpleStorage bootstrap, same controller) and a second
TransferQueue client whose storage manager is SimpleStorage's. :class:`SimpleBeside` is
:class:`~kvplane_tools.bench.raw_tq.RawKV` on that client: ``tq.kv_*`` calls made while it is
TransferQueue's process-wide client (swapped in for each call, swapped back after).

Examples:
    The baseline needs a running columnar deployment (``KVPLANE_BENCH_TQ=columnar kvplane bench``):

    >>> from kvplane_tools.bench._simple_beside import SimpleBeside
    >>> SimpleBeside.storage_backend
    'SimpleStorage'
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TypeVar

import ray
import transfer_queue as tq
from omegaconf import OmegaConf
from transfer_queue import TransferQueueClient
from transfer_queue import interface as tq_interface
from transfer_queue.storage.bootstrap.provider import StorageBootstrapProvider

from kvplane_tools.bench.raw_tq import RawKV

__all__ = ["SimpleBeside"]

T = TypeVar("T")
_UNIT_CAPACITY = 200_000


class SimpleBeside(RawKV):
    """Raw ``tq.kv_*`` on one SimpleStorage unit started on the process's running deployment."""

    storage_backend = "SimpleStorage"

    def __init__(self) -> None:  # noqa: D107 (no kvplane client: the deployment is this process's)
        controller = ray.get_actor("TransferQueueController", namespace="transfer_queue")
        conf = OmegaConf.merge(
            copy.deepcopy(ray.get(controller.get_config.remote(), timeout=60)),
            {"backend": {"storage_backend": "SimpleStorage",
                         "SimpleStorage": {"total_storage_size": _UNIT_CAPACITY, "num_data_storage_units": 1}}},
        )
        self._units = StorageBootstrapProvider.get_provider("SimpleStorage")(conf)
        self._client = TransferQueueClient(client_id="kvplane-bench-simple-beside",
                                           controller_info=conf.controller.zmq_info)
        self._client.initialize_storage_manager(manager_type="SimpleStorage", config=conf.backend.SimpleStorage)

    def _as_process_client(self, fn: Callable[[], T]) -> T:
        own = tq_interface._TQ_CLIENT
        tq_interface._TQ_CLIENT = self._client
        try:
            return fn()
        finally:
            tq_interface._TQ_CLIENT = own

    def put(self, keys, partition_id, fields, tags):  # type: ignore[override]
        return self._as_process_client(lambda: tq.kv_batch_put(keys=keys, partition_id=partition_id,
                                                                fields=fields, tags=tags))

    def get(self, keys, partition_id, select_fields):  # type: ignore[override]
        return self._as_process_client(lambda: tq.kv_batch_get(keys=keys, partition_id=partition_id,
                                                                select_fields=select_fields))

    def list_keys(self, partition_id):  # type: ignore[override]
        return self._as_process_client(lambda: tq.kv_list(partition_id))

    def clear(self, keys, partition_id):  # type: ignore[override]
        self._as_process_client(lambda: tq.kv_clear(keys=keys, partition_id=partition_id))

    def close(self) -> None:
        """Stop the client and the unit this baseline started."""
        self._client.close()
        for unit in self._units.values():
            ray.kill(unit)
