"""Validation of :func:`~kvplane.balancing.shard_meta_for_dp`'s arguments into one checked request.

Every bad argument raises :class:`~kvplane._errors.DataPlaneBadRequest` naming it, before any work is
done (NeMo-RL raises ``AssertionError``/``ZeroDivisionError`` for several of these).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np

from kvplane._errors import DataPlaneBadRequest
from kvplane._meta import KVBatchMeta
from kvplane.balancing._packers import PACKING_ALGORITHMS

__all__ = ["DEFAULT_FLOPS_COEFF", "DynamicBatching", "SequencePacking", "ShardRequest", "parse_request"]

#: ``a`` in the FLOPs weight ``a·L + L²``: ``6 × hidden size`` for a hidden size of 4096 (a 7B-class
#: model). Per layer and token, the dense matmuls cost ~24·d² FLOPs and attention ~4·d·L; dividing by
#: ``4·d`` gives ``6·d·L + L²`` per sequence. verl uses the same value.
DEFAULT_FLOPS_COEFF = 24576.0

_BALANCE_MODES = (None, "tokens", "flops")
_MICROBATCH_ORDERS = (None, "packer", "largest_first")
_PACKING_KEYS = {
    "algorithm",
    "max_tokens_per_microbatch",
    "sequence_length_pad_multiple",
    "microbatch_order",
    "seed",
    "input_key",
    "input_lengths_key",
}
_DYNAMIC_KEYS = {"max_tokens_per_microbatch", "sequence_length_round", "input_key", "input_lengths_key"}


@dataclass(frozen=True)
class SequencePacking:
    """Checked ``sequence_packing_args``."""

    algorithm: str
    capacity: int
    pad_multiple: int
    largest_first: bool
    seed: int


@dataclass(frozen=True)
class DynamicBatching:
    """Checked ``dynamic_batching_args``."""

    max_tokens: int
    round_to: int


@dataclass(frozen=True)
class ShardRequest:
    """Everything :func:`shard_meta_for_dp` needs, validated.

    ``lengths`` are the raw sequence lengths; ``costed`` are the lengths the token cap and the
    balance weights apply to (padded to ``sequence_length_pad_multiple`` when packing, else raw);
    ``group_codes`` number the groups of ``group_tag`` in order of first appearance.
    """

    meta: KVBatchMeta
    dp_world: int
    batch_size: int
    lengths: np.ndarray
    costed: np.ndarray
    packing: SequencePacking | None
    dynamic: DynamicBatching | None
    balance: str | None
    equal_count: bool
    group_tag: str | None
    group_codes: np.ndarray | None
    flops_coeff: float

    @property
    def num_chunks(self) -> int:
        return self.lengths.size // self.batch_size

    def weights(self, lo: int, hi: int) -> np.ndarray:
        """The balance weight of rows ``[lo, hi)``: tokens, or ``a·L + L²`` for ``balance="flops"``."""
        length = self.costed[lo:hi].astype(np.float64)
        return self.flops_coeff * length + length * length if self.balance == "flops" else length


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise DataPlaneBadRequest(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_keys(args: Any, allowed: set[str], name: str) -> Mapping[str, Any]:
    if not isinstance(args, Mapping):
        raise DataPlaneBadRequest(f"{name} must be a dict, got {type(args).__name__}")
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise DataPlaneBadRequest(f"{name}: unknown keys {unknown}; allowed: {sorted(allowed)}")
    return args


def _parse_packing(args: Any) -> SequencePacking:
    args = _check_keys(args, _PACKING_KEYS, "sequence_packing_args")
    algorithm = args.get("algorithm")
    if not isinstance(algorithm, str) or algorithm.lower() not in PACKING_ALGORITHMS:
        raise DataPlaneBadRequest(
            f"sequence_packing_args['algorithm'] must be one of {list(PACKING_ALGORITHMS)}, got {algorithm!r}"
        )
    if "max_tokens_per_microbatch" not in args:
        raise DataPlaneBadRequest("sequence_packing_args needs 'max_tokens_per_microbatch'")
    order = args.get("microbatch_order")
    if order not in _MICROBATCH_ORDERS:
        raise DataPlaneBadRequest(
            f"sequence_packing_args['microbatch_order'] must be one of {list(_MICROBATCH_ORDERS)}, "
            f"got {order!r}"
        )
    seed = args.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, Integral):
        raise DataPlaneBadRequest(f"sequence_packing_args['seed'] must be an integer, got {seed!r}")
    return SequencePacking(
        algorithm=algorithm.lower(),
        capacity=_positive_int(args["max_tokens_per_microbatch"], "max_tokens_per_microbatch"),
        pad_multiple=_positive_int(
            args.get("sequence_length_pad_multiple", 1), "sequence_length_pad_multiple"
        ),
        largest_first=order == "largest_first",
        seed=int(seed),
    )


def _parse_dynamic(args: Any) -> DynamicBatching:
    args = _check_keys(args, _DYNAMIC_KEYS, "dynamic_batching_args")
    if "max_tokens_per_microbatch" not in args:
        raise DataPlaneBadRequest("dynamic_batching_args needs 'max_tokens_per_microbatch'")
    return DynamicBatching(
        max_tokens=_positive_int(args["max_tokens_per_microbatch"], "max_tokens_per_microbatch"),
        round_to=_positive_int(args.get("sequence_length_round", 1), "sequence_length_round"),
    )


def _parse_lengths(meta: KVBatchMeta) -> np.ndarray:
    n = meta.size
    if meta.sequence_lengths is None or len(meta.sequence_lengths) != n:
        got = None if meta.sequence_lengths is None else f"{len(meta.sequence_lengths)} lengths"
        raise DataPlaneBadRequest(
            f"shard_meta_for_dp requires meta.sequence_lengths with one length per sample ({n}), got {got}"
        )
    lengths = np.asarray(meta.sequence_lengths)
    if lengths.ndim != 1 or lengths.dtype.kind not in "iu":
        raise DataPlaneBadRequest(f"meta.sequence_lengths must be integers, got dtype {lengths.dtype}")
    if lengths.min() < 0:
        raise DataPlaneBadRequest(f"meta.sequence_lengths must be >= 0, got {int(lengths.min())}")
    return lengths.astype(np.int64)


def _parse_groups(meta: KVBatchMeta, group_tag: Any, batch_size: int) -> np.ndarray:
    if not isinstance(group_tag, str) or not group_tag:
        raise DataPlaneBadRequest(f"group_tag must be a non-empty string, got {group_tag!r}")
    if meta.tags is None:
        raise DataPlaneBadRequest(f"group_tag={group_tag!r} needs meta.tags, and the meta has none")
    codes: dict[Any, int] = {}
    out = np.empty(meta.size, dtype=np.int64)
    for i, tags in enumerate(meta.tags):
        if group_tag not in tags:
            raise DataPlaneBadRequest(f"sample {meta.sample_ids[i]!r} has no {group_tag!r} tag")
        try:
            out[i] = codes.setdefault(tags[group_tag], len(codes))
        except TypeError as err:
            raise DataPlaneBadRequest(
                f"tag {group_tag!r} of sample {meta.sample_ids[i]!r} is unhashable"
            ) from err
    chunk = np.arange(meta.size) // batch_size
    first = np.full(len(codes), np.iinfo(np.int64).max)
    last = np.full(len(codes), -1)
    np.minimum.at(first, out, chunk)
    np.maximum.at(last, out, chunk)
    crossing = np.flatnonzero(first != last)
    if crossing.size:
        value = next(v for v, c in codes.items() if c == crossing[0])
        raise DataPlaneBadRequest(
            f"group {value!r} spans more than one batch of batch_size={batch_size}; "
            "a group must lie within one global batch"
        )
    return out


def parse_request(
    meta: Any,
    *,
    dp_world: Any,
    batch_size: Any,
    sequence_packing_args: Any,
    dynamic_batching_args: Any,
    balance: Any,
    equal_count: Any,
    group_tag: Any,
    flops_coeff: Any,
) -> ShardRequest:
    """Check every argument of :func:`shard_meta_for_dp` and return the request it describes."""
    if not isinstance(meta, KVBatchMeta):
        raise DataPlaneBadRequest(f"meta must be a KVBatchMeta, got {type(meta).__name__}")
    k = _positive_int(dp_world, "dp_world")
    n = meta.size
    if n == 0:
        raise DataPlaneBadRequest("shard_meta_for_dp: empty meta, nothing to shard")
    lengths = _parse_lengths(meta)
    if sequence_packing_args is not None and dynamic_batching_args is not None:
        raise DataPlaneBadRequest("Pass at most one of sequence_packing_args / dynamic_batching_args")
    batch = n if batch_size is None else _positive_int(batch_size, "batch_size")
    if n % batch:
        raise DataPlaneBadRequest(
            f"the meta's {n} samples are not a whole number of batch_size={batch} batches"
        )
    if batch % k:
        raise DataPlaneBadRequest(f"batch_size={batch} is not a multiple of dp_world={k}")
    if balance not in _BALANCE_MODES:
        raise DataPlaneBadRequest(f"balance must be one of {list(_BALANCE_MODES)}, got {balance!r}")
    if not isinstance(equal_count, bool):
        raise DataPlaneBadRequest(f"equal_count must be a bool, got {equal_count!r}")
    if balance is None and (equal_count or group_tag is not None):
        raise DataPlaneBadRequest(
            "equal_count and group_tag choose a balanced mode: pass balance='tokens' or 'flops'"
        )
    if flops_coeff is not None and balance != "flops":
        raise DataPlaneBadRequest("flops_coeff applies only to balance='flops'")
    coeff = DEFAULT_FLOPS_COEFF if flops_coeff is None else flops_coeff
    if isinstance(coeff, bool) or not isinstance(coeff, Real) or not math.isfinite(coeff) or coeff < 0:
        raise DataPlaneBadRequest(f"flops_coeff must be a finite number >= 0, got {flops_coeff!r}")
    packing = None if sequence_packing_args is None else _parse_packing(sequence_packing_args)
    dynamic = None if dynamic_batching_args is None else _parse_dynamic(dynamic_batching_args)
    costed = lengths
    if packing is not None:
        pad = packing.pad_multiple
        costed = -(-lengths // pad) * pad
        if int(costed.max()) > packing.capacity:
            raise DataPlaneBadRequest(
                f"Sequence length {int(costed.max())} exceeds bin capacity {packing.capacity}"
            )
        if packing.algorithm == "modified_first_fit_decreasing" and int(lengths.min()) < 1:
            raise DataPlaneBadRequest("modified_first_fit_decreasing needs sequence lengths >= 1")
    codes = None if group_tag is None else _parse_groups(meta, group_tag, batch)
    return ShardRequest(
        meta=meta,
        dp_world=k,
        batch_size=batch,
        lengths=lengths,
        costed=costed,
        packing=packing,
        dynamic=dynamic,
        balance=balance,
        equal_count=equal_count,
        group_tag=group_tag,
        group_codes=codes,
        flops_coeff=float(coeff),
    )
