"""One rank's iteration, on the trainer's side: where to start, what to yield, what to acknowledge.

A :class:`RankStream` lives in the process that yields to the trainer (the main process, also with
DataLoader workers). It starts at the position loaded with ``load_state_dict``, or else after the
last step this rank finished on the stream (a rank new to the stream: at the GC floor); it cuts each
:class:`~loaders._steps.StepBatch` into micro-batches (views of the fetched rows) and acknowledges
finished steps and checkpoints in the plan log (:mod:`loaders._control`). The state
(``state_dict()``) is ``{"format", "partition_id", "task_name", "dp_rank", "dp_world", "epoch",
"step", "micro_batch"}``: the next micro-batch to yield (``step`` is ``None`` before the first
iteration). A restarted trainer that loads it continues with that micro-batch: plans are re-read and
rows re-fetched by key, never claimed again. :func:`check_epoch` refuses a state whose ``epoch`` the
store does not hold: restore the checkpoint saved with the state (``kvplane.load_checkpoint``) first.

Design: docs/internals.md#loaders_streampy--start-position-acknowledgements-and-state

Examples:
    >>> from loaders._stream import Position, check_state
    >>> from loaders._stream import check_epoch
    >>> state = {"format": 2, "partition_id": "p", "task_name": "t", "dp_rank": 0, "dp_world": 2,
    ...          "epoch": "3f2a", "step": 4, "micro_batch": 1}
    >>> check_state(state, partition_id="p", task_name="t", dp_rank=0, dp_world=2)
    Position(step=4, micro_batch=1)
    >>> check_state({**state, "dp_rank": 1}, partition_id="p", task_name="t", dp_rank=0, dp_world=2)
    Traceback (most recent call last):
    ...
    kvplane._errors.DataPlaneBadRequest: Invalid state_dict: it was saved by dp_rank=1 of dp_world=2; ...
    >>> check_epoch("3f2a", None, "__kvplane__/plans/p:t")
    Traceback (most recent call last):
    ...
    kvplane._errors.DataPlaneBadRequest: Cannot resume from this state_dict: the store holds no plan log ...
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kvplane import DataPlaneBadRequest, DataPlaneClient, DataPlaneError
from loaders._batch import MicroBatch
from loaders._control import GC_EVERY_STEPS
from loaders._exit import exiting
from loaders._steps import STOP_JOIN_S, StepBatch, StreamSpec

__all__ = ["STATE_FORMAT", "Position", "RankStream", "check_epoch", "check_state"]

logger = logging.getLogger(__name__)

#: Version of the ``state_dict()`` layout (2: with ``epoch``).
STATE_FORMAT = 2
_STATE_KEYS = {"format", "partition_id", "task_name", "dp_rank", "dp_world", "epoch", "step", "micro_batch"}


@dataclass(frozen=True)
class Position:
    """The next micro-batch to yield: micro-batch ``micro_batch`` of step ``step``."""

    step: int
    micro_batch: int = 0


def _bad_state(why: str) -> DataPlaneBadRequest:
    return DataPlaneBadRequest(f"Invalid state_dict: {why}")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_state(
    state: Any, *, partition_id: str, task_name: str, dp_rank: int, dp_world: int
) -> Position | None:
    """Validate a ``state_dict()`` for this rank; the position it holds (``None``: a fresh start).

    Raises:
        DataPlaneBadRequest: Malformed, or saved by another stream or rank ("Invalid state_dict: ...").
    """
    if not isinstance(state, Mapping):
        raise _bad_state(f"expected a dict, got {type(state).__name__}")
    if state.get("format") == 1:
        raise _bad_state(
            "it has format 1, saved by an earlier kvplane without the store's epoch, so it cannot be "
            "checked against this store; start the stream afresh (or continue without load_state_dict: "
            "a loader resumes after the last step each rank finished in the store)"
        )
    if set(state) != _STATE_KEYS:
        raise _bad_state(f"expected the keys {sorted(_STATE_KEYS)}, got {sorted(map(str, state))}")
    if state["format"] != STATE_FORMAT:
        raise _bad_state(f"format {state['format']!r} is not {STATE_FORMAT}")
    if (state["partition_id"], state["task_name"]) != (partition_id, task_name):
        raise _bad_state(
            f"it belongs to partition {state['partition_id']!r}, task {state['task_name']!r}; this loader "
            f"reads partition {partition_id!r}, task {task_name!r}"
        )
    if (state["dp_rank"], state["dp_world"]) != (dp_rank, dp_world):
        raise _bad_state(
            f"it was saved by dp_rank={state['dp_rank']} of dp_world={state['dp_world']}; this loader is "
            f"dp_rank={dp_rank} of dp_world={dp_world}"
        )
    step, micro, epoch = state["step"], state["micro_batch"], state["epoch"]
    if not (epoch is None or (isinstance(epoch, str) and epoch)):
        raise _bad_state(f"epoch must be a non-empty string or None, got {epoch!r}")
    if step is not None and epoch is None:
        raise _bad_state("a state with a step must name the store's epoch, got None")
    if not _is_count(micro):
        raise _bad_state(f"micro_batch must be an integer >= 0, got {micro!r}")
    if step is None:
        if micro:
            raise _bad_state("micro_batch must be 0 when step is None")
        return None
    if not _is_count(step):
        raise _bad_state(f"step must be an integer >= 0 or None, got {step!r}")
    return Position(step, micro)


def check_epoch(saved: str | None, current: str | None, log_partition: str) -> None:
    """Refuse a state whose epoch ``saved`` is not the store's (``current``) for the plan log
    ``log_partition`` (a fresh-start state, ``saved=None``, fits any store).

    Raises:
        DataPlaneBadRequest: The store lacks that stream's plan log, or holds another incarnation.
    """
    if saved is None or saved == current:
        return
    restore = (
        "restore the checkpoint saved together with this state (kvplane.load_checkpoint, or `kvplane "
        "load DIR`) before load_state_dict; starting from a fresh cursor would deliver again what was "
        "already consumed"
    )
    if current is None:
        raise DataPlaneBadRequest(
            f"Cannot resume from this state_dict: the store holds no plan log {log_partition!r} of epoch "
            f"{saved!r} (a fresh or rebuilt store); {restore}"
        )
    raise DataPlaneBadRequest(
        f"Cannot resume from this state_dict: it belongs to epoch {saved!r} of {log_partition!r}, but the "
        f"store holds epoch {current!r} (another store, or a store restored from another checkpoint); "
        f"{restore}"
    )


class RankStream:
    """One iteration of one rank, in the process that yields to the trainer (see the module docstring).

    Args:
        client: This process's client.
        spec: The stream.
    """

    def __init__(self, client: DataPlaneClient, spec: StreamSpec) -> None:
        self.spec = spec
        self.log = spec.plan_log(client)
        self.position: Position | None = None
        self._marked: int | None = None
        self._acked = 0
        self._collector: threading.Thread | None = None
        self._epoch: str | None = None

    @property
    def epoch(self) -> str | None:
        """The plan log's epoch (read from the store until the leader has written it)."""
        if self._epoch is None:
            self._epoch = self.log.snapshot().epoch
        return self._epoch

    def open(self, resume: Position | None) -> Position:
        """Decide where this iteration starts and acknowledge it.

        Raises:
            DataPlaneBadRequest: ``resume`` points below the plans still kept (they were collected).
        """
        spec = self.spec
        if spec.is_leader:
            self._epoch = self.log.ensure_epoch()
        snap = self.log.snapshot()
        self._epoch = self._epoch or snap.epoch
        if resume is not None:
            if resume.step < snap.gc_below:
                raise DataPlaneBadRequest(
                    f"cannot resume at step {resume.step}: the plans of {self.log.partition_id!r} below step "
                    f"{snap.gc_below} were garbage-collected (every rank had moved past them and none held "
                    "an older checkpoint); a rank keeps the plans of its two latest state_dict()s"
                )
            start = resume
        else:
            progress = (snap.acks.get((spec.shard, spec.replica_rank)) or {}).get("progress")
            late_seat = spec.replica_world is None and spec.replica_rank > 0
            if progress is None and late_seat and snap.gc_below:
                raise DataPlaneBadRequest(
                    f"this replica took seat {spec.replica_rank} of {self.log.partition_id!r} after the "
                    f"plans below step {snap.gc_below} were collected, so it cannot see what its peers saw; "
                    "start the replicas of a dp_rank together, or pass replica_rank/replica_world so that "
                    "plans are kept for every replica"
                )
            start = Position(snap.gc_below if progress is None else int(progress))
        self._marked = start.step if resume is not None else None
        self._ack(progress=start.step, checkpoint=self._marked, previous_checkpoint=None)
        self.position, self._acked = start, start.step
        return start

    def mark_checkpoint(self) -> None:
        """Keep the plans from the current position on (a ``state_dict()`` was taken here)."""
        if self.position is None or self.position.step == self._marked:
            return
        self._ack(checkpoint=self.position.step, previous_checkpoint=self._marked)
        self._marked = self.position.step

    def micro_batches(
        self, batches: Iterable[StepBatch], start: Position, step_done: Callable[[], None] | None = None
    ) -> Iterator[MicroBatch]:
        """Yield a :class:`~loaders.MicroBatch` ``(rows, meta)`` per micro-batch of each step, from
        ``start`` to the end of the stream.

        ``step_done`` is called when the trainer asks for more after a step's last micro-batch.
        """
        spec, rank = self.spec, self.spec.shard
        skip = start.micro_batch
        try:
            for batch in batches:
                plan = batch.plan
                if plan.final:
                    self._advance(plan.step)
                    self._wait_for_collector()
                    self._collect()
                    return
                count = plan.num_micro_batches
                first, skip = (skip, 0) if plan.step == start.step else (0, 0)
                if first > count:
                    raise _bad_state(
                        f"step {plan.step} has {count} micro-batches; cannot resume at micro-batch {first}"
                    )
                rows = batch.data
                assert rows is not None
                for index in range(first, count):
                    lo, hi = plan.shards[rank].bounds[index]
                    data = rows if (lo, hi) == (0, rows.batch_size[0]) else rows[lo:hi]
                    meta = plan.micro_batch_meta(spec.partition_id, spec.task_name, dp_rank=rank, index=index)
                    if spec.per_rank:  # the plan is this dp_rank's own: name the rank, not the shard
                        meta.extra_info.update(dp_rank=spec.dp_rank, dp_world=None)
                    self.position = (
                        Position(plan.step, index + 1) if index + 1 < count else Position(plan.step + 1)
                    )
                    yield MicroBatch(data, meta)
                if step_done is not None:
                    step_done()
                self._advance(plan.step)
                if spec.is_leader and (plan.step + 1) % GC_EVERY_STEPS == 0:
                    self._collect_in_background()
        finally:
            self._wait_for_collector()
            # Stopped early (break, close, error): a step whose last micro-batch was handed out is done.
            if self.position is not None and self.position.step > self._acked:
                if exiting():  # the data plane may need a thread that cannot start now: do not hang
                    logger.debug(
                        "interpreter exit: rank %d skips acknowledging step %d (it is delivered again "
                        "to the rank's next iteration)",
                        spec.dp_rank,
                        self.position.step - 1,
                    )
                else:
                    self._ack_quietly(progress=self.position.step)

    def _collect_in_background(self) -> None:
        """Collect plans on a helper thread (a listing and a clear: ~40 ms on TransferQueue), one at once."""
        if self._collector is not None and self._collector.is_alive():
            return
        self._collector = threading.Thread(
            target=self._collect_quietly, name=f"kvplane-gc-{self.log.partition_id}", daemon=True
        )
        self._collector.start()

    def _collect(self) -> None:
        self.log.collect_garbage(self.spec.plan_world, self.spec.replica_world)

    def _ack(self, **values: Any) -> None:
        """Merge ``values`` into this replica's acknowledgement (see :mod:`loaders._control`)."""
        self.log.ack(self.spec.shard, self.spec.replica_rank, **values)

    def _ack_quietly(self, progress: int) -> None:
        try:
            self._ack(progress=progress)
        except DataPlaneError as exc:  # e.g. the client was closed first; never mask an error
            logger.warning("rank %d could not acknowledge step %d: %s", self.spec.dp_rank, progress - 1, exc)

    def _collect_quietly(self) -> None:
        try:
            self._collect()
        except DataPlaneError as exc:  # the next collection retries; an error here must not end training
            logger.warning("collecting the plans of %s failed: %s", self.log.partition_id, exc)

    def _wait_for_collector(self) -> None:
        if self._collector is not None and not exiting():
            self._collector.join(STOP_JOIN_S)
            if self._collector.is_alive():
                logger.warning(
                    "collecting the plans of %s outlasted %.0fs", self.log.partition_id, STOP_JOIN_S
                )

    def _advance(self, step: int) -> None:
        """Step ``step`` is done on this rank: the next one is ``step + 1``."""
        self.position = Position(step + 1)
        self._acked = step + 1
        self._ack(progress=step + 1)
