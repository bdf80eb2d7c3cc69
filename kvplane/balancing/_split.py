"""Split one global batch (a chunk of ``batch_size`` rows) over the DP ranks, in every mode.

Each function returns a :class:`ChunkSplit`: per rank, its rows (chunk-local positions, in the order
the rank processes them) and, where the mode has one, its micro-batch plan for this chunk.

NeMo-RL modes (``balance=None``, ``reference/nemo_rl_data_plane.md`` §7.3): :func:`nemo_contiguous`,
:func:`nemo_dynamic`, :func:`nemo_packed`. Balanced modes: :func:`balanced_plain`,
:func:`balanced_dynamic`, :func:`balanced_packed`; they pick the partition with the lightest
most-loaded rank among Karmarkar–Karp, LPT and their equal-count variants, polished by swaps (see
:mod:`kvplane.balancing._partition`), over rows or, with ``group_tag``, over whole groups.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from kvplane._errors import DataPlaneBadRequest
from kvplane.balancing._packers import adjust_bin_count, pack
from kvplane.balancing._partition import karmarkar_karp, lpt, rank_loads, ranked_assignments
from kvplane.balancing._plans import bin_plan, dynamic_plan
from kvplane.balancing._request import DynamicBatching, SequencePacking, ShardRequest

__all__ = [
    "ChunkSplit",
    "balanced_dynamic",
    "balanced_packed",
    "balanced_plain",
    "nemo_contiguous",
    "nemo_dynamic",
    "nemo_packed",
]

logger = logging.getLogger(__name__)


@dataclass
class ChunkSplit:
    """One chunk's split: ``rows[r]`` are rank ``r``'s chunk-local rows, in processing order.

    ``ranges[r]``/``sizes[r]`` are rank ``r``'s ``micro_batch_indices``/``micro_batch_lengths``
    entries for this chunk (``None`` when the mode has no plan); ``counted`` says whether
    ``elem_counts_per_gb`` is set (packing-style plans).
    """

    rows: list[list[int]]
    ranges: list[list[list[int]]] | None = None
    sizes: list[list[int]] | None = None
    counted: bool = False


def _rank_rows(assignment: np.ndarray, k: int) -> list[np.ndarray]:
    """Each rank's items in ascending index order."""
    order = np.argsort(assignment, kind="stable")
    return np.split(order, np.cumsum(np.bincount(assignment, minlength=k))[:-1])


def _from_bins(per_rank_bins: list[list[list[int]]], costed: np.ndarray, largest_first: bool) -> ChunkSplit:
    rows, ranges, sizes = [], [], []
    for bins in per_rank_bins:
        if largest_first:
            bins = sorted(bins, key=lambda members: int(costed[members].sum()), reverse=True)
        rank_ranges, rank_sizes = bin_plan(bins, costed)
        rows.append([i for members in bins for i in members])
        ranges.append(rank_ranges)
        sizes.append(rank_sizes)
    return ChunkSplit(rows, ranges, sizes, counted=True)


# --- NeMo-RL modes -------------------------------------------------------------------------------


def nemo_contiguous(req: ShardRequest) -> ChunkSplit:
    """Rank ``r`` gets rows ``[r·S, (r+1)·S)``; no plan."""
    per_rank = req.batch_size // req.dp_world
    return ChunkSplit([list(range(r * per_rank, (r + 1) * per_rank)) for r in range(req.dp_world)])


def _dynamic_split(cfg: DynamicBatching, lengths: np.ndarray, rows: list[np.ndarray]) -> ChunkSplit:
    matrix = np.stack([lengths[r] for r in rows])
    ranges, sizes = dynamic_plan(matrix, max_tokens=cfg.max_tokens, round_to=cfg.round_to)
    return ChunkSplit(
        [r.tolist() for r in rows],
        [[list(pair) for pair in ranges] for _ in rows],
        [list(sizes) for _ in rows],
    )


def nemo_dynamic(req: ShardRequest, cfg: DynamicBatching, lo: int) -> ChunkSplit:
    """Stable-sort by length, deal round-robin; one shared dynamic-batching plan."""
    lengths = req.lengths[lo : lo + req.batch_size]
    order = np.argsort(lengths, kind="stable")
    return _dynamic_split(cfg, lengths, [order[r :: req.dp_world] for r in range(req.dp_world)])


def nemo_packed(req: ShardRequest, cfg: SequencePacking, lo: int) -> ChunkSplit:
    """Pack the chunk, adjust to a multiple of ``dp_world`` bins, deal bins round-robin."""
    costed = req.costed[lo : lo + req.batch_size]
    k = req.dp_world
    bins = adjust_bin_count(pack(costed, cfg.capacity, cfg.algorithm, seed=cfg.seed), min_count=k, multiple=k)
    return _from_bins([bins[r::k] for r in range(k)], costed, cfg.largest_first)


# --- balanced modes ------------------------------------------------------------------------------


def _ranked(
    req: ShardRequest, lo: int, *, equal_count: bool, polish: bool = False
) -> list[tuple[float, str, np.ndarray]]:
    """Candidate row assignments for this chunk, lightest most-loaded rank first."""
    k = req.dp_world
    weights = req.weights(lo, lo + req.batch_size)
    if req.group_codes is None:
        return ranked_assignments(weights, k, equal_count=equal_count, polish=polish)
    _, groups = np.unique(req.group_codes[lo : lo + req.batch_size], return_inverse=True)
    sizes = np.bincount(groups)
    if equal_count and (sizes.size % k or (sizes != sizes[0]).any()):
        raise DataPlaneBadRequest(
            f"equal_count with group_tag={req.group_tag!r} needs equal-size groups and a multiple of "
            f"dp_world={k} groups per batch; got {sizes.size} groups of sizes {sorted(set(sizes.tolist()))}"
        )
    if sizes.size < k:
        raise DataPlaneBadRequest(
            f"group_tag={req.group_tag!r}: a batch has {sizes.size} groups for dp_world={k}; "
            "every rank needs at least one whole group"
        )
    group_weights = np.bincount(groups, weights=weights)
    ranked = ranked_assignments(group_weights, k, equal_count=equal_count, polish=polish)
    return [(peak, f"group_{name}", assignment[groups]) for peak, name, assignment in ranked]


def _chosen(req: ShardRequest, lo: int, *, equal_count: bool) -> np.ndarray:
    peak, name, assignment = _ranked(req, lo, equal_count=equal_count, polish=True)[0]
    logger.debug("chunk at row %d: %s, most-loaded rank %.6g", lo, name, peak)
    return assignment


def balanced_plain(req: ShardRequest, lo: int) -> ChunkSplit:
    """Balanced rows in ascending index order; one micro-batch per rank (packing-style plan)."""
    assignment = _chosen(req, lo, equal_count=req.equal_count)
    costed = req.costed[lo : lo + req.batch_size]
    return _from_bins([[r.tolist()] for r in _rank_rows(assignment, req.dp_world)], costed, False)


def balanced_dynamic(req: ShardRequest, cfg: DynamicBatching, lo: int) -> ChunkSplit:
    """Equal-count balanced rows (the shared plan walks positions), each rank sorted by length."""
    assignment = _chosen(req, lo, equal_count=True)
    lengths = req.lengths[lo : lo + req.batch_size]
    rows = [r[np.argsort(lengths[r], kind="stable")] for r in _rank_rows(assignment, req.dp_world)]
    return _dynamic_split(cfg, lengths, rows)


def _pack_each_rank(cfg: SequencePacking, costed: np.ndarray, rows_per_rank: list[np.ndarray]) -> list | None:
    """Pack every rank's rows, then split bins until all ranks have as many; None if a rank can't."""
    per_rank = []
    for rows in rows_per_rank:
        bins = pack(costed[rows], cfg.capacity, cfg.algorithm, seed=cfg.seed)
        per_rank.append([[int(rows[i]) for i in members] for members in bins])
    target = max(len(bins) for bins in per_rank)
    if any(rows.size < target for rows in rows_per_rank):
        return None
    return [adjust_bin_count(bins, min_count=target) for bins in per_rank]


def _bins_first(cfg: SequencePacking, k: int, costed: np.ndarray, weights: np.ndarray) -> tuple[float, list]:
    """Pack the whole chunk (as NeMo-RL), then give every rank the same number of bins, balanced."""
    bins = adjust_bin_count(pack(costed, cfg.capacity, cfg.algorithm, seed=cfg.seed), min_count=k, multiple=k)
    bin_weights = np.array([weights[members].sum() for members in bins])
    options = [
        np.arange(len(bins)) % k,  # NeMo-RL's round-robin
        karmarkar_karp(bin_weights, k, equal_count=True),
        lpt(bin_weights, k, equal_count=True),
    ]
    peaks = [float(rank_loads(a, bin_weights, k).max()) for a in options]
    pick = int(np.argmin(peaks))
    return peaks[pick], [[bins[j] for j in rows] for rows in _rank_rows(options[pick], k)]


def balanced_packed(req: ShardRequest, cfg: SequencePacking, lo: int) -> ChunkSplit:
    """Packing with balanced ranks and the same number of bins (micro-batches) on every rank.

    Rows first: the best row partition whose ranks can all be packed into the same number of bins
    (each rank packs its own rows; ranks with fewer bins split their fullest ones). Free count
    without groups also tries bins first (NeMo-RL's bins, dealt by balanced equal-count
    partitioning, round-robin included) and keeps whichever has the lighter most-loaded rank (then
    fewer micro-batches).
    """
    k = req.dp_world
    costed = req.costed[lo : lo + req.batch_size]
    best: tuple[float, int, list] | None = None
    for peak, name, assignment in _ranked(req, lo, equal_count=req.equal_count):
        per_rank = _pack_each_rank(cfg, costed, _rank_rows(assignment, k))
        if per_rank is not None:
            best = (peak, len(per_rank[0]), per_rank)
            logger.debug("chunk at row %d: rows first with %s, most-loaded rank %.6g", lo, name, peak)
            break
    if not req.equal_count and req.group_codes is None:
        peak, per_rank = _bins_first(cfg, k, costed, req.weights(lo, lo + req.batch_size))
        if best is None or (peak, len(per_rank[0])) < best[:2]:
            best = (peak, len(per_rank[0]), per_rank)
    if best is None:
        raise DataPlaneBadRequest(
            "cannot give every rank the same number of packed micro-batches with "
            f"group_tag={req.group_tag!r}: a rank's whole groups have fewer rows than the "
            "micro-batches another rank needs"
        )
    return _from_bins(best[2], costed, cfg.largest_first)
