"""NeMo-RL's sequence packers: fill bins of ``capacity`` tokens with sequences, by index.

:func:`pack` returns bins as lists of item indices, exactly as NeMo-RL's ``get_packer(...).pack``
orders them (same phases and tie rules), so the ``micro_batch_*`` plans built on top are
byte-compatible. :func:`adjust_bin_count` is NeMo-RL's bin-count adjustment: it opens bins until
there are at least ``min_count`` and a multiple of ``multiple``, moving one item at a time.

One deliberate difference: ``first_fit_shuffle`` shuffles with a seeded generator (NeMo-RL uses the
global ``random`` state), so every process computing the same split gets the same bins.

Examples:
    >>> from kvplane.balancing._packers import pack, adjust_bin_count
    >>> pack([4, 1, 3, 2, 1, 3, 4, 5], 5, "concatenative")
    [[0, 1], [2, 3], [4, 5], [6], [7]]
    >>> pack([4, 1, 3, 2, 1, 3, 4, 5], 8, "first_fit_decreasing")
    [[7, 5], [6, 0], [2, 3, 4, 1]]
    >>> adjust_bin_count([[0, 1, 2], [3]], min_count=4)
    [[0], [3], [2], [1]]
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence

import numpy as np

from kvplane._errors import DataPlaneBadRequest

__all__ = ["PACKING_ALGORITHMS", "adjust_bin_count", "pack"]

#: The ``sequence_packing_args["algorithm"]`` names (matched case-insensitively).
PACKING_ALGORITHMS = (
    "concatenative",
    "first_fit_decreasing",
    "first_fit_shuffle",
    "modified_first_fit_decreasing",
)


def pack(lengths: Sequence[int], capacity: int, algorithm: str, *, seed: int = 0) -> list[list[int]]:
    """Pack ``lengths`` into bins of at most ``capacity`` tokens; bins hold item indices.

    Raises:
        DataPlaneBadRequest: Unknown algorithm; a length above ``capacity`` ("Sequence length X
            exceeds bin capacity Y", as NeMo-RL); a length below 1 for the MFFD packer.
    """
    name = algorithm.lower()
    sizes = [int(x) for x in lengths]
    for size in sizes:
        if size > capacity:
            raise DataPlaneBadRequest(f"Sequence length {size} exceeds bin capacity {capacity}")
    if name == "concatenative":
        return _next_fit(sizes, capacity)
    if name == "first_fit_decreasing":
        order = sorted(range(len(sizes)), key=lambda i: (sizes[i], i), reverse=True)
        return _first_fit(sizes, order, capacity)
    if name == "first_fit_shuffle":
        order = list(range(len(sizes)))
        random.Random(seed).shuffle(order)
        return _first_fit(sizes, order, capacity)
    if name == "modified_first_fit_decreasing":
        if any(size <= 0 for size in sizes):
            raise DataPlaneBadRequest("modified_first_fit_decreasing needs sequence lengths >= 1")
        return _modified_first_fit_decreasing(sizes, capacity)
    raise DataPlaneBadRequest(
        f"Unknown packing algorithm: {algorithm!r}. Available algorithms: {', '.join(PACKING_ALGORITHMS)}"
    )


def _next_fit(sizes: list[int], capacity: int) -> list[list[int]]:
    bins: list[list[int]] = []
    load = capacity + 1
    for i, size in enumerate(sizes):
        if load + size > capacity:
            bins.append([i])
            load = size
        else:
            bins[-1].append(i)
            load += size
    return bins


def _first_fit(sizes: list[int], order: list[int], capacity: int) -> list[list[int]]:
    bins: list[list[int]] = []
    room = np.empty(len(sizes), dtype=np.int64)
    for i in order:
        size = sizes[i]
        open_bins = room[: len(bins)]
        j = int(np.argmax(open_bins >= size)) if bins else 0
        if bins and open_bins[j] >= size:
            bins[j].append(i)
            room[j] -= size
        else:
            room[len(bins)] = capacity - size
            bins.append([i])
    return bins


class _SizePool:
    """Items kept sorted so "the largest item of size <= x" is a bisect (ties: lowest index)."""

    def __init__(self, items: list[tuple[int, int]]) -> None:
        # key (size, -index): among equal sizes the rightmost entry is the lowest index.
        self.keys = sorted((size, -i) for i, size in items)

    def __len__(self) -> int:
        return len(self.keys)

    def take_largest_fitting(self, room: int) -> tuple[int, int] | None:
        pos = bisect.bisect_right(self.keys, (room, 1)) - 1
        if pos < 0:
            return None
        size, neg_i = self.keys.pop(pos)
        return -neg_i, size


def _modified_first_fit_decreasing(sizes: list[int], capacity: int) -> list[list[int]]:
    """Johnson & Garey's MFFD, with NeMo-RL's phase order and tie rules."""
    large, medium, small, tiny = [], [], [], []
    for i, size in enumerate(sizes):
        if size > capacity / 2:
            large.append((i, size))
        elif size > capacity / 3:
            medium.append((i, size))
        elif size > capacity / 6:
            small.append((i, size))
        else:
            tiny.append((i, size))
    large.sort(key=lambda item: item[1], reverse=True)
    small.sort(key=lambda item: item[1])
    bins = [[i] for i, _ in large]
    loads = [size for _, size in large]

    # Phase 2: the largest medium item that fits goes into each large bin, in bin order.
    medium_pool = _SizePool(medium)
    for b in range(len(bins)):
        got = medium_pool.take_largest_fitting(capacity - loads[b])
        if got is not None:
            bins[b].append(got[0])
            loads[b] += got[1]
    has_medium = [len(members) > 1 for members in bins]

    # Phase 3: backward over bins without a medium item: the smallest small item plus the largest
    # small item that still fits (ties: highest index), when the two smallest fit together.
    for b in reversed(range(len(bins))):
        if has_medium[b] or len(small) < 2:
            continue
        room = capacity - loads[b]
        if small[0][1] + small[1][1] > room:
            continue
        first = small.pop(0)
        room -= first[1]
        pos = bisect.bisect_right([size for _, size in small], room) - 1
        second = small.pop(pos)
        bins[b] += [first[0], second[0]]
        loads[b] += first[1] + second[1]

    # Phase 4: forward, each bin keeps taking the largest remaining item that fits.
    pool = _SizePool([*[(-neg_i, size) for size, neg_i in medium_pool.keys], *small, *tiny])
    for b in range(len(bins)):
        while len(pool):
            got = pool.take_largest_fitting(capacity - loads[b])
            if got is None:
                break
            bins[b].append(got[0])
            loads[b] += got[1]

    # Phase 5: leftovers, largest first, into the least-loaded new bin if they fit, else a new bin;
    # the new bins stay sorted by load (equal loads: the later one last) and are appended so.
    new_bins: list[list[int]] = []
    new_loads: list[int] = []
    for size, neg_i in reversed(pool.keys):
        if new_bins and new_loads[0] + size <= capacity:
            members, load = new_bins.pop(0), new_loads.pop(0)
        else:
            members, load = [], 0
        members.append(-neg_i)
        load += size
        pos = bisect.bisect_right(new_loads, load)
        new_bins.insert(pos, members)
        new_loads.insert(pos, load)
    return bins + new_bins


def adjust_bin_count(bins: list[list[int]], *, min_count: int = 0, multiple: int = 1) -> list[list[int]]:
    """Open empty bins until there are ``>= min_count`` and a multiple of ``multiple``, then fill each
    by moving the last item of a source bin; sources are visited by (item count, index) descending
    and drained down to one item before the next is used (NeMo-RL's rule).

    Raises:
        DataPlaneBadRequest: Fewer items than the bins required.
    """
    target = max(len(bins), min_count)
    target += -target % multiple
    if target == len(bins):
        return bins
    total = sum(len(b) for b in bins)
    if total < target:
        raise DataPlaneBadRequest(
            f"Cannot create {target} bins with only {total} sequences: each bin needs at least one"
        )
    out = [list(b) for b in bins]
    sources = sorted(((len(b), i) for i, b in enumerate(bins)), reverse=True)
    cursor = 0
    for _ in range(target - len(bins)):
        while len(out[sources[cursor][1]]) <= 1:
            cursor += 1
        out.append([out[sources[cursor][1]].pop()])
    return out
