"""Micro-batch plans in NeMo-RL's ``extra_info`` structures, for one global batch (chunk).

- :func:`bin_plan`: a rank's packed bins → ``[start, end)`` ranges over its rows and each bin's
  padded token sum (``micro_batch_indices[chunk]`` / ``micro_batch_lengths[chunk]``).
- :func:`dynamic_plan`: NeMo-RL's dynamic-batching plan, shared by all ranks: walk row positions,
  a micro-batch grows while ``rows × max padded length <= max_tokens``.

Examples:
    >>> import numpy as np
    >>> from kvplane.balancing._plans import bin_plan, dynamic_plan
    >>> bin_plan([[2, 0], [1]], np.array([10, 20, 30]))
    ([[0, 2], [2, 3]], [40, 20])
    >>> dynamic_plan(np.array([[361, 499, 876, 1204], [487, 678, 927, 1445]]), max_tokens=4096, round_to=64)
    ([[0, 3], [3, 4]], [960, 1472])
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

__all__ = ["bin_plan", "dynamic_plan"]

logger = logging.getLogger(__name__)


def bin_plan(bins: Sequence[Sequence[int]], costed: np.ndarray) -> tuple[list[list[int]], list[int]]:
    """Consecutive ``[start, end)`` ranges, one per bin, and each bin's summed ``costed`` length."""
    ranges: list[list[int]] = []
    sums: list[int] = []
    start = 0
    for members in bins:
        ranges.append([start, start + len(members)])
        sums.append(int(costed[list(members)].sum()))
        start += len(members)
    return ranges, sums


def dynamic_plan(
    rank_lengths: np.ndarray, *, max_tokens: int, round_to: int
) -> tuple[list[list[int]], list[int]]:
    """NeMo-RL's dynamic-batching plan over positions ``0..S-1`` of a ``[ranks, S]`` length matrix.

    Position ``k``'s length is the largest ``k``-th length over ranks, rounded up to ``round_to``.
    A micro-batch ``[start, end)`` grows while ``(end - start) × its max length <= max_tokens``; its
    reported length is that max. A position whose rounded length alone exceeds ``max_tokens`` gets
    a micro-batch of its own with its true length (NeMo-RL clamps it to ``max_tokens``, which
    silently truncates the sample).
    """
    peak = rank_lengths.max(axis=0)
    padded = (-(-peak // round_to) * round_to).tolist()
    ranges: list[list[int]] = []
    sizes: list[int] = []
    top = 0
    for pos, length in enumerate(padded):
        if length > max_tokens:
            logger.warning(
                "dynamic batching: a sample of padded length %d exceeds max_tokens_per_microbatch=%d; "
                "it gets a micro-batch of its own",
                length,
                max_tokens,
            )
        grown = max(top, length)
        if ranges and (pos + 1 - ranges[-1][0]) * grown <= max_tokens:
            ranges[-1][1] = pos + 1
            sizes[-1] = top = grown
        else:
            ranges.append([pos, pos + 1])
            sizes.append(length)
            top = length
    return ranges, [int(s) for s in sizes]
