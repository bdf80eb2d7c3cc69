"""``shard_meta_for_dp``: split a claimed batch's metadata over the data-parallel ranks (no I/O)."""

from __future__ import annotations

from typing import Any

from kvplane._meta import KVBatchMeta
from kvplane.balancing import _split as split
from kvplane.balancing._request import parse_request

__all__ = ["PLAN_KEYS", "shard_meta_for_dp"]

#: The ``extra_info`` keys of a micro-batch plan (NeMo-RL's names). Stale copies on the input meta
#: are dropped from every rank's meta: they described another layout.
PLAN_KEYS = ("micro_batch_indices", "micro_batch_lengths", "elem_counts_per_gb")


def shard_meta_for_dp(
    meta: KVBatchMeta,
    *,
    dp_world: int,
    batch_size: int | None = None,
    sequence_packing_args: dict[str, Any] | None = None,
    dynamic_batching_args: dict[str, Any] | None = None,
    balance: str | None = None,
    equal_count: bool = False,
    group_tag: str | None = None,
    flops_coeff: float | None = None,
) -> tuple[list[KVBatchMeta], list[int] | None]:
    """Split ``meta`` into one :class:`KVBatchMeta` per DP rank; pure metadata, deterministic.

    The batch is cut into global batches (chunks) of ``batch_size`` rows (``None`` = all rows), and
    each chunk is split over the ranks; rank ``r``'s meta holds its rows of every chunk, chunk after
    chunk. Rows keep their sample id, length and tags (via :meth:`KVBatchMeta.subset`);
    ``partition_id``, ``task_name``, ``fields`` and the rest of ``extra_info`` are copied.

    Args:
        meta: The batch; ``sequence_lengths`` must hold one integer length per sample.
        dp_world: Number of data-parallel ranks.
        batch_size: Rows per global batch; a multiple of ``dp_world`` dividing ``meta.size``.
        sequence_packing_args: NeMo-RL's packing dict: ``algorithm``, ``max_tokens_per_microbatch``,
            optional ``sequence_length_pad_multiple`` (default 1), ``microbatch_order`` (``None``,
            ``"packer"``, ``"largest_first"``), ``seed`` (for ``first_fit_shuffle``, default 0);
            ``input_key``/``input_lengths_key`` are accepted and ignored.
        dynamic_batching_args: NeMo-RL's dynamic-batching dict: ``max_tokens_per_microbatch``,
            optional ``sequence_length_round`` (default 1); ``input_key``/``input_lengths_key``
            are accepted and ignored.
        balance: ``None`` (NeMo-RL's split), ``"tokens"`` or ``"flops"`` (weight ``a·L + L²``).
        equal_count: Balanced mode keeps the same number of samples on every rank.
        group_tag: Balanced mode keeps the rows sharing this tag's value on one rank.
        flops_coeff: ``a`` for ``balance="flops"`` (default
            :data:`~kvplane.balancing._request.DEFAULT_FLOPS_COEFF`).

    Returns:
        ``(metas, permutation)``: ``dp_world`` metas, and the forward permutation ``flat`` with
        ``flat[j]`` the original index of row ``j`` of the rank-order concatenation, or ``None``
        when that is the identity (no row moved, as in NeMo-RL's contiguous mode; NeMo-RL's
        convention). Rank-ordered results ``A`` go back to input order with ``A[argsort(flat)]``,
        by scattering ``out[flat] = A``, or with NeMo-RL's ``BatchedDataDict.reorder_data(flat)``.

    Raises:
        DataPlaneBadRequest: Any bad argument or impossible combination (see the package docs).
    """
    req = parse_request(
        meta,
        dp_world=dp_world,
        batch_size=batch_size,
        sequence_packing_args=sequence_packing_args,
        dynamic_batching_args=dynamic_batching_args,
        balance=balance,
        equal_count=equal_count,
        group_tag=group_tag,
        flops_coeff=flops_coeff,
    )
    k = req.dp_world
    rows: list[list[int]] = [[] for _ in range(k)]
    ranges: list[list[Any]] = [[] for _ in range(k)]
    sizes: list[list[Any]] = [[] for _ in range(k)]
    counts: list[list[int]] = [[] for _ in range(k)]
    planned = counted = False
    for chunk in range(req.num_chunks):
        lo = chunk * req.batch_size
        if req.packing is not None:
            cut = (split.nemo_packed if balance is None else split.balanced_packed)(req, req.packing, lo)
        elif req.dynamic is not None:
            cut = (split.nemo_dynamic if balance is None else split.balanced_dynamic)(req, req.dynamic, lo)
        elif balance is None:
            cut = split.nemo_contiguous(req)
        else:
            cut = split.balanced_plain(req, lo)
        for r in range(k):
            rows[r] += [lo + i for i in cut.rows[r]]
            counts[r].append(len(cut.rows[r]))
            if cut.ranges is not None and cut.sizes is not None:
                ranges[r].append(cut.ranges[r])
                sizes[r].append(cut.sizes[r])
        planned = cut.ranges is not None
        counted = cut.counted
    metas = []
    for r in range(k):
        shard = meta.subset(rows[r])
        for key in PLAN_KEYS:
            shard.extra_info.pop(key, None)
        if planned:
            shard.extra_info["micro_batch_indices"] = ranges[r]
            shard.extra_info["micro_batch_lengths"] = sizes[r]
        if counted:
            shard.extra_info["elem_counts_per_gb"] = counts[r]
        metas.append(shard)
    flat = [i for rank_rows in rows for i in rank_rows]
    return metas, None if flat == list(range(len(flat))) else flat
