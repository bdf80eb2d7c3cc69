"""Balance suite: most-loaded rank / mean, side by side on the same batches, and sharding time.

Generated batches (lognormal and bimodal lengths; 8, 64, 512 samples per rank; DP 2, 8, 64) are split
by NeMo-RL's, verl's and textbook partitioners and by kvplane's ``shard_meta_for_dp`` with
``balance="tokens"``. Each cell reports ``max_over_mean`` (mean and worst over trials) and median
milliseconds per method; ``targets`` checks the balance and scale targets of docs/design.md.

Design: docs/internals.md#kvplane_toolsbenchbalancepy--the-balance-suite

Examples:
    >>> from kvplane_tools.bench import balance
    >>> report = balance.run(quick=True)
    >>> sorted(report)
    ['cells', 'packing_4096_over_64', 'setup', 'shard_4096_over_64', 'targets']
    >>> report["targets"]["never_worse_than_sort_and_stride_or_kk_equal_count"]
    True
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from kvplane import KVBatchMeta, shard_meta_for_dp
from kvplane.balancing._packers import PACKING_ALGORITHMS
from kvplane.balancing._partition import contiguous, karmarkar_karp, lpt, rank_loads, sort_and_stride
from kvplane_tools.bench.stats import measure

__all__ = ["bimodal_lengths", "lognormal_lengths", "run"]

DISTRIBUTIONS = ("lognormal", "bimodal")
BASELINES = ("sort_and_stride", "kk_equal_count")
_EPS = 1e-12


def lognormal_lengths(rng: np.random.Generator, n: int) -> np.ndarray:
    """Median 1500 tokens, σ = 0.9, clipped to 32–8192 (peers.md §4.4)."""
    return np.clip(np.rint(rng.lognormal(np.log(1500), 0.9, n)), 32, 8192).astype(np.int64)


def bimodal_lengths(rng: np.random.Generator, n: int) -> np.ndarray:
    """70% uniform in 100–800 tokens, 30% uniform in 4000–8192 (peers.md §4.4)."""
    long = rng.random(n) < 0.3
    return np.where(long, rng.integers(4000, 8193, n), rng.integers(100, 801, n)).astype(np.int64)


_GENERATORS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "lognormal": lognormal_lengths,
    "bimodal": bimodal_lengths,
}


def _group_size(per_rank: int) -> int:
    return 8 if per_rank >= 32 else max(1, per_rank // 4)


def _grouped(assign: Callable[[np.ndarray, int], np.ndarray], w: np.ndarray, k: int, g: int) -> np.ndarray:
    groups = np.arange(w.size) // g
    return assign(np.bincount(groups, weights=w), k)[groups]


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - start) * 1e3


def _kvplane_peak(meta: KVBatchMeta, k: int, **kwargs: Any) -> float:
    metas, _ = shard_meta_for_dp(meta, dp_world=k, balance="tokens", **kwargs)
    return float(max(sum(m.sequence_lengths or []) for m in metas))


def _one_trial(lengths: np.ndarray, k: int, per_rank: int) -> dict[str, tuple[float, float]]:
    """``{method: (most-loaded / mean, milliseconds)}`` on one batch."""
    w = lengths.astype(np.float64)
    n = w.size
    g = _group_size(per_rank)
    mean = w.sum() / k
    algorithms: dict[str, Callable[[], np.ndarray]] = {
        "contiguous": lambda: contiguous(n, k),
        "sort_and_stride": lambda: sort_and_stride(w, k),
        "kk_equal_count": lambda: karmarkar_karp(w, k, equal_count=True),
        "lpt": lambda: lpt(w, k),
        "lpt_equal_count": lambda: lpt(w, k, equal_count=True),
        "kk": lambda: karmarkar_karp(w, k),
        "group_kk": lambda: _grouped(karmarkar_karp, w, k, g),
        "group_lpt": lambda: _grouped(lpt, w, k, g),
    }
    out: dict[str, tuple[float, float]] = {}
    for name, fn in algorithms.items():
        assignment, ms = _timed(fn)
        out[name] = (float(rank_loads(assignment, w, k).max()) / mean, ms)
    ids = [f"s{i}" for i in range(n)]
    tags = [{"group_id": i // g} for i in range(n)]
    meta = KVBatchMeta("bench", "train", ids, sequence_lengths=lengths.tolist(), tags=tags)
    for name, kwargs in (
        ("kvplane_balanced", {}),
        ("kvplane_balanced_equal_count", {"equal_count": True}),
        ("kvplane_balanced_groups", {"group_tag": "group_id"}),
    ):
        peak, ms = _timed(lambda kwargs=kwargs: _kvplane_peak(meta, k, **kwargs))
        out[name] = (peak / mean, ms)
    return out


def _cell(distribution: str, per_rank: int, k: int, trials: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    runs = [_one_trial(_GENERATORS[distribution](rng, per_rank * k), k, per_rank) for _ in range(trials)]
    methods = list(runs[0])
    ratios = {m: np.array([r[m][0] for r in runs]) for m in methods}
    best_baseline = np.minimum(*(ratios[b] for b in BASELINES))
    return {
        "distribution": distribution,
        "samples_per_rank": per_rank,
        "dp": k,
        "trials": trials,
        "group_size": _group_size(per_rank),
        "max_over_mean": {
            m: {"mean": round(float(v.mean()), 5), "worst": round(float(v.max()), 5)}
            for m, v in ratios.items()
        },
        "ms_median": {m: round(float(np.median([r[m][1] for r in runs])), 3) for m in methods},
        "balanced_never_worse": bool((ratios["kvplane_balanced"] <= best_baseline * (1 + _EPS)).all()),
        "balanced_equal_count_never_worse": bool(
            (ratios["kvplane_balanced_equal_count"] <= best_baseline * (1 + _EPS)).all()
        ),
    }


def _shard_timing(repeats: int) -> dict[str, Any]:
    lengths = lognormal_lengths(np.random.default_rng(4096), 4096).tolist()
    tags = [{"group_id": i // 8} for i in range(4096)]
    meta = KVBatchMeta("bench", "train", [f"s{i}" for i in range(4096)], sequence_lengths=lengths, tags=tags)
    cases: dict[str, dict[str, Any]] = {
        "nemo_contiguous": {},
        "nemo_dynamic_batching": {"dynamic_batching_args": {"max_tokens_per_microbatch": 16384}},
        "balanced_tokens": {"balance": "tokens"},
        "balanced_tokens_equal_count": {"balance": "tokens", "equal_count": True},
        "balanced_tokens_groups": {"balance": "tokens", "group_tag": "group_id"},
        "balanced_flops": {"balance": "flops"},
        "balanced_dynamic_batching": {
            "balance": "tokens",
            "dynamic_batching_args": {"max_tokens_per_microbatch": 16384},
        },
    }
    out = {
        name: measure(lambda kw=kw: shard_meta_for_dp(meta, dp_world=64, **kw), repeats=repeats, warmup=1)
        for name, kw in cases.items()
    }
    w = np.asarray(lengths, dtype=np.float64)
    out["kk_alone"] = measure(lambda: karmarkar_karp(w, 64), repeats=repeats, warmup=1)
    return out


def _packing_comparison(algorithms: tuple[str, ...]) -> dict[str, Any]:
    """NeMo-RL packing vs balanced packing: padded-token max/mean and micro-batches per rank."""
    lengths = lognormal_lengths(np.random.default_rng(8192), 4096)
    meta = KVBatchMeta("bench", "train", [f"s{i}" for i in range(4096)], sequence_lengths=lengths.tolist())
    out: dict[str, Any] = {}
    for algorithm in algorithms:
        args = {
            "algorithm": algorithm,
            "max_tokens_per_microbatch": 16384,
            "sequence_length_pad_multiple": 64,
        }
        out[algorithm] = {}
        for label, balance in (("nemo", None), ("balanced", "tokens")):
            (metas, _), ms = _timed(
                lambda b=balance, a=args: shard_meta_for_dp(
                    meta, dp_world=64, sequence_packing_args=a, balance=b
                )
            )
            loads = [sum(-(-n // 64) * 64 for n in m.sequence_lengths or []) for m in metas]
            out[algorithm][label] = {
                "max_over_mean": round(max(loads) / (sum(loads) / len(loads)), 5),
                "micro_batches_per_rank": len(metas[0].extra_info["micro_batch_indices"][0]),
                "ms": round(ms, 3),
            }
    return out


def _targets(cells: list[dict[str, Any]], timing: dict[str, Any]) -> dict[str, Any]:
    def worst(pred: Callable[[dict[str, Any]], bool]) -> float | None:
        values = [c["max_over_mean"]["kvplane_balanced"]["worst"] for c in cells if pred(c)]
        return max(values) if values else None

    many = worst(lambda c: c["distribution"] == "lognormal" and c["samples_per_rank"] >= 64)
    few = worst(lambda c: c["distribution"] == "lognormal" and c["samples_per_rank"] == 8)
    shard_ms = timing["balanced_tokens"]["median"] * 1e3
    return {
        "lognormal_ge64_per_rank_worst_max_over_mean": many,
        "lognormal_ge64_per_rank_le_1.01": many is not None and many <= 1.01,
        "lognormal_8_per_rank_worst_max_over_mean": few,
        "lognormal_8_per_rank_le_1.05": few is not None and few <= 1.05,
        "never_worse_than_sort_and_stride_or_kk_equal_count": all(c["balanced_never_worse"] for c in cells),
        "equal_count_never_worse_than_sort_and_stride_or_kk_equal_count": all(
            c["balanced_equal_count_never_worse"] for c in cells
        ),
        "shard_4096_over_64_ms": round(shard_ms, 3),
        "shard_4096_over_64_le_50ms": shard_ms <= 50.0,
    }


def run(*, quick: bool = False) -> dict[str, Any]:
    """Run the balance suite; ``quick`` uses DP 2 and 8, 8 and 64 samples per rank and 3 trials."""
    per_rank_sizes = (8, 64) if quick else (8, 64, 512)
    dp_sizes = (2, 8) if quick else (2, 8, 64)
    cells = []
    seed = 0
    for distribution in DISTRIBUTIONS:
        for per_rank in per_rank_sizes:
            for k in dp_sizes:
                # Fewer trials for the largest batches keep the full run around a minute.
                trials = 3 if quick else max(5, min(20, 100_000 // (per_rank * k)))
                cells.append(_cell(distribution, per_rank, k, trials, seed))
                seed += 1
    timing = _shard_timing(repeats=3 if quick else 20)
    packers = ("modified_first_fit_decreasing",) if quick else PACKING_ALGORITHMS
    return {
        "setup": {
            "metric": "most-loaded rank tokens / mean rank tokens (1.0 = perfect)",
            "distributions": {
                "lognormal": "median 1500, sigma 0.9, clipped to 32..8192",
                "bimodal": "70% uniform 100..800, 30% uniform 4000..8192",
            },
            "samples_per_rank": list(per_rank_sizes),
            "dp": list(dp_sizes),
            "quick": quick,
        },
        "cells": cells,
        "shard_4096_over_64": timing,
        "packing_4096_over_64": _packing_comparison(packers),
        "targets": _targets(cells, timing),
    }
