"""``StreamingDataLoader``: a ``DataLoader`` over a :class:`~loaders.StreamingDataset`, workers included.

With ``num_workers=0`` it yields the dataset's micro-batches as they are. With ``num_workers >= 1``
each worker process builds its own client from the dataset's config and produces whole steps, which
the main process cuts into micro-batches; every step is claimed once for all ranks, so nothing is
duplicated or lost, and ranks may use different ``num_workers``. It yields
:class:`~loaders.MicroBatch` items (``data, meta = item``) and accepts TransferQueue's ``collate_fn``,
``pin_memory`` and ``persistent_workers`` (``False`` only); TransferQueue's ``reset()``/``step()``/
``get_buffer()`` have no counterpart (use ``load_state_dict`` or a new ``StreamingDataset``). Memory
bound: at most ``prefetch`` steps per worker claimed ahead, plus ``prefetch_factor`` per worker in flight.

Design: docs/internals.md#loaders_dataloaderpy--steps-across-dataloader-workers

Examples:
    >>> import torch
    >>> from kvplane import build_data_plane_client
    >>> from loaders import StreamingDataLoader, StreamingDataset
    >>> client = build_data_plane_client({"impl": "embedded"})
    >>> client.register_partition("rollouts", ["x"], num_samples=6, consumer_tasks=["train"])
    >>> _ = client.put_samples([f"s{i}" for i in range(6)], "rollouts", {"x": torch.arange(6)})
    >>> ds = StreamingDataset(client, partition_id="rollouts", task_name="train", fields=["x"], batch_size=4)
    >>> loader = StreamingDataLoader(ds)
    >>> [td["x"].tolist() for td, meta in loader]
    [[0, 1, 2, 3], [4, 5]]
    >>> StreamingDataLoader(ds, num_workers=2)
    Traceback (most recent call last):
    ...
    kvplane._errors.DataPlaneBadRequest: num_workers=2 needs a backend that DataLoader worker processes ...
    >>> client.close()
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader

from kvplane import DataPlaneBadRequest
from loaders._batch import MicroBatch
from loaders._dataset import StreamingDataset

__all__ = ["StreamingDataLoader"]


def _identity(item: Any) -> Any:
    """The collate function: items are already batches."""
    return item


class StreamingDataLoader(DataLoader):
    """A ``DataLoader`` (``batch_size=None``, identity collate) over a :class:`StreamingDataset`.

    ``state_dict()``/``load_state_dict()`` are the dataset's: the next micro-batch to yield, valid
    in any process (see :mod:`loaders._stream`).

    Args:
        dataset: The rank's dataset.
        num_workers: DataLoader worker processes (``>= 1`` needs a config source reaching a
            multi-process backend, i.e. TransferQueue).

    Keyword Args:
        multiprocessing_context: As for ``DataLoader`` (e.g. ``"spawn"``; ignored without workers,
            so one call site can serve both).
        prefetch_factor: Steps each worker keeps in flight (DataLoader's default 2; ignored without
            workers, as ``multiprocessing_context`` is).
        worker_init_fn: As for ``DataLoader``.
        collate_fn: Applied to each :class:`~loaders.MicroBatch` (default: none).
        pin_memory: Pin each micro-batch's TensorDict (``TensorDict.pin_memory()``).
        persistent_workers: ``False`` only (TransferQueue's argument; see the module docstring).

    Raises:
        DataPlaneBadRequest: Not a ``StreamingDataset``, a bad ``num_workers``, or workers with a
            source they cannot use.
    """

    def __init__(
        self,
        dataset: StreamingDataset,
        num_workers: int = 0,
        *,
        multiprocessing_context: Any = None,
        prefetch_factor: int | None = None,
        worker_init_fn: Callable[[int], None] | None = None,
        collate_fn: Callable[[Any], Any] | None = None,
        pin_memory: bool = False,
        persistent_workers: bool = False,
    ) -> None:
        if not isinstance(dataset, StreamingDataset):
            raise DataPlaneBadRequest(f"dataset must be a StreamingDataset, got {type(dataset).__name__}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise DataPlaneBadRequest(f"num_workers must be an integer >= 0, got {num_workers!r}")
        if persistent_workers:
            raise DataPlaneBadRequest(
                "persistent_workers=True is not supported: each iteration hands its start position to "
                "fresh workers (use num_workers >= 1 with persistent_workers=False)"
            )
        if collate_fn is not None and not callable(collate_fn):
            raise DataPlaneBadRequest(f"collate_fn must be callable, got {collate_fn!r}")
        if dataset.is_replica_receiver:
            num_workers = 0  # a broadcast receiver only receives
        dataset.source.check_workers(num_workers)
        self._collate, self._pin = collate_fn, bool(pin_memory)
        super().__init__(
            dataset,
            batch_size=None,
            collate_fn=_identity,
            num_workers=num_workers,
            multiprocessing_context=multiprocessing_context if num_workers else None,
            prefetch_factor=prefetch_factor if num_workers else None,
            worker_init_fn=worker_init_fn,
        )

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        for item in self._micro_batches():
            if self._pin:
                item = item.pin_memory()
            yield item if self._collate is None else self._collate(item)

    def _micro_batches(self) -> Iterator[MicroBatch]:
        dataset: StreamingDataset = self.dataset  # type: ignore[assignment]
        if self.num_workers == 0 or dataset.is_replica_receiver:
            yield from dataset
            return
        stream, start = dataset.open_stream()
        dataset._worker_start = start.step  # read by the workers, which start (fork/spawn) right here
        try:
            steps = super().__iter__()
        finally:
            dataset._worker_start = None
        yield from dataset.deliver(stream.micro_batches(steps, start))

    def state_dict(self) -> dict[str, Any]:
        """The dataset's :meth:`~StreamingDataset.state_dict`."""
        return self.dataset.state_dict()  # type: ignore[attr-defined]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The dataset's :meth:`~StreamingDataset.load_state_dict`."""
        self.dataset.load_state_dict(state_dict)  # type: ignore[attr-defined]
