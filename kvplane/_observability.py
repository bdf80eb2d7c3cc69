"""``MetricsDataPlaneClient``: a decorator client that measures every data plane operation.

It wraps any :class:`~kvplane.DataPlaneClient` and, for each public call, emits exactly one flat event
(:class:`DataPlaneEvent`: ``op``, ``partition_id``, ``n_keys``, ``n_bytes``, ``wall_ms``, ``status``)
to its sinks, and keeps cumulative :class:`DataPlaneStats`. Errors are never swallowed: the event has
status ``"error"`` (``"timeout"`` for any :class:`TimeoutError`) and the exception is re-raised. A
sink that raises is logged and ignored. Bytes outstanding are tracked per partition, key and field,
locally to this process; an upsert replaces a field's bytes, never double-counts.

Design: docs/internals.md#kvplane_observabilitypy--events-and-byte-accounting

Examples:
    >>> import torch
    >>> from kvplane import build_data_plane_client
    >>> from kvplane._observability import MetricsDataPlaneClient
    >>> events = []
    >>> client = MetricsDataPlaneClient(build_data_plane_client({"impl": "memory"}), on_event=events.append)
    >>> _ = client.put_samples(["a", "b"], "p", {"x": torch.zeros(2, 4)})
    >>> _ = client.put_samples(["a", "b"], "p", {"x": torch.ones(2, 4)})    # replaces, no double count
    >>> client.stats.bytes_outstanding, client.stats.peak_bytes_outstanding
    (32, 32)
    >>> client.get_samples(["a"], "p", ["x"])["x"].tolist()
    [[1.0, 1.0, 1.0, 1.0]]
    >>> {k: events[-1][k] for k in ("op", "n_keys", "n_bytes", "status")}
    {'op': 'get', 'n_keys': 1, 'n_bytes': 16, 'status': 'ok'}
    >>> client.pop(["a"], "p"); client.bytes_outstanding_by_partition()
    {'p': 16}
    >>> client.close()
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypedDict, TypeVar

import torch
from tensordict import TensorDict, TensorDictBase

from kvplane._client import DataPlaneClient, FieldsLike, TagsLike
from kvplane._meta import DataPlaneCapabilities, DataPlaneGroupMeta, KVBatchMeta
from kvplane._tensors import td_nbytes

__all__ = [
    "DataPlaneEvent",
    "DataPlaneStats",
    "EventSink",
    "EventStatus",
    "MetricsDataPlaneClient",
    "log_event",
]

logger = logging.getLogger(__name__)

EventStatus = Literal["ok", "error", "timeout"]
_T = TypeVar("_T")


class DataPlaneEvent(TypedDict):
    """One operation, as a flat record (the payload every sink receives)."""

    op: str
    partition_id: str
    n_keys: int
    n_bytes: int
    wall_ms: float
    status: EventStatus


EventSink = Callable[[DataPlaneEvent], None]


def log_event(event: DataPlaneEvent) -> None:
    """A sink that logs the event at DEBUG level through this module's logger."""
    logger.debug("data_plane_event: %s", event)


@dataclass
class DataPlaneStats:
    """Cumulative counters of a :class:`MetricsDataPlaneClient`.

    ``total_*`` count successful operations only; failures are counted in ``errors_by_op`` (which
    includes timeouts) and ``timeouts_by_op``. ``max_bytes_per_key_seen`` and
    ``last_put_bytes_per_key`` are ``n_bytes // n_keys`` of successful puts.
    """

    total_bytes: int = 0
    total_keys: int = 0
    total_ops: int = 0
    total_errors: int = 0
    bytes_outstanding: int = 0
    peak_bytes_outstanding: int = 0
    max_bytes_per_key_seen: int = 0
    last_put_bytes_per_key: int = 0
    ops_by_op: dict[str, int] = field(default_factory=dict)
    errors_by_op: dict[str, int] = field(default_factory=dict)
    timeouts_by_op: dict[str, int] = field(default_factory=dict)


def _payload_nbytes(value: Any) -> int:
    """Tensor payload bytes of one column as a caller passes it (non-tensor values count 0)."""
    if isinstance(value, TensorDictBase):
        return td_nbytes(value)
    if isinstance(value, torch.Tensor):
        data = value.values() if value.is_nested else value
        return data.numel() * data.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_payload_nbytes(v) for v in value if isinstance(v, torch.Tensor))
    return 0


def _column_nbytes(fields: FieldsLike) -> dict[str, int]:
    """Payload bytes per field of a ``put_samples`` input, measured without copying or validating it.

    Invalid input measures as whatever it holds; the inner call rejects it, and failed calls are never
    accounted.
    """
    if isinstance(fields, (TensorDictBase, Mapping)):
        return {name: _payload_nbytes(value) for name, value in fields.items()}
    return {}


def _split_evenly(total: int, keys: list[str]) -> list[int]:
    share, remainder = divmod(total, len(keys))
    return [share + (1 if i < remainder else 0) for i in range(len(keys))]


class MetricsDataPlaneClient(DataPlaneClient):
    """A :class:`~kvplane.DataPlaneClient` that measures every call of the client it wraps.

    Thread-safe: stats and accounting are updated under one lock; sinks run outside it, so a slow
    sink never serialises other threads' bookkeeping (and may see events slightly out of order).

    Args:
        inner: The client to wrap.
        on_event: A sink called with every :class:`DataPlaneEvent` (``None``: no sink yet; add more
            with :meth:`add_sink`).

    Attributes:
        inner: The wrapped client.
        stats: The live :class:`DataPlaneStats` (read it under no lock at your own risk; use
            :meth:`snapshot` for a consistent copy).
        prometheus: The exporter that tracks this client, if any (set by
            :meth:`kvplane._prometheus.PrometheusExporter.track`, which also has it closed with the client).
    """

    def __init__(self, inner: DataPlaneClient, on_event: EventSink | None = None) -> None:
        self.inner = inner
        self.stats = DataPlaneStats()
        self.prometheus: Any = None
        self._sinks: list[EventSink] = [] if on_event is None else [on_event]
        self._on_close: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        # partition -> key -> field -> bytes
        self._outstanding: dict[str, dict[str, dict[str, int]]] = {}

    # ------------------------------------------------------------------ sinks and queries
    def add_sink(self, sink: EventSink) -> None:
        """Also send every future event to ``sink``."""
        with self._lock:
            self._sinks = [*self._sinks, sink]

    def add_close_hook(self, hook: Callable[[], None]) -> None:
        """Call ``hook()`` once this client is closed, after the inner client (e.g. stop an exporter)."""
        with self._lock:
            self._on_close.append(hook)

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of :attr:`stats` plus ``n_keys_outstanding`` and ``n_partitions_outstanding``."""
        with self._lock:
            snap = asdict(self.stats)
            snap["n_keys_outstanding"] = sum(len(keys) for keys in self._outstanding.values())
            snap["n_partitions_outstanding"] = len(self._outstanding)
        return snap

    def bytes_outstanding_by_partition(self) -> dict[str, int]:
        """``{partition_id: bytes}`` of what this client has put and not yet cleared."""
        with self._lock:
            return {
                p: sum(sum(cols.values()) for cols in keys.values()) for p, keys in self._outstanding.items()
            }

    # ------------------------------------------------------------------ core
    def _run(
        self,
        op: str,
        partition_id: str,
        fn: Callable[[], _T],
        *,
        n_keys: int = 0,
        n_bytes: int = 0,
        count_keys: Callable[[_T], int] | None = None,
        on_success: Callable[[_T], None] | None = None,
    ) -> _T:
        """Call ``fn``, emit one event and return its result (re-raising whatever it raises).

        On success, ``n_bytes`` becomes the payload of a TensorDict result, ``n_keys`` (when still 0)
        ``count_keys(result)`` or the length of a meta or list result, and ``on_success(result)``
        updates the accounting under the lock.
        """
        start = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:
            self._emit(
                op,
                partition_id,
                n_keys,
                n_bytes,
                start,
                "timeout" if isinstance(exc, TimeoutError) else "error",
            )
            raise
        if isinstance(result, TensorDictBase):
            n_bytes = td_nbytes(result)
        elif n_keys == 0:
            if count_keys is not None:
                n_keys = count_keys(result)
            elif isinstance(result, (KVBatchMeta, list)):
                n_keys = len(result)
        self._emit(op, partition_id, n_keys, n_bytes, start, "ok", lambda: on_success and on_success(result))
        return result

    def _emit(
        self,
        op: str,
        partition_id: str,
        n_keys: int,
        n_bytes: int,
        start: float,
        status: EventStatus,
        account: Callable[[], object] | None = None,
    ) -> None:
        event = DataPlaneEvent(
            op=op,
            partition_id=partition_id,
            n_keys=n_keys,
            n_bytes=n_bytes,
            wall_ms=(time.perf_counter() - start) * 1000.0,
            status=status,
        )
        with self._lock:
            stats = self.stats
            if status == "ok":
                stats.total_ops += 1
                stats.total_keys += n_keys
                stats.total_bytes += n_bytes
                stats.ops_by_op[op] = stats.ops_by_op.get(op, 0) + 1
                if op == "put" and n_keys > 0:
                    stats.last_put_bytes_per_key = n_bytes // n_keys
                    stats.max_bytes_per_key_seen = max(
                        stats.max_bytes_per_key_seen, stats.last_put_bytes_per_key
                    )
                if account is not None:
                    account()
            else:
                stats.total_errors += 1
                stats.errors_by_op[op] = stats.errors_by_op.get(op, 0) + 1
                if status == "timeout":
                    stats.timeouts_by_op[op] = stats.timeouts_by_op.get(op, 0) + 1
            sinks = self._sinks
        for sink in sinks:
            try:
                sink(event)
            except Exception:
                logger.exception(
                    "kvplane observability sink %r failed on %r; the operation is unaffected", sink, op
                )

    # accounting helpers: called with self._lock held
    def _record_put(self, partition_id: str, ids: list[str], columns: dict[str, int]) -> None:
        if not ids or not columns:
            return
        keys = self._outstanding.setdefault(partition_id, {})
        delta = 0
        for name, total in columns.items():
            for key, share in zip(ids, _split_evenly(total, ids), strict=True):
                cols = keys.setdefault(key, {})
                delta += share - cols.get(name, 0)
                cols[name] = share
        stats = self.stats
        stats.bytes_outstanding += delta
        stats.peak_bytes_outstanding = max(stats.peak_bytes_outstanding, stats.bytes_outstanding)

    def _record_clear(self, partition_id: str, ids: list[str] | None) -> None:
        keys = self._outstanding.get(partition_id)
        if keys is None:
            return
        if ids is None:
            freed = sum(sum(cols.values()) for cols in keys.values())
            del self._outstanding[partition_id]
        else:
            freed = sum(sum(keys.pop(key, {}).values()) for key in ids)
            if not keys:
                del self._outstanding[partition_id]
        self.stats.bytes_outstanding -= freed

    # ------------------------------------------------------------------ (A) task-mediated
    def register_partition(
        self,
        partition_id: str,
        fields: list[str],
        num_samples: int | None,
        consumer_tasks: list[str],
        grpo_group_size: int | None = None,
        enums: dict[str, list[str]] | None = None,
    ) -> None:
        """See :meth:`kvplane.DataPlaneClient.register_partition` (event ``register``)."""
        return self._run(
            "register",
            partition_id,
            lambda: self.inner.register_partition(
                partition_id,
                fields,
                num_samples,
                consumer_tasks,
                grpo_group_size=grpo_group_size,
                enums=enums,
            ),
            n_keys=num_samples if isinstance(num_samples, int) else 0,
        )

    def claim_meta(
        self,
        partition_id: str,
        task_name: str,
        required_fields: list[str],
        batch_size: int,
        dp_rank: int | None = None,
        blocking: bool = True,
        timeout_s: float = 60.0,
    ) -> KVBatchMeta:
        """See :meth:`kvplane.DataPlaneClient.claim_meta` (event ``claim_meta``)."""
        return self._run(
            "claim_meta",
            partition_id,
            lambda: self.inner.claim_meta(
                partition_id,
                task_name,
                required_fields,
                batch_size,
                dp_rank=dp_rank,
                blocking=blocking,
                timeout_s=timeout_s,
            ),
        )

    def get_data(self, meta: KVBatchMeta, select_fields: list[str] | None = None) -> TensorDict:
        """See :meth:`kvplane.DataPlaneClient.get_data` (event ``get_data``)."""
        return self._run(
            "get_data",
            meta.partition_id,
            lambda: self.inner.get_data(meta, select_fields=select_fields),
            n_keys=len(meta.sample_ids),
        )

    def check_consumption_status(self, partition_id: str, task_names: list[str]) -> bool:
        """See :meth:`kvplane.DataPlaneClient.check_consumption_status`."""
        return self._run(
            "check_consumption_status",
            partition_id,
            lambda: self.inner.check_consumption_status(partition_id, task_names),
        )

    # ------------------------------------------------------------------ (B) direct-by-key
    def put_samples(
        self,
        sample_ids: list[str],
        partition_id: str,
        fields: FieldsLike = None,
        tags: TagsLike = None,
    ) -> KVBatchMeta:
        """See :meth:`kvplane.DataPlaneClient.put_samples` (event ``put``; bytes of the input)."""
        ids = list(sample_ids) if isinstance(sample_ids, (list, tuple)) else []
        columns = _column_nbytes(fields)
        return self._run(
            "put",
            partition_id,
            lambda: self.inner.put_samples(sample_ids, partition_id, fields=fields, tags=tags),
            n_keys=len(ids),
            n_bytes=sum(columns.values()),
            on_success=lambda _: self._record_put(partition_id, ids, columns),
        )

    def get_samples(
        self, sample_ids: list[str], partition_id: str, select_fields: list[str] | None
    ) -> TensorDict:
        """See :meth:`kvplane.DataPlaneClient.get_samples` (event ``get``; bytes of the result)."""
        return self._run(
            "get",
            partition_id,
            lambda: self.inner.get_samples(sample_ids, partition_id, select_fields=select_fields),
            n_keys=len(sample_ids) if isinstance(sample_ids, (list, tuple)) else 0,
        )

    def clear_samples(self, sample_ids: list[str] | None, partition_id: str) -> None:
        """See :meth:`kvplane.DataPlaneClient.clear_samples` (event ``clear``)."""
        return self._release("clear", self.inner.clear_samples, sample_ids, partition_id)

    def _release(
        self, op: str, method: Callable[[Any, str], None], keys: list[str] | None, partition_id: str
    ) -> None:
        ids = None if keys is None else list(keys)
        return self._run(
            op,
            partition_id,
            lambda: method(keys, partition_id),
            n_keys=0 if ids is None else len(ids),
            on_success=lambda _: self._record_clear(partition_id, ids),
        )

    # ------------------------------------------------------------------ (C) recovery / control plane
    def ping(self, timeout_s: float | None = None) -> None:
        """See :meth:`kvplane.DataPlaneClient.ping` (event ``ping``)."""
        return self._run("ping", "", lambda: self.inner.ping(timeout_s=timeout_s))

    def list_keys(
        self,
        partition_id: str | None = None,
        cursor: int | None = None,
        count: int | None = None,
        match: str | None = None,
    ) -> Any:
        """See :meth:`kvplane.DataPlaneClient.list_keys` (event ``list_keys``; n_keys = keys listed)."""
        if cursor is None and count is None and match is None:
            return self._run(
                "list_keys",
                partition_id or "",
                lambda: self.inner.list_keys(partition_id),
                count_keys=lambda listing: sum(len(keys) for keys in listing.values()),
            )
        return self._run(
            "list_keys",
            partition_id or "",
            lambda: self.inner.list_keys(partition_id, cursor, count, match),
            count_keys=lambda page: sum(len(keys) for keys in page[1].values()),
        )

    def list_metadata(self, partition_id: str) -> list[DataPlaneGroupMeta]:
        """See :meth:`kvplane.DataPlaneClient.list_metadata` (event ``list_metadata``; n_keys = groups)."""
        return self._run("list_metadata", partition_id, lambda: self.inner.list_metadata(partition_id))

    def save_checkpoint(
        self,
        checkpoint_dir: str | os.PathLike[str],
        *,
        include_storage: bool = True,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """See :meth:`kvplane.DataPlaneClient.save_checkpoint` (event ``save_checkpoint``)."""
        def save() -> None:
            self.inner.save_checkpoint(checkpoint_dir, include_storage=include_storage, metadata=metadata)

        return self._run("save_checkpoint", "", save)

    def load_checkpoint(self, checkpoint_dir: str | os.PathLike[str]) -> dict[str, Any]:
        """See :meth:`kvplane.DataPlaneClient.load_checkpoint` (event ``load_checkpoint``). The store is
        replaced, so the outstanding-bytes accounting starts over from the writes after it."""
        return self._run(
            "load_checkpoint",
            "",
            lambda: self.inner.load_checkpoint(checkpoint_dir),
            on_success=lambda _: self._outstanding.clear(),
        )

    def list_sample_ids(self, partition_id: str) -> list[str]:
        """See :meth:`kvplane.DataPlaneClient.list_sample_ids` (event ``list_sample_ids``)."""
        return self._run("list_sample_ids", partition_id, lambda: self.inner.list_sample_ids(partition_id))

    def depth(self, partition_id: str) -> int:
        """See :meth:`kvplane.DataPlaneClient.depth` (event ``depth``)."""
        return self._run("depth", partition_id, lambda: self.inner.depth(partition_id))

    def pop(self, keys: list[str], partition_id: str) -> None:
        """See :meth:`kvplane.DataPlaneClient.pop` (event ``pop``; frees the keys' outstanding bytes)."""
        return self._release("pop", self.inner.pop, keys, partition_id)

    def evict(self, keys: list[str], partition_id: str) -> None:
        """See :meth:`kvplane.DataPlaneClient.evict` (event ``evict``; frees the keys' outstanding bytes)."""
        return self._release("evict", self.inner.evict, keys, partition_id)

    def get_capabilities(self) -> DataPlaneCapabilities:
        """The inner client's capabilities (no event)."""
        return self.inner.get_capabilities()

    # ------------------------------------------------------------------ (D) lifecycle
    def close(self) -> None:
        """Close the inner client (event ``close``), then run the close hooks (each once, in order)."""
        try:
            self._run("close", "", self.inner.close)
        finally:
            with self._lock:
                hooks, self._on_close = self._on_close, []
            for hook in hooks:
                hook()
