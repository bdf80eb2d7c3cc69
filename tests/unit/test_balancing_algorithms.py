"""The partitioning and packing algorithms behind shard_meta_for_dp, against plain reference versions."""

from __future__ import annotations

import heapq

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvplane import DataPlaneBadRequest
from kvplane.balancing._packers import PACKING_ALGORITHMS, adjust_bin_count, pack
from kvplane.balancing._partition import (
    best_assignment,
    candidate_assignments,
    improve_by_swaps,
    karmarkar_karp,
    lpt,
    rank_loads,
    ranked_assignments,
)


def textbook_kk(weights: list[float], k: int, *, equal_count: bool = False) -> list[float]:
    """k-way largest differencing with explicit k-vectors; returns the sorted part loads."""
    if equal_count:
        ordered = sorted(weights, reverse=True)
        states = [sorted(ordered[i : i + k], reverse=True) for i in range(0, len(ordered), k)]
    else:
        states = [[w] + [0.0] * (k - 1) for w in weights]
    heap = [(-(s[0] - s[-1]), i, s) for i, s in enumerate(states)]
    heapq.heapify(heap)
    seq = len(heap)
    while len(heap) > 1:
        _, _, a = heapq.heappop(heap)
        _, _, b = heapq.heappop(heap)
        merged = sorted((x + y for x, y in zip(a, reversed(b), strict=True)), reverse=True)
        heapq.heappush(heap, (-(merged[0] - merged[-1]), seq, merged))
        seq += 1
    return sorted(heap[0][2])


def textbook_lpt(weights: list[float], k: int) -> list[float]:
    loads = [0.0] * k
    for w in sorted(weights, reverse=True):
        loads[loads.index(min(loads))] += w
    return sorted(loads)


distinct_floats = st.lists(st.floats(1.0, 1e4, allow_nan=False), min_size=1, max_size=120, unique=True)


@settings(max_examples=200, deadline=None)
@given(distinct_floats, st.integers(1, 12))
def test_karmarkar_karp_matches_the_textbook_version(weights, k):
    w = np.asarray(weights)
    ours = sorted(rank_loads(karmarkar_karp(w, k), w, k).tolist())
    assert np.allclose(ours, textbook_kk(weights, k))


@settings(max_examples=200, deadline=None)
@given(distinct_floats, st.integers(1, 12))
def test_equal_count_karmarkar_karp_matches_the_textbook_version(weights, k):
    weights = weights[: len(weights) - len(weights) % k] or weights[:1] * k
    w = np.asarray(weights)
    assignment = karmarkar_karp(w, k, equal_count=True)
    assert np.bincount(assignment, minlength=k).tolist() == [w.size // k] * k
    assert np.allclose(
        sorted(rank_loads(assignment, w, k).tolist()), textbook_kk(weights, k, equal_count=True)
    )


@settings(max_examples=200, deadline=None)
@given(distinct_floats, st.integers(1, 12))
def test_lpt_matches_the_textbook_version(weights, k):
    w = np.asarray(weights)
    assert np.allclose(sorted(rank_loads(lpt(w, k), w, k).tolist()), textbook_lpt(weights, k))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 5000), min_size=1, max_size=200), st.integers(1, 16), st.booleans())
def test_every_candidate_is_a_valid_partition(weights, k, equal_count):
    w = np.asarray(weights, dtype=np.float64)
    if equal_count:
        w = w[: w.size - w.size % k]
        if w.size == 0:
            return
    ranked = ranked_assignments(w, k, equal_count=equal_count)
    assert [peak for peak, _, _ in ranked] == sorted(peak for peak, _, _ in ranked)
    for peak, name, assignment in ranked:
        assert assignment.shape == w.shape and assignment.min() >= 0 and assignment.max() < k
        counts = np.bincount(assignment, minlength=k)
        if w.size >= k:
            assert counts.min() >= 1, f"{name} left a rank empty (zero weights included)"
        if equal_count or name.endswith(("equal_count", "stride", "contiguous")):
            assert counts.tolist() == [w.size // k] * k, name
        assert peak == rank_loads(assignment, w, k).max()
    best, name = best_assignment(w, k, equal_count=equal_count)
    assert rank_loads(best, w, k).max() <= ranked[0][0]
    if equal_count:
        assert np.bincount(best, minlength=k).tolist() == [w.size // k] * k
    assert name.split("+")[0] in {n for _, n, _ in ranked}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 5000), min_size=2, max_size=120), st.integers(2, 12), st.booleans())
def test_swaps_never_raise_the_peak_and_keep_counts_when_asked(weights, k, equal_count):
    w = np.asarray(weights[: len(weights) - len(weights) % k] if equal_count else weights, dtype=np.float64)
    if w.size == 0:
        return
    start = lpt(w, k, equal_count=equal_count)
    better = improve_by_swaps(start, w, k, equal_count=equal_count)
    assert rank_loads(better, w, k).max() <= rank_loads(start, w, k).max()
    assert better.min() >= 0 and better.max() < k
    if equal_count:
        assert (np.bincount(better, minlength=k) == np.bincount(start, minlength=k)).all()


def test_polishing_lowers_the_peak_of_equal_count_splits():
    rng = np.random.default_rng(7)
    gains = []
    for _ in range(10):
        w = np.where(
            rng.random(512) < 0.3, rng.integers(4000, 8193, 512), rng.integers(100, 801, 512)
        ).astype(float)
        plain = ranked_assignments(w, 64, equal_count=True)[0][0]
        polished = ranked_assignments(w, 64, equal_count=True, polish=True)[0][0]
        assert polished <= plain
        gains.append(plain - polished)
    assert sum(gains) > 0, "swaps improve bimodal 8-per-rank equal-count splits"


def test_free_count_candidates_include_the_equal_count_ones():
    names = [name for name, _ in candidate_assignments(np.ones(8), 4, equal_count=False)]
    assert names == ["kk", "lpt", "kk_equal_count", "lpt_equal_count", "sort_and_stride", "contiguous"]


# --- packers -------------------------------------------------------------------------------------


def textbook_first_fit(sizes: list[int], order: list[int], cap: int) -> list[list[int]]:
    bins: list[list[int]] = []
    loads: list[int] = []
    for i in order:
        for b, load in enumerate(loads):
            if load + sizes[i] <= cap:
                bins[b].append(i)
                loads[b] += sizes[i]
                break
        else:
            bins.append([i])
            loads.append(sizes[i])
    return bins


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(1, 1000), min_size=1, max_size=80),
    st.integers(0, 1500),
    st.sampled_from(PACKING_ALGORITHMS),
)
def test_packers_place_every_item_once_within_capacity(sizes, extra, algorithm):
    cap = max(sizes) + extra
    bins = pack(sizes, cap, algorithm, seed=3)
    assert sorted(i for b in bins for i in b) == list(range(len(sizes)))
    assert all(b and sum(sizes[i] for i in b) <= cap for b in bins)
    if algorithm == "first_fit_decreasing":
        order = sorted(range(len(sizes)), key=lambda i: (sizes[i], i), reverse=True)
        assert bins == textbook_first_fit(sizes, order, cap)
    if algorithm == "concatenative":
        assert [i for b in bins for i in b] == list(range(len(sizes)))
        assert all(
            sum(sizes[i] for i in a) + sizes[b[0]] > cap for a, b in zip(bins[:-1], bins[1:], strict=True)
        )


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 99), min_size=1, max_size=6), min_size=1, max_size=10), st.integers(1, 8)
)
def test_adjust_bin_count_reaches_the_target_moving_single_items(bins, multiple):
    items = [i for b in bins for i in b]
    target = len(bins) + (-len(bins) % multiple)
    if len(items) < target:
        with pytest.raises(DataPlaneBadRequest, match="Cannot create"):
            adjust_bin_count(bins, multiple=multiple)
        return
    out = adjust_bin_count(bins, multiple=multiple)
    assert len(out) == target and all(out)
    assert sorted(i for b in out for i in b) == sorted(items)
    assert all(len(b) == 1 for b in out[len(bins) :])
    assert all(new == old[: len(new)] for new, old in zip(out, bins, strict=False)), "only tails move"


def test_packer_errors():
    with pytest.raises(DataPlaneBadRequest, match="Sequence length 9 exceeds bin capacity 8"):
        pack([1, 9], 8, "first_fit_decreasing")
    with pytest.raises(DataPlaneBadRequest, match="Unknown packing algorithm"):
        pack([1], 8, "best_fit")
    with pytest.raises(DataPlaneBadRequest, match=">= 1"):
        pack([0, 1], 8, "modified_first_fit_decreasing")
