"""Raw TransferQueue on a live deployment: the baselines the benchmarks measure kvplane against.

The tools' only module that imports ``transfer_queue``: it issues exactly the calls a user of
TransferQueue's own API makes, on the deployment a kvplane
:class:`~kvplane.adapters.transfer_queue.TransferQueueDataPlaneClient` opened in this process (read
through that client's public, read-only properties):

- :class:`RawKV`: the KV API (``kv_batch_put``, ``kv_batch_get``, ``kv_list``, ``kv_clear``) through
  TransferQueue's process-wide client;
- :class:`RawStreamingLoader`: TransferQueue's own ``StreamingDataset`` and ``StreamingDataLoader``.

Results come back as TransferQueue returns them (jagged tensors, fewer rows for missing keys); no
kvplane check or reshaping is added. The streaming loader gets two things TransferQueue lacks, both
outside what it measures: a deadline on each pass, and closing the client each of its datasets opens.

Examples:
    The baselines need a TransferQueue deployment opened in this process (``tests/e2e`` runs them):

    >>> from kvplane import build_data_plane_client
    >>> from kvplane_tools.bench.raw_tq import RawKV, RawStreamingLoader
    >>> RawKV(build_data_plane_client({"impl": "embedded"}))
    Traceback (most recent call last):
    ...
    kvplane._errors.DataPlaneBadRequest: the raw TransferQueue baseline needs a TransferQueue client, ...
    >>> RawStreamingLoader(build_data_plane_client({"impl": "embedded"}))
    Traceback (most recent call last):
    ...
    kvplane._errors.DataPlaneBadRequest: TransferQueue's StreamingDataLoader baseline needs a TransferQueue ...
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import transfer_queue as tq
from tensordict import TensorDict

from kvplane import DataPlaneBadRequest, DataPlaneClient, DataPlaneError, DataPlaneReadError, DataPlaneTimeout
from kvplane.adapters.transfer_queue import TransferQueueDataPlaneClient

__all__ = ["RawKV", "RawStreamingLoader", "StreamDelivery"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _transfer_queue_client(client: DataPlaneClient, baseline: str) -> TransferQueueDataPlaneClient:
    """``client`` when it is a kvplane TransferQueue client; else a bad request naming ``baseline``."""
    if not isinstance(client, TransferQueueDataPlaneClient):
        raise DataPlaneBadRequest(f"{baseline} needs a TransferQueue client, got a {type(client).__name__}")
    return client


def _process_client() -> Any:
    """TransferQueue's process-wide client (what ``tq.kv_*`` use), or ``None`` before ``tq.init``."""
    try:
        return tq.get_client()
    except AssertionError:  # TransferQueue's way of saying "not initialised in this process"
        return None


def _bounded(what: str, fn: Callable[[], T], *, timeout_s: float) -> T:
    """``fn()`` in a daemon thread; a :class:`~kvplane.DataPlaneTimeout` once ``timeout_s`` passes.

    Examples:
        >>> _bounded("a nap", lambda: time.sleep(5), timeout_s=0.05)
        Traceback (most recent call last):
        ...
        kvplane._errors.DataPlaneTimeout: a nap did not finish within 0.05s
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"kvplane-tools: {what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise DataPlaneTimeout(f"{what} did not finish within {timeout_s:g}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


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
        client = _transfer_queue_client(client, "the raw TransferQueue baseline")
        if _process_client() is not client.transfer_queue_client:
            raise DataPlaneBadRequest(
                "TransferQueue's process-wide client is not the one this kvplane client uses; open the "
                "kvplane client with bootstrap=True in this process to measure raw TransferQueue"
            )
        self.storage_backend = client.storage_backend

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


@dataclass
class StreamDelivery:
    """What one pass of TransferQueue's ``StreamingDataLoader`` delivered.

    Attributes:
        seconds: When each micro-batch reached the loop, from just before its dataset was built.
        sizes: The rows of each micro-batch.
        global_indexes: Every delivered row's TransferQueue global index, in delivery order.
    """

    seconds: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    global_indexes: list[int] = field(default_factory=list)


class RawStreamingLoader:
    """TransferQueue's own ``StreamingDataset``/``StreamingDataLoader`` on the deployment ``client`` runs on.

    Makes the calls a TransferQueue user makes (its tutorial 06): the deployment's config, which
    holds the controller's and the storage units' ZMQ addresses, is read from the controller actor
    (``ray.get(controller.get_config.remote())``, by the kvplane client); each :meth:`deliver`
    builds a ``transfer_queue.StreamingDataset`` in finite mode
    (``should_check_consumption_status=True``) and iterates a
    ``transfer_queue.StreamingDataLoader(dataset, num_workers=0)`` to its end. The dataset opens its
    own TransferQueue client on its first iteration, as it does for a user.

    Sampler (decision): TransferQueue documents its dataset for ``RankAwareSampler`` in polling mode.
    kvplane's deployments run the controller in polling mode with TransferQueue's default
    ``SequentialSampler`` (reported as :attr:`sampler`), and cannot switch: ``RankAwareSampler``
    requires ``batch_index`` in every fetch, which kvplane's claims do not send. The dataset works on
    ``SequentialSampler`` (it ignores the dataset's ``sampling_config``) and, with one consumer per
    ``dp_rank`` as here, fetches what ``RankAwareSampler`` would (the first ``batch_size`` ready
    samples), minus that sampler's cache for TP peers sharing a ``dp_rank``.

    Args:
        client: A kvplane TransferQueue client of this process (bootstrapping or attached).

    Raises:
        DataPlaneBadRequest: ``client`` is not a TransferQueue client.
        DataPlaneUnavailable: No controller runs, or it did not answer within the client's
            ``bootstrap_timeout_s``.
    """

    def __init__(self, client: DataPlaneClient) -> None:
        tq_client = _transfer_queue_client(client, "TransferQueue's StreamingDataLoader baseline")
        self.storage_backend = tq_client.storage_backend
        self.config = tq_client.transfer_queue_config()
        self.sampler = _sampler_name(self.config.controller.sampler)

    def deliver(
        self,
        partition_id: str,
        task_name: str,
        fields: list[str],
        *,
        batch_size: int,
        micro_batch_size: int,
        dp_rank: int = 0,
        timeout_s: float = 300.0,
    ) -> StreamDelivery:
        """One finite pass of TransferQueue's loader over ``partition_id`` for ``task_name``.

        A fresh ``task_name`` consumes the partition again from the start. The partition must hold a
        multiple of ``batch_size`` samples, all produced: TransferQueue samples full batches only, so
        a remainder is never fetched and the pass runs until the deadline.

        Raises:
            DataPlaneTimeout: The pass did not end within ``timeout_s`` (the dataset's client is
                closed so that its thread stops at its next request).
            DataPlaneBadRequest: TransferQueue refused an argument.
            DataPlaneReadError: TransferQueue failed otherwise.
        """
        what = f"TransferQueue's StreamingDataLoader over partition {partition_id!r} (task {task_name!r})"
        delivery = StreamDelivery()
        start = time.perf_counter()
        dataset: Any = None

        def iterate() -> StreamDelivery:
            for td, meta in tq.StreamingDataLoader(dataset, num_workers=0):
                delivery.seconds.append(time.perf_counter() - start)
                delivery.sizes.append(td.batch_size[0])
                delivery.global_indexes.extend(meta.global_indexes)
            return delivery

        try:
            dataset = tq.StreamingDataset(
                config=self.config,
                batch_size=batch_size,
                micro_batch_size=micro_batch_size,
                data_fields=list(fields),
                partition_id=partition_id,
                task_name=task_name,
                dp_rank=dp_rank,
                should_check_consumption_status=True,
            )
            return _bounded(what, iterate, timeout_s=timeout_s)
        except DataPlaneError:
            raise
        except (ValueError, TypeError) as exc:  # TransferQueue's "bad argument"
            raise DataPlaneBadRequest(f"{what} refused: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            raise DataPlaneReadError(f"{what} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            _close_dataset_client(dataset)


def _sampler_name(sampler: Any) -> str:
    """The controller's sampler as TransferQueue's config holds it: a name, a class or an instance."""
    if isinstance(sampler, str):
        return sampler
    return getattr(sampler, "__name__", type(sampler).__name__)


def _close_dataset_client(dataset: Any) -> None:
    """Close the TransferQueue client a ``StreamingDataset`` opened (TransferQueue never closes it)."""
    client = getattr(dataset, "_tq_client", None)
    if client is None:
        return
    try:
        client.close()
    except Exception:  # a clean-up: the pass's own outcome is what the caller needs
        logger.warning("closing a StreamingDataset's TransferQueue client failed", exc_info=True)
