"""Balancing: split a batch's metadata over data-parallel ranks with :func:`shard_meta_for_dp`.

Pure metadata, no I/O, deterministic (every process computing the same split gets the same answer).
The batch is cut into global batches of ``batch_size`` rows; each is split over ``dp_world`` ranks.

NeMo-RL's three modes (``balance=None``; same ``extra_info`` keys and structures as NeMo-RL):

- *contiguous* (no packing arguments): rank ``r`` gets rows ``[r·S, (r+1)·S)`` of every global batch,
  ``S = batch_size / dp_world``; no plan keys.
- *dynamic batching* (``dynamic_batching_args``): rows sorted by length and dealt round-robin; one
  plan shared by every rank: ``micro_batch_indices[batch] = [[start, end], ...]`` (positions in the
  rank's slice) and ``micro_batch_lengths[batch] = [padded max length, ...]``.
- *sequence packing* (``sequence_packing_args``): each global batch packed into bins of at most
  ``max_tokens_per_microbatch`` padded tokens (``concatenative``, ``first_fit_decreasing``,
  ``first_fit_shuffle`` or ``modified_first_fit_decreasing``), bin count raised to a multiple of
  ``dp_world``, bins dealt round-robin. Per rank: ``micro_batch_indices[batch] = [[start, end], ...]``,
  ``micro_batch_lengths[batch] = [padded token sum, ...]``, ``elem_counts_per_gb[batch] = rows``.
  Row counts may differ between ranks; micro-batch counts never do.

Balanced mode (``balance="tokens"`` or ``"flops"``, weight ``a·L + L²`` with ``a = flops_coeff``):
each global batch goes to the partition with the lightest most-loaded rank among Karmarkar–Karp,
LPT, their equal-count variants, sort-and-stride and contiguous (so it is never worse than any of
them), then polished by swapping items off the most-loaded rank. ``equal_count=True`` keeps the
number of samples per rank equal; ``group_tag="group_id"`` balances whole groups (rows sharing the
tag's value stay on one rank; a group may not span two global batches). Every rank gets the same
number of micro-batches per global batch:

- without packing arguments: one micro-batch per rank and global batch, in the packing structure
  (``micro_batch_indices``, ``micro_batch_lengths`` = token sums, ``elem_counts_per_gb``), so ranks
  with different row counts still know where each global batch starts;
- with dynamic batching: equal-count balancing (the shared plan walks row positions), each rank's
  rows sorted by length;
- with packing: balanced rows packed per rank and bins split until all ranks have as many, or
  NeMo-RL's bins dealt to ranks by balanced equal-count partitioning, whichever is lighter.

The second return value is the forward permutation (rank-order concatenation → original index), or
``None`` when no row moved (NeMo-RL's convention: its contiguous mode always gives ``None``). Tags travel with their rows. Bad arguments raise
:class:`~kvplane._errors.DataPlaneBadRequest`.

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
