"""loaders: the PyTorch front end of kvplane.

:class:`StreamingDataset` (an ``IterableDataset``) and :class:`StreamingDataLoader` (a ``DataLoader``
with ``batch_size=None`` and an identity collate) turn ``claim_meta`` plus
:func:`kvplane.shard_meta_for_dp` into balanced per-data-parallel-rank micro-batches, delivered
exactly once across ranks, processes and DataLoader workers, and resumable with
``state_dict()``/``load_state_dict()``. Processes that share a ``dp_rank`` (tensor/pipeline-parallel
replicas) receive identical micro-batches; TransferQueue 0.1.11's ``StreamingDataset`` arguments
(``config=``, ``data_fields=``, per-``dp_rank`` ``batch_size``) are accepted too.

Both yield :class:`MicroBatch` items, ``(TensorDict, KVBatchMeta)`` pairs that ``torch.utils.data.DataLoader``
(``batch_size=None``) and torchdata's ``StatefulDataLoader`` pass through without a ``collate_fn``.

Modules: :mod:`~loaders._dataset`, :mod:`~loaders._dataloader` (the two public classes),
:mod:`~loaders._batch` (the yielded item);
:mod:`~loaders._plan` (how a step is split), :mod:`~loaders._control` (the plan log in the data
plane), :mod:`~loaders._steps` (claiming or reading plans and fetching, in a prefetch thread),
:mod:`~loaders._stream` (start position, delivery, acknowledgements, state),
:mod:`~loaders._source` (clients per process), :mod:`~loaders._ranks` (DP rank, world and replicas);
:mod:`~loaders._broadcast` (replica groups by broadcast), :mod:`~loaders._exit` (interpreter exit).

This package imports only kvplane's public API; kvplane never imports it.
"""

from loaders._batch import MicroBatch
from loaders._dataloader import StreamingDataLoader
from loaders._dataset import StreamingDataset

__all__ = ["MicroBatch", "StreamingDataLoader", "StreamingDataset"]
