"""Which data-parallel rank this process is: explicit, or from ``torch.distributed``.

Mirrors :class:`torch.utils.data.DistributedSampler`: ``dp_rank``/``dp_world`` default to
``torch.distributed``'s rank and world size when a process group is initialised, and to rank 0 of 1
otherwise. With tensor or pipeline parallelism the data-parallel group is smaller than the world:
pass ``dp_rank``/``dp_world`` explicitly then.

Examples:
    >>> from loaders._ranks import resolve_dp
    >>> resolve_dp(1, 2)
    (1, 2)
    >>> resolve_dp(None, None)          # no process group: a single rank
    (0, 1)
    >>> resolve_dp(2, 2)
    Traceback (most recent call last):
    ...
    kvplane._errors.DataPlaneBadRequest: Invalid rank 2, rank should be in the interval [0, 1]
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

from kvplane import DataPlaneBadRequest

__all__ = ["resolve_dp"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def resolve_dp(dp_rank: int | None, dp_world: int | None) -> tuple[int, int]:
    """``(dp_rank, dp_world)``, defaulted from ``torch.distributed`` and validated.

    Raises:
        DataPlaneBadRequest: ``dp_world`` is not a positive integer, or ``dp_rank`` is not in
            ``[0, dp_world - 1]`` (DistributedSampler's message).
    """
    distributed = dist.is_available() and dist.is_initialized()
    if dp_world is None:
        dp_world = dist.get_world_size() if distributed else 1
    if dp_rank is None:
        dp_rank = dist.get_rank() if distributed else 0
    if not _is_int(dp_world) or dp_world < 1:
        raise DataPlaneBadRequest(f"dp_world must be a positive integer, got {dp_world!r}")
    if not _is_int(dp_rank) or not 0 <= dp_rank < dp_world:
        raise DataPlaneBadRequest(
            f"Invalid rank {dp_rank}, rank should be in the interval [0, {dp_world - 1}]"
        )
    return dp_rank, dp_world
