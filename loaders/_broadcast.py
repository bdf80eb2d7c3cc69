"""Replica groups by broadcast: one process of a ``replica_group`` reads, the others receive.

NeMo-RL's leader broadcast: the group's rank 0 (the *source*) iterates the stream like any rank and
sends each micro-batch to the other members with ``torch.distributed.broadcast_object_list``; the
others never touch the data plane (one read per group instead of one per replica). Every member
must iterate in step (it is a collective): the same number of ``next()`` calls, as any
tensor-parallel group of a training loop does. The end of the stream and a failure of the source
are sent too, so the receivers stop (or raise :class:`~kvplane.DataPlaneError`) with it. A
receiver that asks for more after its source stopped early waits for the process group's own
timeout (``torch.distributed``'s, 30 minutes by default): make every member stop together.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch.distributed as dist

from kvplane import DataPlaneError

__all__ = ["receive", "send", "source_rank"]

_ITEM, _END, _ERROR = "item", "end", "error"


def source_rank(group: Any) -> int:
    """The global rank of the group's rank 0, the member that reads and sends."""
    return dist.get_global_rank(group, 0)


def _broadcast(message: tuple[str, Any] | None, group: Any) -> tuple[str, Any]:
    box = [message]
    dist.broadcast_object_list(box, src=source_rank(group), group=group)
    return box[0]  # type: ignore[return-value]


def send(items: Iterable[Any], group: Any) -> Iterator[Any]:
    """Yield ``items`` and broadcast each one (then the end, or the failure) to the group."""
    iterator = iter(items)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            _broadcast((_END, None), group)
            return
        except Exception as exc:
            _broadcast((_ERROR, f"{type(exc).__name__}: {exc}"), group)
            raise
        _broadcast((_ITEM, item), group)
        yield item


def receive(group: Any) -> Iterator[Any]:
    """Yield what the group's source sends, until it sends the end.

    Raises:
        DataPlaneError: The source failed (its error's type and message are named).
    """
    while True:
        kind, value = _broadcast(None, group)
        if kind == _END:
            return
        if kind == _ERROR:
            raise DataPlaneError(f"the source of this replica group failed: {value}")
        yield value
