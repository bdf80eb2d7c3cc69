"""``MicroBatch``: what the loaders yield, ``(data, meta)`` that ``DataLoader`` passes through unchanged.

``torch.utils.data.DataLoader(dataset, batch_size=None)`` (and torchdata's ``StatefulDataLoader``)
runs every item through ``default_convert``, which rebuilds tuples as lists and walks mappings key by
key. A ``TensorDict`` is a registered ``MutableMapping`` whose iteration walks the batch dimension,
so a ``(TensorDict, KVBatchMeta)`` tuple fails there with a TensorDict dispatch ``TypeError``. A
``MicroBatch`` is neither a tuple, a sequence nor a mapping, so ``default_convert`` returns it as it
is; it still unpacks (``data, meta = item``) and indexes (``item[0]``, ``item[1]``) like the pair it
replaces, and ``pin_memory=True`` pins its TensorDict. It is not a ``tuple``: ``tuple(item)`` makes one.

Examples:
    >>> import torch
    >>> from tensordict import TensorDict
    >>> from torch.utils.data._utils.collate import default_convert
    >>> from kvplane import KVBatchMeta
    >>> from loaders import MicroBatch
    >>> data = TensorDict({"x": torch.arange(2)}, batch_size=[2])
    >>> item = MicroBatch(data, KVBatchMeta("p", None, ["a", "b"]))
    >>> default_convert(item) is item
    True
    >>> data, meta = item
    >>> data["x"].tolist(), meta.sample_ids, item[1] is meta, len(item)
    ([0, 1], ['a', 'b'], True, 2)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tensordict import TensorDict

from kvplane import KVBatchMeta

__all__ = ["MicroBatch"]


class MicroBatch:
    """One micro-batch of one rank: ``data`` (a ``TensorDict``) and ``meta`` (its ``KVBatchMeta``).

    Behaves as the pair ``(data, meta)`` for unpacking, indexing and ``len``.
    """

    __slots__ = ("data", "meta")

    def __init__(self, data: TensorDict, meta: KVBatchMeta) -> None:
        self.data = data
        self.meta = meta

    def __iter__(self) -> Iterator[Any]:
        return iter((self.data, self.meta))

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: Any) -> Any:
        return (self.data, self.meta)[index]

    def __repr__(self) -> str:
        return f"MicroBatch(data={self.data!r}, meta={self.meta!r})"

    def __getstate__(self) -> tuple[TensorDict, KVBatchMeta]:
        return self.data, self.meta

    def __setstate__(self, state: tuple[TensorDict, KVBatchMeta]) -> None:
        self.data, self.meta = state

    def pin_memory(self) -> MicroBatch:
        """The same micro-batch with its TensorDict in pinned memory (``DataLoader(pin_memory=True)``)."""
        return MicroBatch(self.data.pin_memory(), self.meta)
