"""Producing steps: claim (leader) or wait for the plan (followers), then fetch this rank's rows.

A :class:`StepProducer` works for one rank (one DataLoader worker, with ``num_workers >= 1``): it
walks the steps ``first, first + stride, ...`` and turns each into a :class:`StepBatch`: the step's
plan and this rank's rows, fetched with one ``get_samples`` call. A planner thread claims (or reads)
plans and a fetcher thread reads rows, at most ``prefetch`` steps ahead of the consumer (a step
counts until :meth:`StepProducer.done`); a read that would hide nothing runs on the consumer's
thread in :meth:`StepProducer.next`. The leader re-reads a step's existing plan (resume) or claims,
until ``timeout_s``; an empty claim of a finite partition publishes the final plan. A claimed
step's plan is always written, so claimed samples are never lost. A rank whose shard is empty still
gets every field, with 0 rows and the field's dtype and trailing shape.

Design: docs/internals.md#loaders_stepspy--the-claim-and-fetch-pipeline

Examples:
    >>> import torch
    >>> from kvplane import build_data_plane_client
    >>> from loaders._plan import ShardOptions
    >>> from loaders._steps import StepProducer, StreamSpec
    >>> client = build_data_plane_client({"impl": "embedded"})
    >>> client.register_partition("p", ["x"], num_samples=3, consumer_tasks=["t"])
    >>> _ = client.put_samples(["a", "b", "c"], "p", {"x": torch.arange(3)})
    >>> spec = StreamSpec("p", "t", ["x"], batch_size=2, dp_rank=0, dp_world=1, options=ShardOptions())
    >>> producer = StepProducer(client, spec, first=0, stride=1)
    >>> batches = []
    >>> for _ in range(3):
    ...     batches.append(producer.next())
    ...     producer.done()                       # the consumer is done with that step
    >>> [(b.plan.step, b.final, None if b.final else b.data["x"].tolist()) for b in batches]
    [(0, False, [0, 1]), (1, False, [2]), (2, True, None)]
    >>> producer.stop()
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from tensordict import TensorDict

from kvplane import (
    DataPlaneBadRequest,
    DataPlaneClient,
    DataPlaneError,
    DataPlaneKeyError,
    DataPlaneTimeout,
    KVBatchMeta,
)
from loaders._control import PlanLog
from loaders._exit import exiting, on_exit
from loaders._plan import ShardOptions, StepPlan, plan_step

__all__ = ["StepBatch", "StepProducer", "StreamSpec"]

logger = logging.getLogger(__name__)

#: A blocking claim is re-issued in slices this long, so that a stop request is noticed.
CLAIM_SLICE_S = 0.25
#: How long :meth:`StepProducer.stop` waits for an in-flight claim and plan write to finish.
STOP_JOIN_S = 10.0


@dataclass(frozen=True)
class StreamSpec:
    """Everything that defines one rank's view of a stream (picklable; no client inside).

    Attributes:
        partition_id: The data partition.
        task_name: The consumer task whose claim cursor the stream advances.
        fields: The fields claimed (required) and fetched.
        batch_size: Samples per step (global batch, all ranks together).
        dp_rank: This rank.
        dp_world: The number of data-parallel ranks.
        options: How each step is split and micro-batched.
        prefetch: Steps claimed (or read) ahead of the consumer, at most.
        timeout_s: The longest wait for one step: the leader's claim, a follower's plan.
        poll_interval_s: The longest pause between a follower's polls for a plan.
        replica_rank: This process among those sharing ``dp_rank`` (see :mod:`loaders._ranks`).
        replica_world: The number of processes sharing ``dp_rank`` (``None``: seats, see
            :mod:`loaders._control`; ``replica_rank`` is then the seat taken).
        per_rank: TransferQueue's ``RankAwareSampler`` semantics: each ``dp_rank`` claims its own
            ``batch_size`` samples into its own plan log (``dp_world`` is then ``None``).
        end_when_consumed: Also end the stream when a claim finds too few samples and
            ``check_consumption_status`` says the task consumed the partition (TransferQueue's
            ``should_check_consumption_status=True``, for partitions registered without
            ``num_samples``).
    """

    partition_id: str
    task_name: str
    fields: list[str]
    batch_size: int
    dp_rank: int
    dp_world: int | None
    options: ShardOptions = field(default_factory=ShardOptions)
    prefetch: int = 2
    timeout_s: float = 60.0
    poll_interval_s: float = 0.01
    replica_rank: int = 0
    replica_world: int | None = 1
    per_rank: bool = False
    end_when_consumed: bool = False

    @property
    def is_leader(self) -> bool:
        """Whether this process claims and writes the plans (one process per plan log)."""
        return self.replica_rank == 0 and (self.per_rank or self.dp_rank == 0)

    @property
    def shard(self) -> int:
        """This rank's index among a plan's shards."""
        return 0 if self.per_rank else self.dp_rank

    @property
    def plan_world(self) -> int:
        """The number of shards of a plan."""
        return 1 if self.dp_world is None or self.per_rank else self.dp_world

    def plan_log(self, client: DataPlaneClient) -> PlanLog:
        """The plan log of this rank's stream."""
        return PlanLog(client, self.partition_id, self.task_name, self.dp_rank if self.per_rank else None)


@dataclass
class StepBatch:
    """One step as this rank sees it: the plan and this rank's rows (``None`` once the stream ended)."""

    plan: StepPlan
    data: TensorDict | None

    @property
    def final(self) -> bool:
        return self.plan.final


@dataclass
class _Failure:
    error: BaseException


def _smooth(average: float | None, value: float) -> float:
    """An exponentially weighted moving average (weight 1/4 on the new value)."""
    return value if average is None else 0.75 * average + 0.25 * value


@dataclass
class _Handoff:
    """A planned step whose rows the consumer reads itself (it was waiting when the plan arrived)."""

    plan: StepPlan
    published: Future[None] | None


class StepProducer:
    """Produce the :class:`StepBatch` of steps ``first, first + stride, ...`` in two background threads.

    Args:
        client: This process's data plane client.
        spec: The stream.
        first: The first step to produce.
        stride: The step increment (the number of DataLoader workers sharing the rank).
        since: The first step of this iteration of the rank (a final plan before it is ignored).
    """

    def __init__(
        self,
        client: DataPlaneClient,
        spec: StreamSpec,
        *,
        first: int,
        stride: int = 1,
        since: int | None = None,
    ) -> None:
        self.client = client
        self.spec = spec
        self.log = spec.plan_log(client)
        self.first, self.stride = first, stride
        self.since = first if since is None else since
        self._permits = threading.Semaphore(spec.prefetch)
        # A plan, and for a plan this producer claims, when it is in the log. None: planning stopped.
        self._plans: queue.Queue[tuple[StepPlan, Future[None] | None] | _Failure | None] = queue.Queue()
        self._out: queue.Queue[StepBatch | _Handoff | _Failure] = queue.Queue()
        self._waiting = threading.Event()  # the consumer is in next()
        # Who reads a step's rows (see the module docstring): smoothed seconds the consumer spends
        # between next() calls (its work) and a read takes; None until measured.
        self._work_s: float | None = None
        self._read_s: float | None = None
        self._returned_at: float | None = None
        self._stop = threading.Event()
        name = f"kvplane-r{spec.dp_rank}-s{first}"
        self._planner = threading.Thread(target=self._plan_steps, name=f"{name}-plan", daemon=True)
        self._fetcher = threading.Thread(target=self._fetch_steps, name=f"{name}-fetch", daemon=True)
        self._planner.start()
        self._fetcher.start()
        on_exit(self, self._halt)

    # ------------------------------------------------------------------ consumer side
    def next(self) -> StepBatch:
        """The next step (blocks; every wait inside the producer has a deadline).

        While the consumer waits here, the fetcher hands it the next planned step to read on its own
        thread instead of reading it in the background (see the module docstring).

        Raises:
            Whatever the producer raised (claim timeout, missing key, bad plan...).
        """
        if self._returned_at is not None:
            self._work_s = _smooth(self._work_s, time.perf_counter() - self._returned_at)
        self._waiting.set()
        try:
            while True:
                try:
                    item = self._out.get(timeout=1.0)
                except queue.Empty:
                    if not self._fetcher.is_alive() and self._out.empty():
                        raise DataPlaneError("the step producer ended without a result") from None
                    continue
                if isinstance(item, _Failure):
                    raise item.error
                if isinstance(item, _Handoff):
                    return self._rows_of(item.plan, item.published)
                return item
        finally:
            self._waiting.clear()
            self._returned_at = time.perf_counter()

    def done(self) -> None:
        """The consumer is done with one step: let the producer start another."""
        self._permits.release()

    def stop(self) -> None:
        """Stop producing; an in-flight claim still gets its plan written. Idempotent.

        At interpreter exit the threads are not waited for (they are daemons; see :mod:`loaders._exit`).
        """
        self._stop.set()
        self._permits.release()
        if exiting():
            logger.debug("interpreter exit: not waiting for the threads of %s", self._planner.name)
            return
        for thread in (self._planner, self._fetcher):
            thread.join(STOP_JOIN_S)
            if thread.is_alive():
                logger.warning("%s did not stop within %.0fs", thread.name, STOP_JOIN_S)

    def _halt(self) -> list[threading.Thread]:
        """Ask the threads to stop, without waiting (the exit hook waits, briefly)."""
        self._stop.set()
        self._permits.release()
        return [self._planner, self._fetcher]

    # ------------------------------------------------------------------ producer threads
    def _plan_steps(self) -> None:
        """Planner: claim (leader) or read the plan of each step, at most ``prefetch`` steps ahead."""
        try:
            spec = self.spec
            existing = {s for s in self.log.snapshot().plans if s >= self.first} if spec.is_leader else set()
            step = self.first
            while True:
                while not self._permits.acquire(timeout=0.1):
                    if self._stop.is_set():
                        return
                if self._stop.is_set():
                    return
                claimed = False
                if not spec.is_leader:
                    plan = self._wait(step)
                elif step in existing:  # a plan from before a restart: replay it (its body may still be landing)
                    plan = self._wait(step)
                else:
                    plan, claimed = self._claim_and_plan(step)
                if plan is None:
                    return
                self._check(plan)
                if claimed:
                    self._publish(plan)
                else:
                    self._plans.put((plan, None))
                if plan.final:
                    return
                step += self.stride
        except BaseException as exc:  # handed to the consumer, raised there
            self._plans.put(_Failure(exc))
        finally:
            self._plans.put(None)

    def _fetch_steps(self) -> None:
        """Fetcher: read this rank's rows of each planned step (overlapping the next claim)."""
        try:
            while True:
                item = self._plans.get()
                if item is None:
                    return
                if isinstance(item, _Failure):
                    self._out.put(item)
                    return
                plan, published = item
                if not plan.final and self._consumer_reads():
                    self._out.put(_Handoff(plan, published))
                else:
                    self._out.put(self._rows_of(plan, published))
                if plan.final:
                    return
        except BaseException as exc:
            self._out.put(_Failure(exc))

    def _consumer_reads(self) -> bool:
        """Whether the consumer reads the next step itself: it waits in next() now, or its work
        between steps is too short for a background read to hide (under half a read)."""
        if self._waiting.is_set() and self._out.empty():
            return True
        work, read = self._work_s, self._read_s
        return work is not None and read is not None and work < read / 2

    def _rows_of(self, plan: StepPlan, published: Future[None] | None) -> StepBatch:
        """``plan`` with this rank's rows, once the plan is in the log (read on the calling thread)."""
        started = time.perf_counter()
        rows = None if plan.final else self._fetch(plan)
        if rows is not None:
            self._read_s = _smooth(self._read_s, time.perf_counter() - started)
        if published is not None:  # rows are handed out only once their plan is in the log
            try:
                published.result(timeout=self.spec.timeout_s)
            except TimeoutError:
                raise DataPlaneTimeout(
                    f"the plan of step {plan.step} was not stored within {self.spec.timeout_s}s"
                ) from None
        return StepBatch(plan, rows)

    def _fetch(self, plan: StepPlan) -> TensorDict:
        """This rank's rows of ``plan``; an empty shard keeps the fields' schema (module docstring)."""
        spec = self.spec
        ids = plan.shards[spec.shard].sample_ids
        if ids:
            return self.client.get_samples(ids, spec.partition_id, list(spec.fields))
        donor = next(s.sample_ids[:1] for s in plan.shards if s.sample_ids)
        return self.client.get_samples(donor, spec.partition_id, list(spec.fields))[0:0]

    def _wait(self, step: int, *, body: bool = True) -> StepPlan | None:
        spec = self.spec
        return self.log.wait(
            step,
            since=self.since,
            dp_world=spec.plan_world,
            deadline=time.monotonic() + spec.timeout_s,
            poll_interval_s=spec.poll_interval_s,
            stop=self._stop,
            body=body,
        )

    def _claim_and_plan(self, step: int) -> tuple[StepPlan | None, bool]:
        """The plan of ``step`` (``None``: stopped) and whether it comes from a claim (to be written)."""
        spec = self.spec
        if self.stride > 1 and step > self.since:
            previous = self._wait(step - 1, body=False)  # claims go in step order across workers
            if previous is None:
                return None, False
            if previous.final:
                return StepPlan.terminal(step, spec.plan_world), False
        meta = self._claim()
        if meta is None:
            return None, False
        if meta.size == 0:
            return StepPlan.terminal(step, spec.plan_world), True
        return plan_step(step, meta, spec.plan_world, spec.options), True

    def _publish(self, plan: StepPlan) -> None:
        """Hand a claimed plan to the fetcher, then write it: the fetch overlaps the write."""
        published: Future[None] = Future()
        self._plans.put((plan, published))
        try:
            self.log.write(plan)  # raises if another leader wrote this step: never overwritten
        except BaseException as exc:
            published.set_exception(exc)
            raise
        published.set_result(None)

    def _claim(self) -> KVBatchMeta | None:
        spec = self.spec
        deadline = time.monotonic() + spec.timeout_s
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            try:
                return self.client.claim_meta(
                    spec.partition_id,
                    spec.task_name,
                    list(spec.fields),
                    spec.batch_size,
                    dp_rank=spec.dp_rank,
                    blocking=True,
                    timeout_s=max(0.0, min(CLAIM_SLICE_S, remaining)),
                )
            except DataPlaneTimeout:
                if spec.end_when_consumed and self._consumed():
                    return KVBatchMeta(spec.partition_id, spec.task_name, [], fields=list(spec.fields))
                if time.monotonic() >= deadline:
                    raise DataPlaneTimeout(
                        f"no batch of {spec.batch_size} samples with fields {spec.fields} became ready in "
                        f"partition {spec.partition_id!r} for task {spec.task_name!r} "
                        f"within {spec.timeout_s}s"
                    ) from None
        return None

    def _consumed(self) -> bool:
        """Whether the task consumed every sample of the partition (``False`` while it does not exist)."""
        spec = self.spec
        try:
            return self.client.check_consumption_status(spec.partition_id, [spec.task_name])
        except DataPlaneKeyError:
            return False

    def _check(self, plan: StepPlan) -> None:
        spec = self.spec
        if plan.dp_world != spec.plan_world:
            raise DataPlaneBadRequest(
                f"the plan of step {plan.step} splits over dp_world={plan.dp_world}, this rank has "
                f"dp_world={spec.plan_world}; every rank of a stream needs the same dp_world (to start over, "
                f"clear the control partition {self.log.partition_id!r})"
            )
        if not plan.final and set(plan.fields) != set(spec.fields):
            raise DataPlaneBadRequest(
                f"the plan of step {plan.step} was claimed for fields {plan.fields}, this rank asks for "
                f"{spec.fields}; every rank of a stream needs the same fields"
            )
