"""loaders: the PyTorch front end of kvplane.

:class:`StreamingDataset` (an ``IterableDataset``) and :class:`StreamingDataLoader` (a ``DataLoader``
with ``batch_size=None`` and an identity collate) turn ``claim_meta`` plus
:func:`kvplane.shard_meta_for_dp` into balanced per-data-parallel-rank micro-batches, delivered
exactly once across ranks, processes and DataLoader workers, and resumable with
``state_dict()``/``load_state_dict()``. Processes that share a ``dp_rank`` (tensor/pipeline-parallel
replicas) receive identical micro-batches; TransferQueue 0.1.11's ``StreamingDataset`` arguments
(``config=``, ``data_fields=``, per-``dp_rank`` ``batch_size``) are accepted too. Both yield
:class:`MicroBatch` items, ``(TensorDict, KVBatchMeta)`` pairs that ``DataLoader(batch_size=None)``
and torchdata's ``StatefulDataLoader`` pass through without a ``collate_fn``.

This package imports only kvplane's public API; kvplane never imports it.

Design: docs/internals.md#loaders__init__py--the-packages-modules
"""

from loaders._batch import MicroBatch
from loaders._dataloader import StreamingDataLoader
from loaders._dataset import StreamingDataset

__all__ = ["MicroBatch", "StreamingDataLoader", "StreamingDataset"]
