"""The plan log: where the DP ranks of one (partition, task) stream meet, inside the data plane itself.

Each stream (one per consumer task) has a control partition, named by :func:`plan_partition_id`
(``"__kvplane__/plans/{partition_id}:{task_name}"``; kvplane's own, so ``kv_list()`` hides it and
``kv_list(name)`` shows it). It holds the step plans (``step-{step:012d}``, written once by the
leader; a second writer raises :class:`~kvplane.DataPlaneBadRequest`: two leaders on one stream),
each replica's acknowledgements (``rank-{r}``, ``rank-{r}.{k}``), the GC floor and leases (``gc``,
``gclease-{gen}``), the log's ``epoch`` (a state saved against another incarnation is refused) and
replica seats (``seat-{k}``). Plans that every rank and replica has yielded, and that none may
resume before, are collected: by the leader every ``GC_EVERY_STEPS`` steps, by each rank at the end
of its iteration. A seated leader (TransferQueue's arguments without ``replica_rank``) does not lead
again after a restart: pass ``replica_rank``/``replica_world`` for restartable jobs.

Design: docs/internals.md#loaders_controlpy--the-plan-log

Examples:
    >>> from kvplane import build_data_plane_client
    >>> from loaders._control import PlanLog
    >>> from loaders._plan import StepPlan
    >>> log = PlanLog(build_data_plane_client({"impl": "embedded"}), "rollouts", "train")
    >>> log.partition_id
    '__kvplane__/plans/rollouts:train'
    >>> epoch = log.ensure_epoch(); epoch == log.ensure_epoch() == log.snapshot().epoch
    True
    >>> log.write(StepPlan(0, dp_world=2)); log.write(StepPlan.terminal(1, dp_world=2))
    >>> log.read(1).final, log.snapshot().plans
    (True, {0: False, 1: True})
    >>> log.write(StepPlan(0, dp_world=2), writer="another leader")
    Traceback (most recent call last):
    ...
    kvplane._errors.DataPlaneBadRequest: two leaders on one stream: the plan of step 0 in ...
    >>> log.ack(0, progress=2); log.ack(1, progress=2)
    >>> log.collect_garbage(dp_world=2), log.snapshot().plans     # the last, final plan stays
    (2, {1: True})
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import torch

from kvplane import (
    DataPlaneBadRequest,
    DataPlaneClient,
    DataPlaneKeyError,
    DataPlaneTimeout,
    internal_partition,
)
from loaders._plan import StepPlan

__all__ = ["GC_EVERY_STEPS", "LogSnapshot", "PlanLog", "plan_partition_id"]

logger = logging.getLogger(__name__)

#: The leader collects garbage after every this many steps (see the module docstring).
GC_EVERY_STEPS = 8

_PLAN_FIELD = "plan"
_GC_KEY = "gc"
_EPOCH_KEY = "epoch"
_SEAT_TASK = "__seats__"
_LEASE_TASK = "__gc__"
_LEASE_FIELD = "lease"
_LEASE_PREFIX = "gclease-"

#: The longest a collector waits for another process's collection to finish before skipping its own.
LEASE_WAIT_S = 10.0
#: A GC lease held this long without its generation advancing is taken to be a dead holder's.
LEASE_BREAK_S = 60.0
_SEAT_FIELD = "seat"
_ACK_KEYS = ("progress", "checkpoint", "previous_checkpoint")


def plan_partition_id(partition_id: str, task_name: str) -> str:
    """The control partition of the stream ``(partition_id, task_name)``.

    Clear it (``client.clear_samples(None, name)``) to forget a stream's plans and acknowledgements,
    e.g. before reusing a task name with a different ``dp_world``.
    """
    return internal_partition("plans", f"{partition_id}:{task_name}")


def _plan_key(step: int) -> str:
    return f"step-{step:012d}"


def _lease_key(gen: int) -> str:
    return f"{_LEASE_PREFIX}{gen:012d}"


def _rank_key(rank: int, replica: int = 0) -> str:
    return f"rank-{rank}" if replica == 0 else f"rank-{rank}.{replica}"


def _parse_rank_key(key: str) -> tuple[int, int]:
    rank, _, replica = key[5:].partition(".")
    return int(rank), int(replica or 0)


@dataclass
class LogSnapshot:
    """What the control partition holds at one moment (tags only; no plan body is read)."""

    plans: dict[int, bool] = field(default_factory=dict)  # step -> final
    acks: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)  # (rank, replica) -> tags
    gc_below: int = 0
    gc_gen: int = 0  # the GC generation: the lease of this one is the collector's
    leases: list[str] = field(default_factory=list)  # the lease keys present
    lease_gen: int | None = None  # the newest lease's generation and creation time (wall clock)
    lease_since: float | None = None
    seats: int = 0
    epoch: str | None = None

    def keep_from(self, rank: int, replica: int = 0) -> int | None:
        """The oldest step a replica of a rank may still need (``None`` if it has not acknowledged)."""
        ack = self.acks.get((rank, replica))
        if ack is None:
            return None
        values = [ack[k] for k in _ACK_KEYS if ack.get(k) is not None]
        return min(values) if values else None

    def first_final(self, since: int, before: int) -> int | None:
        """The first step in ``[since, before)`` whose plan is final, if any."""
        finals = [s for s, final in self.plans.items() if final and since <= s < before]
        return min(finals) if finals else None


class PlanLog:
    """Read and write the plan log of one ``(partition_id, task_name)`` stream.

    Args:
        client: The data plane client of this process.
        partition_id: The data partition.
        task_name: The consumer task.
        group: For TransferQueue-style streams, the ``dp_rank`` whose own plans these are
            (partition ``...:dp{group}``); ``None``: one plan log for all ranks.
    """

    def __init__(
        self, client: DataPlaneClient, partition_id: str, task_name: str, group: int | None = None
    ) -> None:
        self.client = client
        self.partition_id = plan_partition_id(partition_id, task_name) + (
            "" if group is None else f":dp{group}"
        )
        self.writer = uuid.uuid4().hex  # names this log's plans, to tell a second leader's apart

    def snapshot(self) -> LogSnapshot:
        """The plans present (step → final), every rank's acknowledgements and the GC floor."""
        snap = LogSnapshot()
        for key, tags in self.client.list_keys(self.partition_id).get(self.partition_id, {}).items():
            if key.startswith("step-"):
                snap.plans[int(tags.get("step", key[5:]))] = bool(tags.get("final", False))
            elif key.startswith("rank-"):
                snap.acks[_parse_rank_key(key)] = dict(tags)
            elif key == _GC_KEY:
                snap.gc_below = int(tags.get("below", 0))
                snap.gc_gen = int(tags.get("gen", 0))
            elif key.startswith(_LEASE_PREFIX):
                snap.leases.append(key)
                gen = int(key[len(_LEASE_PREFIX) :])
                if snap.lease_gen is None or gen > snap.lease_gen:
                    snap.lease_gen, snap.lease_since = gen, tags.get("at")
            elif key.startswith("seat-"):
                snap.seats += 1
            elif key == _EPOCH_KEY:
                snap.epoch = tags.get("id")
        return snap

    def ensure_epoch(self) -> str:
        """The log's epoch (see the module docstring), written first if it has none.

        Only the leader calls it (one process per log), so no two epochs race.
        """
        epoch = self.snapshot().epoch
        if epoch is None:
            epoch = uuid.uuid4().hex
            self.client.put_samples([_EPOCH_KEY], self.partition_id, None, tags=[{"id": epoch}])
            logger.debug("stream %s: new epoch %s", self.partition_id, epoch)
        return epoch

    def _plan_tags(self, step: int) -> dict[str, Any] | None:
        listed = self.client.list_keys(self.partition_id).get(self.partition_id, {})
        return listed.get(_plan_key(step))

    def write(self, plan: StepPlan, writer: str | None = None) -> None:
        """Publish ``plan`` once (one put: the body and the ``step``/``final``/``writer`` tags).

        ``writer`` names the leader (default: this log's id).

        Raises:
            DataPlaneBadRequest: The step already has a plan, or another writer's plan replaced this
                one while it was written: two leaders on one stream (see :mod:`loaders._ranks`).
        """
        writer = self.writer if writer is None else writer
        existing = self._plan_tags(plan.step)
        if existing is not None and existing.get("writer") != writer:  # its own retry is no conflict
            raise self._conflict(plan.step)
        self.client.put_samples(
            [_plan_key(plan.step)],
            self.partition_id,
            {_PLAN_FIELD: [plan.to_bytes()]},
            tags=[{"step": plan.step, "final": plan.final, "writer": writer}],
        )
        if (self._plan_tags(plan.step) or {}).get("writer") != writer:
            raise self._conflict(plan.step)

    def _conflict(self, step: int) -> DataPlaneBadRequest:
        return DataPlaneBadRequest(
            f"two leaders on one stream: the plan of step {step} in {self.partition_id!r} was written by "
            "another process; exactly one process per stream may have dp_rank=0 and replica_rank=0 "
            "(give the processes that share a dp_rank distinct replica_rank values and replica_world)"
        )

    def read(self, step: int) -> StepPlan:
        """The plan of ``step``.

        Raises:
            DataPlaneKeyError: There is no plan for ``step``.
        """
        column = self.client.get_samples([_plan_key(step)], self.partition_id, [_PLAN_FIELD]).get(_PLAN_FIELD)
        return StepPlan.from_bytes(column.tolist()[0])

    def wait(
        self,
        step: int,
        *,
        since: int,
        dp_world: int,
        deadline: float,
        poll_interval_s: float,
        stop: threading.Event,
        body: bool = True,
    ) -> StepPlan | None:
        """Wait for the plan of ``step``, polling with a backoff from 1 ms up to ``poll_interval_s``.

        Returns a terminal plan as soon as a final plan exists at a step in ``[since, step)`` (the
        stream ended before ``step``), and ``None`` when ``stop`` is set. With ``body=False`` only
        the plan's existence and ``final`` flag are read (its shards are left empty).

        Raises:
            DataPlaneTimeout: No plan by ``deadline`` (``time.monotonic()`` seconds).
        """
        delay = min(0.001, poll_interval_s)
        while not stop.is_set():
            snap = self.snapshot()
            if step in snap.plans:
                if not body:
                    return StepPlan(step, dp_world, final=snap.plans[step])
                try:
                    return self.read(step)
                except DataPlaneKeyError:
                    pass  # listed but its body not stored yet: TransferQueue publishes tags first
            ended = snap.first_final(since, step)
            if ended is not None:
                return StepPlan.terminal(step, dp_world)
            if step < snap.gc_below:
                if not body:  # it existed, and was not final: final plans outlive the collection
                    return StepPlan(step, dp_world)
                raise DataPlaneBadRequest(
                    f"the plan of step {step} of {self.partition_id!r} was garbage-collected "
                    f"(plans below step {snap.gc_below} are gone)"
                )
            if time.monotonic() >= deadline:
                raise DataPlaneTimeout(
                    f"no plan for step {step} in {self.partition_id!r} before the deadline: is the leader "
                    "(dp_rank 0) running, and is data being produced?"
                )
            stop.wait(delay)
            delay = min(delay * 2, poll_interval_s)
        return None

    def ack(self, rank: int | str, replica: int = 0, **values: Any) -> None:
        """Merge ``values`` into the acknowledgement tags of replica ``replica`` of rank ``rank``
        (``"gc"`` for the GC floor)."""
        key = _GC_KEY if rank == _GC_KEY else _rank_key(int(rank), replica)
        self.client.put_samples([key], self.partition_id, None, tags=[values])

    def take_seat(self, deadline: float) -> int:
        """Take the first free replica seat (adding one if none is free); returns its number.

        Raises:
            DataPlaneTimeout: No seat by ``deadline`` (``time.monotonic()`` seconds).
        """
        while time.monotonic() < deadline:
            meta = self.client.claim_meta(self.partition_id, _SEAT_TASK, [_SEAT_FIELD], 1, blocking=False)
            if meta.size:
                return int(meta.sample_ids[0][5:])
            seat = f"seat-{self.snapshot().seats:04d}"  # concurrent adders write the same key
            self.client.put_samples([seat], self.partition_id, {_SEAT_FIELD: torch.zeros(1)})
        raise DataPlaneTimeout(f"no replica seat in {self.partition_id!r} before the deadline")

    def collect_garbage(self, dp_world: int, replica_world: int | None = 1) -> int:
        """Delete the plans every rank and replica is done with (see the module docstring); returns
        the GC floor. ``replica_world=None``: the replicas are the seats taken.

        One collector at a time, over every process: a collection holds the lease of the log's
        current GC generation (an exactly-once claim) and clears only keys it listed while holding
        it, so no key is cleared twice or after it is gone. A collector that finds the lease held
        waits (up to :data:`LEASE_WAIT_S`) for the holder to finish, then collects what is left.
        """
        deadline = time.monotonic() + LEASE_WAIT_S
        while True:
            snap = self.snapshot()
            doomed, horizon = self._doomed(snap, dp_world, replica_world)
            if horizon is None or (not doomed and horizon <= snap.gc_below):
                return snap.gc_below if horizon is None else max(horizon, snap.gc_below)
            held = self._take_lease(snap)
            if held is not None:
                return self._collect_holding(held, dp_world, replica_world)
            if not self._wait_for_generation(snap.gc_gen, deadline):
                logger.debug("%s: the GC lease stayed held; this collection is skipped", self.partition_id)
                return snap.gc_below

    def _doomed(
        self, snap: LogSnapshot, dp_world: int, replica_world: int | None
    ) -> tuple[list[str], int | None]:
        """The plan keys below the horizon (the last, final plan kept) and the horizon (``None``:
        some rank or replica has not acknowledged yet)."""
        replicas = snap.seats if replica_world is None else replica_world
        keep = [snap.keep_from(r, k) for r in range(dp_world) for k in range(replicas)]
        if any(k is None for k in keep):
            return [], None
        horizon = min(k for k in keep if k is not None)
        last = max(snap.plans, default=-1)
        doomed = [
            _plan_key(s) for s, final in snap.plans.items() if s < horizon and not (final and s == last)
        ]
        return doomed, horizon

    def _take_lease(self, snap: LogSnapshot) -> int | None:
        """Claim the lease of ``snap``'s generation: the generation held, or ``None`` (held elsewhere).

        A lease older than :data:`LEASE_BREAK_S` whose generation never advanced (its holder died)
        is broken: the next generation is opened.
        """
        gen = snap.gc_gen
        stuck = snap.lease_since is not None and time.time() - snap.lease_since > LEASE_BREAK_S
        if stuck and snap.lease_gen == gen:
            logger.warning(
                "%s: breaking the GC lease of generation %d (held for over %.0fs)",
                self.partition_id,
                gen,
                LEASE_BREAK_S,
            )
            self.ack(_GC_KEY, gen=gen + 1)
            gen += 1
        if _lease_key(gen) not in snap.leases:  # written once per generation: its time is its creation
            self.client.put_samples(
                [_lease_key(gen)],
                self.partition_id,
                {_LEASE_FIELD: torch.zeros(1)},
                tags=[{"at": time.time()}],
            )
        meta = self.client.claim_meta(self.partition_id, _LEASE_TASK, [_LEASE_FIELD], 1, blocking=False)
        if not meta.size:
            return None
        key = meta.sample_ids[0]
        held = int(key[len(_LEASE_PREFIX) :])
        if held != self.snapshot().gc_gen:  # a lease key re-created after its generation ended
            self.client.clear_samples([key], self.partition_id)  # ours: we just claimed it
            return None
        return held

    def _collect_holding(self, held: int, dp_world: int, replica_world: int | None) -> int:
        snap = self.snapshot()  # listed under the lease: these keys exist until we clear them
        doomed, horizon = self._doomed(snap, dp_world, replica_world)
        floor = snap.gc_below if horizon is None else max(horizon, snap.gc_below)
        if floor > snap.gc_below:
            self.ack(_GC_KEY, below=floor)  # before deleting, so a resume below it fails loudly
        doomed += [k for k in snap.leases if k != _lease_key(held)]  # earlier generations' leases
        if doomed:
            self.client.clear_samples(doomed, self.partition_id)
            logger.debug("collected %d keys of %s below step %d", len(doomed), self.partition_id, floor)
        self.ack(_GC_KEY, gen=held + 1)  # releases the lease
        return floor

    def _wait_for_generation(self, gen: int, deadline: float) -> bool:
        """Wait until the GC generation passes ``gen`` (the lease holder finished); ``False``: deadline."""
        delay = 0.001
        while time.monotonic() < deadline:
            snap = self.snapshot()
            if snap.gc_gen > gen or (
                snap.lease_since is not None and time.time() - snap.lease_since > LEASE_BREAK_S
            ):
                return True
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.05)
        return False
