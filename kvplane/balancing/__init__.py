"""Balancing: split a batch's metadata over data-parallel ranks with :func:`shard_meta_for_dp`.

Pure metadata, no I/O, deterministic (every process computing the same split gets the same answer).
The batch is cut into global batches of ``batch_size`` rows; each is split over ``dp_world`` ranks.
``balance=None`` gives NeMo-RL's three modes (contiguous, dynamic batching, sequence packing; same
``extra_info`` keys and structures); ``balance="tokens"`` or ``"flops"`` minimises the most-loaded
rank's load (``equal_count=True`` keeps sample counts equal, ``group_tag`` keeps groups on one rank).
Every rank gets the same number of micro-batches per global batch. The second return value is the
forward permutation (rank-order concatenation → original index), or ``None`` when no row moved. Tags
travel with their rows; bad arguments raise :class:`~kvplane._errors.DataPlaneBadRequest`.

Design: docs/internals.md#kvplanebalancing__init__py--splitting-a-batch-over-ranks

Examples:
    >>> from kvplane import KVBatchMeta, shard_meta_for_dp
    >>> lengths = [1204, 499, 1445, 876, 361, 487, 927, 678]
    >>> meta = KVBatchMeta("train", "actor", [f"k{i}" for i in range(8)], sequence_lengths=lengths)
    >>> metas, perm = shard_meta_for_dp(meta, dp_world=2)                 # NeMo-RL contiguous
    >>> [m.sample_ids for m in metas], perm
    ([['k0', 'k1', 'k2', 'k3'], ['k4', 'k5', 'k6', 'k7']], None)
    >>> [sum(m.sequence_lengths) for m in metas]                         # unbalanced
    [4024, 2453]
    >>> metas, perm = shard_meta_for_dp(meta, dp_world=2, balance="tokens")
    >>> [sum(m.sequence_lengths) for m in metas], perm
    ([3245, 3232], [0, 3, 5, 7, 1, 2, 4, 6])
    >>> metas[0].extra_info
    {'micro_batch_indices': [[[0, 4]]], 'micro_batch_lengths': [[3245]], 'elem_counts_per_gb': [4]}
    >>> packing = {"algorithm": "modified_first_fit_decreasing", "max_tokens_per_microbatch": 4096}
    >>> metas, perm = shard_meta_for_dp(meta, dp_world=2, sequence_packing_args=packing)
    >>> perm, metas[1].extra_info["micro_batch_lengths"]                # NeMo-RL packing
    ([3, 7, 1, 5, 4, 2, 0, 6], [[3576]])
"""

from kvplane.balancing._shard import shard_meta_for_dp

__all__ = ["shard_meta_for_dp"]
