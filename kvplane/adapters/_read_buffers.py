"""Output buffers the embedded store reuses once its readers have dropped them.

A new tensor of many MiB is paid for on first write: the kernel faults in and zeroes every page.
A reader that keeps its batch while the next one is read (a trainer's loop variable, a prefetching
loader) never hands the allocator the previous batch's memory in time, so each read landed in new
pages and took up to twice as long as a read into memory already touched. :class:`ReadBuffers`
keeps the outputs of large reads and gives one out again, as a new view, once nothing outside the
pool refers to its storage: no tensor or view of it, no numpy array, no storage object. A buffer
moved to shared memory is forgotten, never reused. The free buffers kept are bounded
(:data:`MAX_BUFFERS`, :data:`MAX_FREE_BYTES`); the store's ``retained_nbytes`` does not count them.

Design: docs/internals.md#kvplaneadapters_read_bufferspy--reused-read-buffers

Examples:
    >>> import torch
    >>> pool = ReadBuffers(min_bytes=0)
    >>> a = pool.take((4, 2), torch.float32)
    >>> b = pool.take((4, 2), torch.float32)            # a is still held: other memory
    >>> a.data_ptr() == b.data_ptr()
    False
    >>> kept = a.data_ptr(); del a
    >>> pool.take((4, 2), torch.float32).data_ptr() == kept   # a was dropped: its memory again
    True
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable, Sequence

import torch

__all__ = ["MAX_BUFFERS", "MAX_FREE_BYTES", "MIN_BYTES", "ReadBuffers"]

#: Outputs smaller than this come from the allocator as before (its small-size bins are reused).
MIN_BYTES = 1 << 20
#: The most bytes of free buffers kept when a new buffer is made (the least recently used go first).
MAX_FREE_BYTES = 1 << 30
#: The most buffers kept, in use or free.
MAX_BUFFERS = 16

# torch's count of references to a storage (tensors and views of it, its Python object): the
# only way to see a view the caller kept. Without it (another torch), nothing is reused.
_use_count: Callable[[int], int] | None = getattr(torch._C, "_storage_Use_Count", None)


def _references(base: torch.Tensor) -> tuple[int, int]:
    """(torch's references to ``base``'s storage, Python references to its storage object)."""
    storage = base.untyped_storage()
    assert _use_count is not None
    return _use_count(storage._cdata), sys.getrefcount(storage)


def _unreferenced() -> tuple[int, int] | None:
    """What :func:`_references` reports for a tensor nobody else refers to (``None``: cannot tell)."""
    if _use_count is None:
        return None
    try:
        return _references(torch.empty(1))
    except (RuntimeError, TypeError, AttributeError):
        return None


class ReadBuffers:
    """Dense output tensors, reused once unreferenced (see the module docstring). Thread-safe.

    Args:
        min_bytes: Smaller outputs are plain allocations.
        max_free_bytes: The most bytes of free buffers kept.
    """

    def __init__(self, *, min_bytes: int = MIN_BYTES, max_free_bytes: int = MAX_FREE_BYTES) -> None:
        self._min_bytes = min_bytes
        self._max_free_bytes = max_free_bytes
        self._free_when = _unreferenced()
        self._buffers: list[torch.Tensor] = []  # flat bases, least recently used first
        self._lock = threading.Lock()

    def take(self, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised tensor of ``shape`` and ``dtype``: a free buffer's memory, or new memory."""
        numel = math.prod(shape)
        if self._free_when is None or numel * dtype.itemsize < self._min_bytes:
            return torch.empty(shape, dtype=dtype)
        with self._lock:
            self._buffers = [b for b in self._buffers if not b.is_shared()]  # another process may map it
            for i in range(len(self._buffers) - 1, -1, -1):  # the most recently used first: still in cache
                base = self._buffers[i]
                if base.dtype == dtype and base.numel() == numel and self._is_free(base):
                    self._buffers.append(self._buffers.pop(i))  # most recently used last
                    return base.view(shape)
            base = torch.empty(numel, dtype=dtype)
            self._trim()
            self._buffers.append(base)
        return base.view(shape)

    def clear(self) -> None:
        """Forget every buffer (those in use stay with their holders)."""
        with self._lock:
            self._buffers.clear()

    def _is_free(self, base: torch.Tensor) -> bool:
        return _references(base) == self._free_when

    def _trim(self) -> None:
        """Make room for one more buffer: drop the least recently used beyond :data:`MAX_BUFFERS`, and free
        ones beyond the byte bound."""
        while len(self._buffers) >= MAX_BUFFERS:
            self._buffers.pop(0)
        free = [b for b in self._buffers if self._is_free(b)]
        excess = sum(b.numel() * b.element_size() for b in free) - self._max_free_bytes
        for base in free:
            if excess <= 0:
                break
            self._buffers.remove(base)
            excess -= base.numel() * base.element_size()
