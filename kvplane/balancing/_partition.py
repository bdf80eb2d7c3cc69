"""Number partitioning: split weighted items over ``k`` ranks so the most-loaded rank is light.

Every algorithm returns an *assignment*: an ``int64`` array giving the rank of each item, ranks
relabelled canonically (ordered by their smallest item index) so equal splits compare equal.
:func:`contiguous` and :func:`sort_and_stride` are NeMo-RL's splits, :func:`lpt` and
:func:`karmarkar_karp` balance, :func:`improve_by_swaps` polishes, and :func:`best_assignment` keeps
the best candidate. ``equal_count=True`` keeps ``n/k`` items on every rank (``n`` must be a multiple
of ``k``); free-count results never leave a rank empty when ``n >= k``.

Design: docs/internals.md#kvplanebalancing_partitionpy--the-partitioning-algorithms

Examples:
    >>> import numpy as np
    >>> from kvplane.balancing._partition import karmarkar_karp, lpt, rank_loads
    >>> w = np.array([8.0, 7, 6, 5, 4])
    >>> karmarkar_karp(w, 2).tolist(), rank_loads(karmarkar_karp(w, 2), w, 2).tolist()
    ([0, 1, 0, 1, 1], [14.0, 16.0])
    >>> rank_loads(lpt(w, 2), w, 2).tolist()
    [17.0, 13.0]
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import numpy as np

from kvplane._errors import DataPlaneBadRequest

__all__ = [
    "best_assignment",
    "ranked_assignments",
    "candidate_assignments",
    "contiguous",
    "improve_by_swaps",
    "karmarkar_karp",
    "lower_bound",
    "lpt",
    "rank_loads",
    "sort_and_stride",
]


def rank_loads(assignment: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """The summed weight on each of the ``k`` ranks."""
    return np.bincount(assignment, weights=weights, minlength=k)


def _canonical(assignment: np.ndarray, k: int) -> np.ndarray:
    """Relabel ranks so that rank ``r`` holds the ``r``-th smallest first item index."""
    first = np.full(k, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, assignment, np.arange(assignment.size, dtype=np.int64))
    relabel = np.empty(k, dtype=np.int64)
    relabel[np.argsort(first, kind="stable")] = np.arange(k, dtype=np.int64)
    return relabel[assignment]


def contiguous(n: int, k: int) -> np.ndarray:
    """``n/k`` consecutive items per rank (``n`` a multiple of ``k``).

    Examples:
        >>> contiguous(6, 3).tolist()
        [0, 0, 1, 1, 2, 2]
    """
    return np.repeat(np.arange(k, dtype=np.int64), n // k)


def sort_and_stride(weights: np.ndarray, k: int) -> np.ndarray:
    """Stable-sort ascending and deal round-robin: rank ``r`` gets sorted positions ``r, r+k, ...``.

    Examples:
        >>> sort_and_stride(np.array([5.0, 1, 4, 2]), 2).tolist()
        [1, 0, 0, 1]
    """
    order = np.argsort(weights, kind="stable")
    assignment = np.empty(order.size, dtype=np.int64)
    assignment[order] = np.arange(order.size, dtype=np.int64) % k
    return assignment


def lpt(weights: np.ndarray, k: int, *, equal_count: bool = False) -> np.ndarray:
    """Largest first, each to the least-loaded rank (ties: fewer items, then lower rank).

    With ``equal_count`` a rank stops receiving items once it holds ``n/k``.
    """
    w = np.asarray(weights, dtype=np.float64)
    n = w.size
    order = np.argsort(-w, kind="stable").tolist()
    values = w.tolist()
    quota = n // k if equal_count else n + 1
    heap = [(0.0, 0, r) for r in range(k)]
    ranks = [0] * n
    for i in order:
        load, count, rank = heap[0]
        ranks[i] = rank
        if count + 1 < quota:
            heapq.heapreplace(heap, (load + values[i], count + 1, rank))
        else:
            heapq.heappop(heap)
    return _canonical(np.asarray(ranks, dtype=np.int64), k)


def karmarkar_karp(weights: np.ndarray, k: int, *, equal_count: bool = False) -> np.ndarray:
    """k-way largest differencing (Karmarkar–Karp), free or equal item counts.

    Free count starts from one single-item state per item; equal count starts from the sorted items
    cut into ``k``-tuples (one item per part), so every merge keeps counts equal. A *state* is ``k``
    parts; merging two pairs the heaviest part of one with the lightest of the other, and the states
    with the largest spread (heaviest − lightest part) are merged first.

    Parts are linked lists of items (``nxt``/``tail``), so a merge never copies item lists; states
    with fewer than ``k`` non-empty parts are plain Python lists (a merge that still fits is a list
    concatenation), full states are arrays of part ids sorted by load.
    """
    w = np.asarray(weights, dtype=np.float64)
    n = w.size
    if k == 1 or n == 0:
        return np.zeros(n, dtype=np.int64)
    part_load = w.copy()
    nxt = np.full(n, -1, dtype=np.int64)
    tail = np.arange(n, dtype=np.int64)

    def as_full(state: list[int] | np.ndarray) -> np.ndarray:
        if isinstance(state, np.ndarray):
            return state
        ids = np.asarray(state, dtype=np.int64)
        ids = ids[np.argsort(-part_load[ids], kind="stable")]
        return np.concatenate([ids, np.full(k - ids.size, -1, dtype=np.int64)]) if ids.size < k else ids

    def merge_full(
        a_state: list[int] | np.ndarray, b_state: list[int] | np.ndarray
    ) -> tuple[float, np.ndarray]:
        a = as_full(a_state)
        b = as_full(b_state)[::-1]
        both = (a >= 0) & (b >= 0)
        pa, pb = a[both], b[both]
        nxt[tail[pa]] = pb
        tail[pa] = tail[pb]
        part_load[pa] += part_load[pb]
        ids = np.where(a >= 0, a, b)
        loads = part_load[ids]
        order = np.argsort(-loads, kind="stable")
        return float(loads[order[0]] - loads[order[-1]]), ids[order]

    # Composite states live in a heap of (-spread, sequence number, state, heaviest part). Single items
    # are not in the heap: they are a stream sorted heaviest first (a single's spread is its weight).
    # A state with fewer than k non-empty parts is a list of single items (such merges never combine
    # parts), so its spread is its heaviest item; merging two of them is a list concatenation, and a
    # run of singles that would be merged into it one after another is absorbed in one step.
    heap: list[tuple[float, int, list[int] | np.ndarray, float]] = []
    if equal_count:
        tuples = np.argsort(-w, kind="stable").reshape(-1, k)
        heap = [(-(w[t[0]] - w[t[-1]]), i, t, 0.0) for i, t in enumerate(tuples)]
        heapq.heapify(heap)
        single_ids = np.empty(0, dtype=np.int64)
    else:
        single_ids = np.argsort(-w, kind="stable")
    single_w = w[single_ids]
    neg_single_w = -single_w
    n_single = single_ids.size
    p = 0
    seq = len(heap)

    def take() -> tuple[list[int] | np.ndarray, float]:
        nonlocal p
        if heap and (p >= n_single or -heap[0][0] >= single_w[p]):
            _, _, state, top = heapq.heappop(heap)
            return state, top
        p += 1
        return [int(single_ids[p - 1])], float(single_w[p - 1])

    while n_single - p + len(heap) > 1:
        a_state, a_top = take()
        if type(a_state) is list and p < n_single:
            room = k - 1 - len(a_state)
            rival = -heap[0][0] if heap else -np.inf
            if room > 0 and single_w[p] > rival:
                stop = min(p + room, int(np.searchsorted(neg_single_w, -rival, side="left")))
                a_state = a_state + single_ids[p:stop].tolist()
                p = stop
                heapq.heappush(heap, (-a_top, seq, a_state, a_top))
                seq += 1
                continue
        b_state, b_top = take()
        if type(a_state) is list and type(b_state) is list and len(a_state) + len(b_state) < k:
            top = max(a_top, b_top)
            heapq.heappush(heap, (-top, seq, a_state + b_state, top))
        else:
            spread, full = merge_full(a_state, b_state)
            heapq.heappush(heap, (-spread, seq, full, 0.0))
        seq += 1
    final = heap[0][2] if heap else [int(single_ids[0])]
    heads = np.asarray(final, dtype=np.int64) if isinstance(final, list) else final[final >= 0]
    assignment = np.empty(n, dtype=np.int64)
    ranks = np.arange(heads.size, dtype=np.int64)
    cur = heads
    while cur.size:  # walk all linked lists in lockstep
        assignment[cur] = ranks
        cur = nxt[cur]
        live = cur >= 0
        cur, ranks = cur[live], ranks[live]
    return _canonical(assignment, k)


def improve_by_swaps(
    assignment: np.ndarray,
    weights: np.ndarray,
    k: int,
    *,
    equal_count: bool,
    max_rounds: int | None = None,
    lightest: int = 4,
) -> np.ndarray:
    """Local search on the most-loaded rank: each round makes the best single swap (or, with free
    counts, move) between it and one of the ``lightest`` ranks, the one that lowers the pair's
    heavier load most. Stops after ``max_rounds`` (default ``k``), when nothing helps, or within
    1e-6 of :func:`lower_bound`. Never makes the most-loaded rank heavier; keeps counts when
    ``equal_count``; deterministic.
    """
    w = np.asarray(weights, dtype=np.float64)
    out = assignment.copy()
    loads = rank_loads(out, w, k)
    good_enough = lower_bound(w, k) * (1 + 1e-6)
    for _ in range(k if max_rounds is None else max_rounds):
        hi = int(loads.argmax())
        top = float(loads[hi])
        if top <= good_enough:
            break
        mine = np.flatnonzero(out == hi)
        w_mine = w[mine]
        best: tuple[float, int, int, int, float] | None = None  # (pair max, item, other item, rank, delta)
        for lo in np.argsort(loads, kind="stable")[:lightest].tolist():
            gap = top - float(loads[lo])
            if lo == hi or gap <= 0:
                continue
            theirs = np.flatnonzero(out == lo)
            theirs = theirs[np.argsort(w[theirs], kind="stable")]
            w_theirs = w[theirs]
            options = []
            if theirs.size:  # swaps: delta = w_i - w_j, best near gap / 2
                near = np.searchsorted(w_theirs, w_mine - gap / 2)
                for pos in (near - 1, near):
                    valid = (pos >= 0) & (pos < theirs.size)
                    pos = np.clip(pos, 0, theirs.size - 1)
                    options.append((w_mine - w_theirs[pos], valid, theirs[pos]))
            if not equal_count:  # moves: delta = w_i
                options.append((w_mine, np.ones(mine.size, dtype=bool), np.full(mine.size, -1)))
            for delta, valid, partner in options:
                pair_max = np.where(
                    valid & (delta > 0) & (delta < gap), np.maximum(top - delta, top - gap + delta), np.inf
                )
                i = int(pair_max.argmin())
                if pair_max[i] < top and (best is None or pair_max[i] < best[0]):
                    best = (float(pair_max[i]), int(mine[i]), int(partner[i]), lo, float(delta[i]))
        if best is None:
            break
        _, item, partner, lo, delta = best
        out[item] = lo
        if partner >= 0:
            out[partner] = hi
        loads[hi] -= delta
        loads[lo] += delta
    return out


Candidate = tuple[str, Callable[[], np.ndarray]]


def candidate_assignments(weights: np.ndarray, k: int, *, equal_count: bool) -> list[Candidate]:
    """The algorithms :func:`best_assignment` tries, as lazily evaluated ``(name, fn)`` pairs.

    Equal count: equal-count KK, equal-count LPT, sort-and-stride, contiguous. Free count adds
    free KK and free LPT in front (and keeps the equal-count ones, so it is never worse than them).
    """
    w = np.asarray(weights, dtype=np.float64)
    n = w.size
    out: list[Candidate] = []
    if not equal_count:
        out += [("kk", lambda: karmarkar_karp(w, k)), ("lpt", lambda: lpt(w, k))]
    if n % k == 0:
        out += [
            ("kk_equal_count", lambda: karmarkar_karp(w, k, equal_count=True)),
            ("lpt_equal_count", lambda: lpt(w, k, equal_count=True)),
            ("sort_and_stride", lambda: _canonical(sort_and_stride(w, k), k)),
            ("contiguous", lambda: contiguous(n, k)),
        ]
    return out


def lower_bound(weights: np.ndarray, k: int) -> float:
    """No partition's most-loaded rank is lighter: the heaviest item, and the mean (rounded up when
    the weights are integers)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.size == 0:
        return 0.0
    mean = w.sum() / k
    if np.array_equal(w, np.floor(w)):
        mean = float(np.ceil(mean - 1e-9 * max(1.0, mean)))
    return max(float(w.max()), mean)


def ranked_assignments(
    weights: np.ndarray, k: int, *, equal_count: bool = False, polish: bool = False
) -> list[tuple[float, str, np.ndarray]]:
    """Every candidate as ``(most-loaded rank's load, name, assignment)``, lightest first (stable).

    With ``polish``, candidates stop once one reaches :func:`lower_bound` (it is optimal, so no later
    one can be lighter; Karmarkar–Karp does at 64 or more items per rank), and the lightest is then
    improved by :func:`improve_by_swaps` (its name gains ``+swaps`` when that helped).
    """
    w = np.asarray(weights, dtype=np.float64)
    bound = lower_bound(w, k) if polish else -np.inf
    ranked = []
    for name, fn in candidate_assignments(w, k, equal_count=equal_count):
        assignment = fn()
        peak = float(rank_loads(assignment, w, k).max())
        ranked.append((peak, name, assignment))
        if peak <= bound:
            break
    if not ranked:
        raise DataPlaneBadRequest(
            f"no candidate partition of {w.size} items over {k} ranks (equal count needs n % k == 0)"
        )
    ranked.sort(key=lambda entry: entry[0])
    peak, name, assignment = ranked[0]
    if polish and peak > bound:
        better = improve_by_swaps(assignment, w, k, equal_count=equal_count)
        better_peak = float(rank_loads(better, w, k).max())
        if better_peak < peak:
            ranked[0] = (better_peak, f"{name}+swaps", _canonical(better, k))
    return ranked


def best_assignment(weights: np.ndarray, k: int, *, equal_count: bool = False) -> tuple[np.ndarray, str]:
    """The candidate with the lowest most-loaded rank (ties: the earlier candidate) and its name.

    Examples:
        >>> w = np.array([9.0, 1, 1, 1, 1, 1, 1, 1])
        >>> a, name = best_assignment(w, 2)
        >>> rank_loads(a, w, 2).tolist(), name
        ([9.0, 7.0], 'kk')
        >>> a, name = best_assignment(w, 2, equal_count=True)
        >>> rank_loads(a, w, 2).tolist(), name
        ([12.0, 4.0], 'kk_equal_count')
    """
    _, name, assignment = ranked_assignments(weights, k, equal_count=equal_count, polish=True)[0]
    return assignment, name
