"""Which data-parallel rank and which replica this process is: explicit, or from ``torch.distributed``.

``dp_rank``/``dp_world`` place the process's data-parallel group: all processes with the same
``dp_rank`` receive identical samples (as in TransferQueue's ``StreamingDataset``), and each
``dp_rank`` gets its own shard of every step. ``replica_rank``/``replica_world`` place it among the
processes sharing its ``dp_rank`` (tensor/pipeline-parallel peers); with TransferQueue's arguments
and no replica arguments, replicas take seats instead (the first to start leads). Defaults mirror
:class:`torch.utils.data.DistributedSampler`: ``dp_group`` and ``replica_group`` give the numbers;
without groups, ``dp_rank``/``dp_world`` are ``torch.distributed``'s rank and world size when it is
initialised and there are no replicas, else 0 of 1, and replicas are 0 of 1. With replicas and
``torch.distributed`` initialised, pass ``dp_rank``/``dp_world`` or ``dp_group``.

Design: docs/internals.md#loaders_rankspy--ranks-and-replicas

Examples:
    >>> from loaders._ranks import resolve_dp, resolve_topology
    >>> resolve_dp(1, 2)
    (1, 2)
    >>> resolve_dp(None, None)          # no process group: a single rank
    (0, 1)
    >>> resolve_dp(2, 2)
    Traceback (most recent call last):
    ...
    kvplane._errors.DataPlaneBadRequest: Invalid rank 2, rank should be in the interval [0, 1]
    >>> resolve_topology(1, 2, replica_rank=1, replica_world=2)
    Topology(dp_rank=1, dp_world=2, replica_rank=1, replica_world=2, replica_group=None)
    >>> resolve_topology(3, None, per_rank=True)    # TransferQueue's way: no dp_world, seats
    Topology(dp_rank=3, dp_world=None, replica_rank=0, replica_world=None, replica_group=None)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from kvplane import DataPlaneBadRequest

__all__ = ["Topology", "resolve_dp", "resolve_topology"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def resolve_dp(dp_rank: int | None, dp_world: int | None) -> tuple[int, int]:
    """``(dp_rank, dp_world)``, defaulted from ``torch.distributed`` and validated.

    Raises:
        DataPlaneBadRequest: ``dp_world`` is not a positive integer, or ``dp_rank`` is not in
            ``[0, dp_world - 1]`` (DistributedSampler's message).
    """
    distributed = _distributed()
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


@dataclass(frozen=True)
class Topology:
    """Where this process sits: its DP rank (``dp_world`` ``None``: TransferQueue's per-rank batches)
    and its replica rank; ``replica_group`` is set for the broadcast mode."""

    dp_rank: int
    dp_world: int | None
    replica_rank: int = 0
    replica_world: int | None = 1  # None: seats, taken in order of arrival
    replica_group: Any = None


def _from_group(group: Any, rank: int | None, world: int | None, what: str) -> tuple[int | None, int | None]:
    if group is None:
        return rank, world
    if not _distributed():
        raise DataPlaneBadRequest(f"{what}_group needs an initialised torch.distributed process group")
    g_rank, g_world = dist.get_rank(group), dist.get_world_size(group)
    if g_rank < 0:
        raise DataPlaneBadRequest(f"this process is not a member of {what}_group")
    for name, given, actual in ((f"{what}_rank", rank, g_rank), (f"{what}_world", world, g_world)):
        if given is not None and given != actual:
            raise DataPlaneBadRequest(f"{name}={given!r} disagrees with {what}_group, where it is {actual}")
    return g_rank, g_world


def resolve_topology(
    dp_rank: int | None,
    dp_world: int | None,
    *,
    dp_group: Any = None,
    replica_rank: int | None = None,
    replica_world: int | None = None,
    replica_group: Any = None,
    per_rank: bool = False,
) -> Topology:
    """This process's :class:`Topology` (see the module docstring for the defaults).

    With ``per_rank`` (TransferQueue's ``StreamingDataset``: each ``dp_rank`` claims its own batches)
    there is no ``dp_world``: only ``dp_rank >= 0`` is checked.

    Raises:
        DataPlaneBadRequest: A value out of range, a group this process is not in, an explicit value
            that disagrees with its group, or replicas under ``torch.distributed`` without a DP rank.
    """
    seats = per_rank and replica_rank is None and replica_world is None and replica_group is None
    replica_rank, replica_world = _from_group(replica_group, replica_rank, replica_world, "replica")
    replica_world = 1 if replica_world is None else replica_world
    replica_rank = 0 if replica_rank is None else replica_rank
    if not _is_int(replica_world) or replica_world < 1:
        raise DataPlaneBadRequest(f"replica_world must be a positive integer, got {replica_world!r}")
    if not _is_int(replica_rank) or not 0 <= replica_rank < replica_world:
        raise DataPlaneBadRequest(
            f"Invalid replica_rank {replica_rank!r}, it should be in the interval [0, {replica_world - 1}]"
        )
    dp_rank, dp_world = _from_group(dp_group, dp_rank, dp_world, "dp")
    if per_rank:
        if dp_world is not None:
            raise DataPlaneBadRequest(
                "dp_world does not apply to TransferQueue-style datasets (data_fields=): there each "
                "dp_rank claims batch_size samples of its own; use fields= for one global batch split "
                "over dp_world ranks"
            )
        dp_rank = (
            (dist.get_rank() if _distributed() and replica_world == 1 else 0) if dp_rank is None else dp_rank
        )
        if not _is_int(dp_rank) or dp_rank < 0:
            raise DataPlaneBadRequest(f"dp_rank {dp_rank!r} must be an integer >= 0")
        return Topology(dp_rank, None, replica_rank, None if seats else replica_world, replica_group)
    if replica_world > 1 and _distributed() and (dp_rank is None or dp_world is None):
        raise DataPlaneBadRequest(
            "with replicas (replica_world > 1) under torch.distributed, pass dp_rank and dp_world "
            "(or dp_group): the global rank is not the data-parallel rank"
        )
    dp_rank, dp_world = resolve_dp(dp_rank, dp_world)
    return Topology(dp_rank, dp_world, replica_rank, replica_world, replica_group)
