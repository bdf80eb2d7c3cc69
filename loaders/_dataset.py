"""``StreamingDataset``: per-DP-rank micro-batches of a claimed stream, exactly once across ranks.

Examples:
    >>> import torch
    >>> from kvplane import build_data_plane_client
    >>> from loaders import StreamingDataset
    >>> client = build_data_plane_client({"impl": "embedded"})
    >>> client.register_partition("rollouts", ["x"], num_samples=10, consumer_tasks=["train"])
    >>> _ = client.put_samples([f"s{i}" for i in range(10)], "rollouts", {"x": torch.arange(10)},
    ...                        tags=[{"seq_len": i + 1} for i in range(10)])
    >>> ds = StreamingDataset(client, partition_id="rollouts", task_name="train", fields=["x"],
    ...                       batch_size=4, micro_batch_size=2)
    >>> [(meta.extra_info["step"], meta.extra_info["micro_batch_index"], td["x"].tolist()) for td, meta in ds]
    [(0, 0, [0, 1]), (0, 1, [2, 3]), (1, 0, [4, 5]), (1, 1, [6, 7]), (2, 0, [8, 9])]
    >>> ds.state_dict()["step"]        # step 3 was the final plan; iterating again would start at 4
    4
    >>> client.close()
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from kvplane import DataPlaneBadRequest
from loaders import _broadcast
from loaders._batch import MicroBatch
from loaders._control import plan_partition_id
from loaders._plan import ShardOptions
from loaders._ranks import resolve_topology
from loaders._source import ClientSource
from loaders._steps import StepBatch, StepProducer, StreamSpec
from loaders._stream import STATE_FORMAT, Position, RankStream, check_epoch, check_state

__all__ = ["StreamingDataset"]


def _check_names(value: Any, what: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise DataPlaneBadRequest(f"{what} must be a non-empty list of names, got {value!r}")
    if not all(isinstance(v, str) and v for v in value) or len(set(value)) != len(value):
        raise DataPlaneBadRequest(f"{what} must be distinct non-empty strings, got {value!r}")
    return list(value)


class StreamingDataset(IterableDataset):
    """An ``IterableDataset`` of ``(TensorDict, KVBatchMeta)`` micro-batches for one DP rank.

    Each item is a :class:`~loaders.MicroBatch`: it unpacks as ``data, meta`` and passes through
    ``torch.utils.data.DataLoader(dataset, batch_size=None)`` and torchdata's ``StatefulDataLoader``
    without a ``collate_fn``. In such a loader's worker processes (a TransferQueue config as the
    source), worker 0 delivers the stream in order and the others deliver nothing;
    :class:`~loaders.StreamingDataLoader` spreads whole steps over its workers.

    One *step* is one global batch of ``batch_size`` samples, claimed once for all DP ranks by the
    leader (``dp_rank`` 0) with ``claim_meta``, split with :func:`kvplane.shard_meta_for_dp`, and
    published as a plan in the data plane (:mod:`loaders._control`); every rank reads the plan and
    fetches only its own rows, with one read per step. Ranks may be threads (memory backend) or
    processes (TransferQueue); they need no channel of their own.

    Each yielded meta's ``extra_info`` holds ``step``, ``micro_batch_index``, ``num_micro_batches``,
    ``dp_rank``, ``dp_world`` and, with packing, the shard's ``micro_batch_indices`` /
    ``micro_batch_lengths`` (/ ``elem_counts_per_gb``). Every rank yields the same number of
    micro-batches per step (see :mod:`loaders._plan` for the splitting rules, including the short
    last step of a finite partition, where a rank may get empty micro-batches).

    Finite or streaming comes from the partition's registration: with a known ``num_samples`` the
    iteration ends once every sample has been delivered (the short last batch included); with
    ``num_samples=None`` it waits for producers (a blocking claim, woken by writes on the memory
    backend) for up to ``timeout_s`` per step, then raises :class:`~kvplane.DataPlaneTimeout`.

    **Replica groups** (tensor/pipeline-parallel peers; the argument names and defaults are in
    :mod:`loaders._ranks`): every process that shares a ``dp_rank`` receives identical micro-batches
    in the same order. By default (``replica_rank``/``replica_world``) each replica reads its
    ``dp_rank``'s shard from the same plan: exactly one process, ``dp_rank`` 0 with ``replica_rank``
    0, claims and writes each step's plan, and a second writer of a step is a
    :class:`~kvplane.DataPlaneBadRequest`, never an overwrite. With ``replica_group`` (a
    ``torch.distributed`` process group of the replicas) the group's rank 0 reads and broadcasts
    each micro-batch to the others (:mod:`loaders._broadcast`). Progress records and
    ``state_dict()`` are per replica.

    **Empty micro-batches keep their schema**: on the short last step a rank may get no rows; its
    micro-batches still hold every field, with 0 rows and the field's dtype and trailing shape (a
    variable-length field: a one-row read of it sliced to 0 rows, see :mod:`loaders._steps`), so a
    DDP rank runs forward and backward on it like the others and no all-reduce hangs.

    **TransferQueue's arguments** (``transfer_queue.StreamingDataset`` 0.1.11) are accepted:
    ``config=`` is ``source``; ``data_fields=`` is ``fields`` *and* selects TransferQueue's
    semantics: ``batch_size`` is per ``dp_rank``, each ``dp_rank`` claims its own batches
    (``RankAwareSampler``: processes with the same ``dp_rank`` see identical data; no ``dp_world``,
    no balancing across ranks, ranks need not take the same number of steps; processes that give no
    replica argument take seats, the first of a ``dp_rank`` to start leading, see
    :mod:`loaders._control`); ``micro_batch_size``
    and ``dp_rank`` mean what they mean there; ``should_check_consumption_status=True`` also ends
    the stream of a partition registered without ``num_samples`` once the task consumed it (a
    partition registered with ``num_samples`` ends when consumed either way; with ``False`` an
    unregistered partition is waited for up to ``timeout_s`` per step). ``fetch_batch_fn`` and
    ``process_batch_fn`` are refused: map over the loader instead (``for td, meta in map(fn,
    loader)``). The yield is ``(TensorDict, KVBatchMeta)``, where TransferQueue yields
    ``(TensorDict, BatchMeta)``: ``meta.sample_ids`` are the keys (TransferQueue's
    ``batch_meta.global_indexes`` are integers), and micro-batch sizes are as even as possible
    (TransferQueue cuts ``micro_batch_size`` rows and a remainder).

    Iterating again continues the stream where this rank stopped (steps claimed but not yet yielded
    are delivered first); :meth:`load_state_dict` resumes at an exact micro-batch instead. Use
    :class:`~loaders.StreamingDataLoader` for ``num_workers >= 1``.

    Args:
        source: A :class:`~kvplane.DataPlaneClient` (used in this process only), or a config (dict,
            YAML path, :class:`~kvplane.DataPlaneConfig`) from which each process builds its own
            client (see :mod:`loaders._source`).

    Keyword Args:
        config: TransferQueue's name for ``source`` (give one of the two).
        partition_id: The data partition.
        task_name: The consumer task (its claim cursor is the stream's).
        fields: The fields every sample must have (claimed on) and that are fetched.
        data_fields: TransferQueue's spelling of ``fields``, with its per-``dp_rank`` batches (above).
        batch_size: Samples per step, all ranks together; a multiple of ``dp_world`` (with
            ``data_fields``: per ``dp_rank``).
        dp_rank: This rank; processes with the same ``dp_rank`` receive identical data (default:
            ``dp_group``'s rank, ``torch.distributed``'s rank without replicas, or 0).
        dp_world: Data-parallel ranks (default: ``dp_group``'s size, ``torch.distributed``'s world
            size without replicas, or 1).
        dp_group: A ``torch.distributed`` group of this process's data-parallel peers (defaults).
        replica_rank: This process among those sharing ``dp_rank`` (default: ``replica_group``'s
            rank, or 0).
        replica_world: Processes sharing ``dp_rank`` (default: ``replica_group``'s size, or 1).
        replica_group: A ``torch.distributed`` group of the processes sharing ``dp_rank``: its rank 0
            reads and broadcasts to the others.
        should_check_consumption_status: TransferQueue's finite-stream switch (above).
        micro_batch_size: Without packing: the largest micro-batch in rows (default: one per step).
        balance: ``None`` (NeMo-RL's split), ``"tokens"`` or ``"flops"`` (needs ``seq_len`` tags).
        equal_count: Balanced mode with equal sample counts per rank.
        group_tag: Balanced mode keeping the rows that share this tag's value on one rank.
        flops_coeff: ``a`` of the ``"flops"`` weight ``a·L + L²``.
        sequence_packing_args: NeMo-RL's sequence packing; its bins are the micro-batches.
        dynamic_batching_args: NeMo-RL's dynamic batching; its plan's micro-batches are used.
        prefetch: Steps claimed (or read) and fetched ahead of the trainer, at most (>= 1). Bounds
            memory: at most ``prefetch`` steps of this rank's rows are held.
        timeout_s: The longest wait for one step (leader: for ready samples; follower: for the plan).
        poll_interval_s: The longest pause between a follower's polls for a plan (default: the
            config's ``claim_meta_poll_interval_s``, or 10 ms for a client object).

    Raises:
        DataPlaneBadRequest: Any bad argument (checked here, before the first step).
    """

    def __init__(
        self,
        source: Any = None,
        *,
        config: Any = None,
        partition_id: str,
        task_name: str,
        fields: list[str] | None = None,
        data_fields: list[str] | None = None,
        batch_size: int,
        dp_rank: int | None = None,
        dp_world: int | None = None,
        dp_group: Any = None,
        replica_rank: int | None = None,
        replica_world: int | None = None,
        replica_group: Any = None,
        should_check_consumption_status: bool = False,
        fetch_batch_fn: Any = None,
        process_batch_fn: Any = None,
        micro_batch_size: int | None = None,
        balance: str | None = None,
        equal_count: bool = False,
        group_tag: str | None = None,
        flops_coeff: float | None = None,
        sequence_packing_args: dict[str, Any] | None = None,
        dynamic_batching_args: dict[str, Any] | None = None,
        prefetch: int = 2,
        timeout_s: float = 60.0,
        poll_interval_s: float | None = None,
    ) -> None:
        super().__init__()
        if (source is None) == (config is None):
            raise DataPlaneBadRequest(
                "give the data plane as source (kvplane) or config= (TransferQueue), once"
            )
        self.source = ClientSource(config if source is None else source)
        if (fields is None) == (data_fields is None):
            raise DataPlaneBadRequest(
                "give the fields as fields= (kvplane) or data_fields= (TransferQueue), once"
            )
        for name, fn in (("fetch_batch_fn", fetch_batch_fn), ("process_batch_fn", process_batch_fn)):
            if fn is not None:
                raise DataPlaneBadRequest(
                    f"{name} is not supported: the loader fetches and splits steps itself; apply your "
                    "function to what it yields (for td, meta in map(fn, loader))"
                )
        if not isinstance(should_check_consumption_status, bool):
            raise DataPlaneBadRequest(
                f"should_check_consumption_status must be a bool, got {should_check_consumption_status!r}"
            )
        per_rank = data_fields is not None
        topo = resolve_topology(
            dp_rank,
            dp_world,
            dp_group=dp_group,
            replica_rank=replica_rank,
            replica_world=replica_world,
            replica_group=replica_group,
            per_rank=per_rank,
        )
        self._group = topo.replica_group  # broadcast mode: rank 0 of the group reads, the rest receive
        broadcast = self._group is not None
        for name, value in (("partition_id", partition_id), ("task_name", task_name)):
            if not isinstance(value, str) or not value:
                raise DataPlaneBadRequest(f"{name} must be a non-empty string, got {value!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DataPlaneBadRequest(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
            raise DataPlaneBadRequest(f"prefetch must be an integer >= 1, got {prefetch!r}")
        poll = self.source.poll_interval_s if poll_interval_s is None else poll_interval_s
        for name, value in (("timeout_s", timeout_s), ("poll_interval_s", poll)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise DataPlaneBadRequest(f"{name} must be a positive number of seconds, got {value!r}")
        options = ShardOptions(
            balance=balance,
            equal_count=equal_count,
            group_tag=group_tag,
            flops_coeff=flops_coeff,
            sequence_packing_args=sequence_packing_args,
            dynamic_batching_args=dynamic_batching_args,
            micro_batch_size=micro_batch_size,
        )
        self.spec = StreamSpec(
            partition_id=partition_id,
            task_name=task_name,
            fields=_check_names(data_fields if per_rank else fields, "data_fields" if per_rank else "fields"),
            batch_size=batch_size,
            dp_rank=topo.dp_rank,
            dp_world=topo.dp_world,
            options=options,
            prefetch=prefetch,
            timeout_s=float(timeout_s),
            poll_interval_s=float(poll),
            replica_rank=0 if broadcast else topo.replica_rank,  # only the group's source uses the log
            replica_world=1 if broadcast else topo.replica_world,
            per_rank=per_rank,
            end_when_consumed=should_check_consumption_status,
        )
        options.check(batch_size, self.spec.plan_world)
        self._receiver = broadcast and topo.replica_rank != 0
        self._received: Position | None = None  # a broadcast receiver's position
        self._received_epoch: str | None = None  # and the epoch its source sent
        self._seat: int | None = None  # with replica seats: the one this dataset holds
        self._resume: Position | None = None
        self._resume_epoch: str | None = None  # the loaded state's epoch (checked against the store)
        self._stream: RankStream | None = None
        self._worker_start: int | None = None  # set by StreamingDataLoader for its worker processes

    @property
    def dp_rank(self) -> int:
        return self.spec.dp_rank

    @property
    def dp_world(self) -> int | None:
        """The data-parallel world (``None`` with TransferQueue's per-``dp_rank`` batches)."""
        return self.spec.dp_world

    @property
    def is_replica_receiver(self) -> bool:
        """Whether this process receives its micro-batches by broadcast (``replica_group``, not rank 0)."""
        return self._receiver

    @staticmethod
    def plan_partition_id(partition_id: str, task_name: str) -> str:
        """The control partition holding the plans of a stream (see :mod:`loaders._control`).

        Clear it (``client.clear_samples(None, name)``) to forget the stream's plans and progress.
        """
        return plan_partition_id(partition_id, task_name)

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[Any]:
        if get_worker_info() is not None:
            if self._worker_start is None:
                return self._plain_worker_micro_batches()
            return self._worker_steps()
        if self._receiver:
            return self.received_micro_batches()
        return self.deliver(self._micro_batches())

    def deliver(self, micro_batches: Iterator[Any]) -> Iterator[Any]:
        """The trainer's micro-batches: as they are, or also broadcast (with the epoch) to the group."""
        if self._group is None:
            return micro_batches
        return (item for item, _epoch in _broadcast.send(self._with_epoch(micro_batches), self._group))

    def _with_epoch(self, micro_batches: Iterator[Any]) -> Iterator[tuple[Any, str | None]]:
        for item in micro_batches:
            yield item, None if self._stream is None else self._stream.epoch

    def received_micro_batches(self) -> Iterator[MicroBatch]:
        """A broadcast receiver's iteration: what the group's source sends (tracking the position)."""
        self._resume = None
        for (data, meta), epoch in _broadcast.receive(self._group):
            self._received_epoch = epoch
            info = meta.extra_info
            after = info["micro_batch_index"] + 1
            last = after >= info["num_micro_batches"]
            self._received = Position(info["step"] + 1) if last else Position(info["step"], after)
            yield MicroBatch(data, meta)

    def open_stream(self) -> tuple[RankStream, Position]:
        """Start an iteration in this process: decide where it starts (used by the loader)."""
        if self.spec.replica_world is None and self._seat is None:  # replicas take seats: first leads
            self._seat = self.spec.plan_log(self.source.get()).take_seat(
                time.monotonic() + self.spec.timeout_s
            )
            self.spec = replace(self.spec, replica_rank=self._seat)
        stream = RankStream(self.source.get(), self.spec)
        start = stream.open(self._resume)
        self._resume, self._stream = None, stream
        return stream, start

    def _micro_batches(self) -> Iterator[MicroBatch]:
        stream, start = self.open_stream()
        producer = StepProducer(self.source.get(), self.spec, first=start.step)
        try:
            yield from stream.micro_batches(iter(producer.next, None), start, producer.done)
        finally:
            producer.stop()

    def _plain_worker_micro_batches(self) -> Iterator[MicroBatch]:
        """In a worker of a plain ``DataLoader`` (or ``StatefulDataLoader``): worker 0 runs the stream.

        A plain ``DataLoader`` interleaves its workers' items one by one, which would mix
        micro-batches of different steps; so worker 0 delivers every micro-batch, in order, and the
        other workers deliver none. :class:`~loaders.StreamingDataLoader` spreads whole steps over
        its workers instead.

        Raises:
            DataPlaneBadRequest: The source cannot be reached from a worker process (a client object
                or the embedded backend), or the dataset has a ``replica_group``.
        """
        info = get_worker_info()
        self.source.check_workers(info.num_workers)
        if self._group is not None:
            raise DataPlaneBadRequest(
                "a dataset with replica_group broadcasts from the trainer's process: use num_workers=0 "
                "or StreamingDataLoader"
            )
        if info.id == 0:
            yield from self._micro_batches()

    def _worker_steps(self) -> Iterator[StepBatch]:
        """In StreamingDataLoader worker ``w`` of ``W``: steps ``start + w, start + w + W, ...``, whole."""
        info = get_worker_info()
        start = self._worker_start
        assert start is not None  # set by StreamingDataLoader before its workers start
        producer = StepProducer(
            self.source.get(), self.spec, first=start + info.id, stride=info.num_workers, since=start
        )
        try:
            while True:
                batch = producer.next()
                yield batch
                producer.done()
                if batch.final:
                    return
        finally:
            producer.stop()

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The next micro-batch this rank will yield (see :mod:`loaders._stream`).

        Taking it also tells the plan log to keep the plans from that step on, so the state stays
        resumable (a rank keeps the plans of its two latest states).
        """
        position, epoch = self._resume, self._resume_epoch
        if self._receiver and self._resume is None:
            position, epoch = self._received, self._received_epoch
        elif self._stream is not None and self._resume is None:
            position, epoch = self._stream.position, self._stream.epoch
            self._stream.mark_checkpoint()
        return {
            "format": STATE_FORMAT,
            "partition_id": self.spec.partition_id,
            "task_name": self.spec.task_name,
            "dp_rank": self.spec.dp_rank,
            "dp_world": self.spec.dp_world,
            "epoch": None if position is None else epoch,
            "step": None if position is None else position.step,
            "micro_batch": 0 if position is None else position.micro_batch,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the next iteration at the micro-batch ``state_dict`` names (from any process).

        The state must belong to this store: its ``epoch`` must be the one in the stream's plan log
        (a store restored from the checkpoint saved together with the state has it; see
        :mod:`loaders._stream`). A broadcast receiver never touches the data plane and checks only
        the state's form: its group's source checks the store.

        Raises:
            DataPlaneBadRequest: The state is malformed, belongs to another stream or rank, or the
                store lacks the plan log it was saved with (restore the matching checkpoint first).
        """
        spec = self.spec
        position = check_state(
            state_dict,
            partition_id=spec.partition_id,
            task_name=spec.task_name,
            dp_rank=spec.dp_rank,
            dp_world=spec.dp_world,
        )
        epoch = state_dict["epoch"]
        if not self._receiver:
            log = spec.plan_log(self.source.get())
            check_epoch(epoch, log.snapshot().epoch, log.partition_id)
        self._resume, self._resume_epoch = position, epoch

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_stream"] = None  # the trainer-side stream stays in the main process
        state["_group"] = None  # DataLoader workers read; only the trainer's process broadcasts
        return state
