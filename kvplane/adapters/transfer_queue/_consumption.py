"""Claim state inside TransferQueue's controller: read each task's claimed samples, mark samples claimed.

TransferQueue 0.1.11's client reads one task's consumption bits only when given the task's name (a
partition's tasks cannot be listed) and cannot set a bit for chosen samples: a claim (``get_meta`` in
fetch mode) takes the first ready samples by global index. A checkpoint must record every task's
claimed samples, and a restore must mark exactly those claimed again (so a restored store hands out
each unclaimed sample once and no claimed one again). Both run inside the controller actor through
Ray's ``__ray_call__``; the two small functions below are pickled by value, so the controller's
process needs no kvplane installed. They touch the same structures TransferQueue's own
``get_meta``/``mark_consumed`` do, between two of the controller's requests.

Examples:
    The functions work on anything shaped like the controller (the e2e tests run the real one):

    >>> import torch
    >>> from types import SimpleNamespace
    >>> from kvplane.adapters.transfer_queue._consumption import _claimed_in, _mark_in
    >>> part = SimpleNamespace(global_indexes={0, 1, 2}, consumption_status={"train": torch.tensor([1, 0, 1, 1])})
    >>> controller = SimpleNamespace(partitions={"p": part})
    >>> _claimed_in(controller, ["p", "gone"])
    {'p': {'train': [0, 2]}}
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import ray
from ray import cloudpickle

from kvplane._errors import DataPlaneError, DataPlaneReadError

from ._calls import run_bounded, translate

__all__ = ["claimed_samples", "mark_claimed"]


def _claimed_in(controller: Any, pids: Sequence[str]) -> dict[str, dict[str, list[int]]]:
    """(In the controller.) Per partition, per task: the partition's global indexes the task consumed."""
    out: dict[str, dict[str, list[int]]] = {}
    for pid in pids:
        part = controller.partitions.get(pid)
        if part is None:
            continue
        mine = set(part.global_indexes)
        tasks = {}
        for task, bits in list(part.consumption_status.items()):
            tasks[task] = [g for g in bits.nonzero().flatten().tolist() if g in mine]
        out[pid] = tasks
    return out


def _mark_in(controller: Any, pid: str, task: str, indexes: Sequence[int]) -> list[int]:
    """(In the controller.) Mark ``indexes`` consumed by ``task``; returns every index it has consumed."""
    part = controller.partitions[pid]
    if indexes:
        part.ensure_samples_capacity(max(indexes) + 1)
    _, bits = part.get_consumption_status(task, mask=False)
    if indexes:
        bits[list(indexes)] = 1
    mine = set(part.global_indexes)
    return [g for g in bits.nonzero().flatten().tolist() if g in mine]


# The controller runs these without importing kvplane.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _call(what: str, fn: Any, *args: Any, timeout_s: float) -> Any:
    from ._deployment import CONTROLLER_NAME, NAMESPACE

    try:
        controller = run_bounded(
            what, lambda: ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE), timeout_s=timeout_s
        )
        return ray.get(controller.__ray_call__.remote(fn, *args), timeout=timeout_s)
    except DataPlaneError:
        raise
    except Exception as exc:
        raise translate(what, exc, DataPlaneReadError) from exc


def claimed_samples(pids: Sequence[str], *, timeout_s: float) -> dict[str, dict[str, list[int]]]:
    """Per partition (of ``pids`` that exist), per task: the global indexes the task has claimed.

    Raises:
        DataPlaneError: The controller is gone, did not answer in time, or failed.
    """
    return _call("reading the claim state", _claimed_in, list(pids), timeout_s=timeout_s)


def mark_claimed(pid: str, task: str, indexes: Sequence[int], *, timeout_s: float) -> list[int]:
    """Mark samples (global indexes) of ``pid`` claimed by ``task``; every index it has claimed after.

    Raises:
        DataPlaneError: The controller is gone, did not answer in time, or failed.
    """
    return _call("restoring the claim state", _mark_in, pid, task, list(indexes), timeout_s=timeout_s)
