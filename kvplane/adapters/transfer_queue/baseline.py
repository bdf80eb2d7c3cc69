"""Raw ``transfer_queue.kv_*`` calls on a live deployment: the baseline ``kvplane bench`` measures against.

Only this package may import ``transfer_queue``, so the benchmark's "raw TransferQueue" side lives
here: :class:`RawKV` issues exactly the calls a user of TransferQueue's own KV API makes
(``kv_batch_put``, ``kv_batch_get``, ``kv_list``, ``kv_clear``), through TransferQueue's process-wide
client, on the deployment a :class:`~.client.TransferQueueDataPlaneClient` opened in this process.
Results come back as TransferQueue returns them (jagged tensors, fewer rows for missing keys); no
kvplane check, deadline or reshaping is added.

Examples:
    The baseline needs a TransferQueue deployment opened in this process (``tests/e2e`` runs it):

    >>> from kvplane.adapters.memory import MemoryDataPlaneClient
    >>> from kvplane.adapters.transfer_queue.baseline import RawKV
    >>> RawKV(MemoryDataPlaneClient())
    Traceback (most recent call last):
    ...
    kvplane.errors.DataPlaneBadRequest: the raw TransferQueue baseline needs a TransferQueue client, ...
"""

from __future__ import annotations

from typing import Any

import transfer_queue as tq
from tensordict import TensorDict
from transfer_queue import interface as tq_interface

from kvplane.client import DataPlaneClient
from kvplane.errors import DataPlaneBadRequest

from .client import TransferQueueDataPlaneClient

__all__ = ["RawKV"]


class RawKV:
    """TransferQueue's own KV API on the deployment ``client`` runs on.

    Args:
        client: A kvplane TransferQueue client of this process. TransferQueue's ``kv_*`` functions
            use one client per process; it must be the one ``client`` uses (true for a
            bootstrapping client, and for an attached one in a process that already had it).

    Raises:
        DataPlaneBadRequest: ``client`` is not a TransferQueue client, or TransferQueue's
            process-wide client is another one (``kv_*`` would reach another deployment).
    """

    def __init__(self, client: DataPlaneClient) -> None:
        if not isinstance(client, TransferQueueDataPlaneClient):
            raise DataPlaneBadRequest(
                f"the raw TransferQueue baseline needs a TransferQueue client, got a {type(client).__name__}"
            )
        if tq_interface._TQ_CLIENT is not client._deployment.client:
            raise DataPlaneBadRequest(
                "TransferQueue's process-wide client is not the one this kvplane client uses; open the "
                "kvplane client with bootstrap=True in this process to measure raw TransferQueue"
            )
        self.storage_backend = client._deployment.storage_backend

    @staticmethod
    def put(
        keys: list[str], partition_id: str, fields: TensorDict | None, tags: list[dict[str, Any]] | None
    ) -> Any:
        """``transfer_queue.kv_batch_put``."""
        return tq.kv_batch_put(keys=keys, partition_id=partition_id, fields=fields, tags=tags)

    @staticmethod
    def get(keys: list[str], partition_id: str, select_fields: list[str] | None) -> TensorDict:
        """``transfer_queue.kv_batch_get`` (jagged columns, as TransferQueue returns them)."""
        return tq.kv_batch_get(keys=keys, partition_id=partition_id, select_fields=select_fields)

    @staticmethod
    def list_keys(partition_id: str | None) -> dict[str, dict[str, Any]]:
        """``transfer_queue.kv_list``."""
        return tq.kv_list(partition_id)

    @staticmethod
    def clear(keys: list[str], partition_id: str) -> None:
        """``transfer_queue.kv_clear``."""
        tq.kv_clear(keys=keys, partition_id=partition_id)

    def drop(self, partition_id: str) -> None:
        """Clear every key of a partition (a benchmark's clean-up; the partition id stays known)."""
        keys = list(self.list_keys(partition_id).get(partition_id, {}))
        if keys:
            self.clear(keys, partition_id)
