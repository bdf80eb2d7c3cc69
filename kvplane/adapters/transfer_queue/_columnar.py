"""``backend: columnar``: a TransferQueue storage backend keeping one Ray object per field per put.

Registered with TransferQueue beneath its controller (``StorageBootstrapProvider`` and
``StorageManagerFactory``, name :data:`BACKEND`): the controller still owns keys, tags, production
and claims; this manager decides where bytes live. Layout and reads: :mod:`._columns`. A put
announces per (sample, field) the object and the row (``{"o": object id, "r": row}``); a per-node
*owner* actor keeps each object alive beyond the process that put it, until its last row is gone.

Design: docs/internals.md#kvplaneadapterstransfer_queue_columnarpy--the-columnar-backend

Examples:
    >>> from kvplane.adapters.transfer_queue._columnar import BACKEND, row_locations
    >>> BACKEND
    'KvplaneColumnar'
    >>> row_locations([{"x": {"o": "n1|a", "r": 0}, "y": {"o": "n1|b", "r": 0}}, {"x": {"o": "n1|a", "r": 1}}])
    {'n1|a': [0, 1], 'n1|b': [0]}
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, Callable

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tensordict import TensorDict
from transfer_queue import BatchMeta, StorageKeyNotFoundError
from transfer_queue.metadata import extract_field_schema
from transfer_queue.storage.bootstrap.provider import StorageBootstrapProvider
from transfer_queue.storage.managers.base import StorageManager, StorageManagerFactory

from ._columns import encode, gather, rows_of

__all__ = ["BACKEND", "ColumnarStorageManager", "owner_names", "row_locations", "stop_owners"]

logger = logging.getLogger(__name__)

BACKEND = "KvplaneColumnar"
NAMESPACE = "transfer_queue"
OWNER_PREFIX = "kvplane-columnar-owner:"
_START_TIMEOUT_S = 60.0
#: Owner actors this process started (it bootstrapped the deployment and tears them down).
_STARTED: dict[str, Any] = {}


@ray.remote(num_cpus=0)
class _ColumnOwner:
    """Holds the references of one node's column objects and their live rows."""

    def __init__(self) -> None:
        self._objects: dict[str, tuple[Any, set[int]]] = {}

    def ping(self) -> int:
        return len(self._objects)

    def adopt(self, boxed: dict[str, list[Any]], rows: dict[str, int], copy: bool) -> None:
        """Keep ``boxed`` objects (references in one-element lists, so Ray passes them unresolved);
        ``copy``: store a copy owned by this actor (the putting process may exit)."""
        for oid, [ref] in boxed.items():
            if copy:
                ref = ray.put(ray.get(ref))
            self._objects[oid] = (ref, set(range(rows[oid])))

    def refs(self, oids: list[str]) -> list[list[Any] | None]:
        return [[self._objects[o][0]] if o in self._objects else None for o in oids]

    def release(self, rows: dict[str, list[int]]) -> int:
        """Forget ``rows``; free objects left without a live row. Returns how many were freed."""
        freed = 0
        for oid, gone in rows.items():
            held = self._objects.get(oid)
            if held is None:
                continue
            held[1].difference_update(gone)
            if not held[1]:
                del self._objects[oid]
                freed += 1
        return freed


def owner_names() -> list[str]:
    """The owner actors running in the Ray cluster."""
    listed = ray.util.list_named_actors(all_namespaces=True)
    return sorted(a["name"] for a in listed if a["namespace"] == NAMESPACE and a["name"].startswith(OWNER_PREFIX))


@StorageBootstrapProvider.register_provider(BACKEND)
def start_owners(conf: Any) -> dict[str, Any]:
    """TransferQueue's bootstrap hook: one owner actor per alive node (owned by this process)."""
    handles = {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        name = OWNER_PREFIX + node["NodeID"]
        handles[name] = _ColumnOwner.options(  # type: ignore[attr-defined]
            name=name,
            namespace=NAMESPACE,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
        ).remote()
    ray.get([h.ping.remote() for h in handles.values()], timeout=_START_TIMEOUT_S)
    _STARTED.clear()
    _STARTED.update(handles)
    logger.info("started %d columnar owner actor(s)", len(handles))
    return handles


def stop_owners() -> None:
    """Kill the owner actors this process started (frees every stored object)."""
    for handle in _STARTED.values():
        try:
            ray.kill(handle)
        except Exception:  # already gone
            logger.debug("owner actor already gone", exc_info=True)
    _STARTED.clear()


def row_locations(per_sample: Iterable[dict[str, Any]]) -> dict[str, list[int]]:
    """``{object id: [rows]}`` of the locations in ``per_sample`` custom backend meta dicts."""
    out: dict[str, list[int]] = defaultdict(list)
    for fields in per_sample:
        for loc in (fields or {}).values():
            if isinstance(loc, dict) and "o" in loc:
                out[loc["o"]].append(loc["r"])
    return dict(out)


def _owner_of(oid: str) -> str:
    return oid.split("|", 1)[0]


@StorageManagerFactory.register(BACKEND)
class ColumnarStorageManager(StorageManager):
    """TransferQueue storage manager of the columnar layout (see the module docstring)."""

    def __init__(self, controller_info: Any, config: Any, zmq_context: Any = None) -> None:
        super().__init__(controller_info, config, zmq_context=zmq_context)
        self._owners: dict[str, Any] = dict(_STARTED)
        self._copy = not _STARTED  # an attached process's objects die with it unless copied
        self._home: str | None = None
        self._known = set(_STARTED) or set(owner_names())  # the owners a health check expects

    def owners_gone(self, alive: Iterable[str]) -> list[str]:
        """The owners this manager knows of (started, found, or used) that ``alive`` lacks."""
        alive = set(alive)
        return sorted(name for name in self._known if name not in alive)

    # ------------------------------------------------------------------ owners
    def _owner(self, name: str) -> Any:
        handle = self._owners.get(name)
        if handle is None:
            self._known.add(name)
            try:
                handle = ray.get_actor(name, namespace=NAMESPACE)
            except ValueError as exc:  # a dead owner's objects are lost with it
                raise ConnectionError(f"columnar owner {name} is gone") from exc
            self._owners[name] = handle
        return handle

    def _home_owner(self) -> str:
        """This node's owner (any owner when this node joined after the bootstrap)."""
        if self._home is None:
            names = owner_names()
            if not names:
                raise RuntimeError("no columnar owner actor runs in this Ray cluster")
            mine = OWNER_PREFIX + ray.get_runtime_context().get_node_id()
            self._home = mine if mine in names else names[0]
        return self._home

    @staticmethod
    async def _call(fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn)

    async def _release(self, rows: dict[str, list[int]]) -> None:
        by_owner: dict[str, dict[str, list[int]]] = defaultdict(dict)
        for oid, gone in rows.items():
            by_owner[_owner_of(oid)][oid] = gone

        def release() -> None:
            for name, gone in by_owner.items():
                try:
                    ray.get(self._owner(name).release.remote(gone))
                except Exception:  # like TransferQueue's KV backends: a failed delete is logged
                    logger.warning("could not release rows at columnar owner %s", name, exc_info=True)

        await self._call(release)

    # ------------------------------------------------------------------ the StorageManager contract
    async def put_data(self, data: TensorDict, metadata: BatchMeta, data_parser: Any = None) -> None:
        if data_parser is not None:
            raise NotImplementedError("data_parser is not supported by the columnar backend")
        n = len(metadata.global_indexes)
        if data.batch_size[0] != n:
            raise ValueError(f"Batch size of data ({data.batch_size[0]}) does not match expected ({n})")
        if n == 0:
            return
        fields = sorted(data.keys())
        payloads = {f: encode(data.get(f)) for f in fields}
        home = self._home_owner()
        oids = {f: f"{home}|{uuid.uuid4().hex}" for f in fields}
        old = row_locations({f: m.get(f) for f in fields} for m in metadata._custom_backend_meta)
        owner = self._owner(home)

        def store() -> None:
            boxed = {oids[f]: [ray.put(payloads[f])] for f in fields}
            ray.get(owner.adopt.remote(boxed, {oids[f]: rows_of(payloads[f]) for f in fields}, self._copy))

        await self._call(store)
        per_sample = {
            gi: {f: {"o": oids[f], "r": i} for f in fields} for i, gi in enumerate(metadata.global_indexes)
        }
        for i, gi in enumerate(metadata.global_indexes):
            metadata._custom_backend_meta[i].update(per_sample[gi])
        await self.notify_data_update(
            metadata.partition_ids[0], metadata.global_indexes, extract_field_schema(data), per_sample
        )
        if old:  # rows this put overwrote
            await self._release(old)

    async def get_data(self, metadata: BatchMeta) -> TensorDict:
        fields = list(metadata.field_names)
        n = len(metadata.global_indexes)
        if not fields:
            return TensorDict({}, batch_size=n)
        locations = []
        for name in fields:
            column = []
            for i in range(n):
                loc = metadata._custom_backend_meta[i].get(name)
                if not isinstance(loc, dict):
                    raise StorageKeyNotFoundError(f"no stored row of field {name!r} for sample {metadata.global_indexes[i]}")
                column.append((loc["o"], loc["r"]))
            locations.append(column)
        oids = list(dict.fromkeys(o for column in locations for o, _ in column))
        payloads = await self._call(lambda: self._fetch(oids))
        return TensorDict(
            {name: gather([(payloads[o], r) for o, r in column]) for name, column in zip(fields, locations)},
            batch_size=n,
        )

    def _fetch(self, oids: list[str]) -> dict[str, Any]:
        """The payloads of ``oids`` (zero-copy views on this node)."""
        by_owner: dict[str, list[str]] = defaultdict(list)
        for oid in oids:
            by_owner[_owner_of(oid)].append(oid)
        names = list(by_owner)
        answers = ray.get([self._owner(name).refs.remote(by_owner[name]) for name in names])
        refs = {}
        for name, boxed in zip(names, answers):
            for oid, box in zip(by_owner[name], boxed):
                if box is None:
                    raise StorageKeyNotFoundError(f"column object {oid} was freed (its rows were cleared)")
                refs[oid] = box[0]
        values = ray.get(list(refs.values()))
        return dict(zip(refs, values))

    async def clear_data(self, metadata: BatchMeta) -> None:
        rows = row_locations(metadata._custom_backend_meta)
        if rows:
            await self._release(rows)
