"""Shared control records (declarations, field specs, claim counts) kept inside TransferQueue.

TransferQueue has no place for what every process must agree on: a partition's declaration, each
field's dtype and row rank, and how many samples each task has claimed in all. kvplane keeps them
as tags of keys (``registration``, ``field/<name>``, ``claimed/<task>/<client>``) in a reserved
partition per user partition, ``__kvplane__/backend/<partition>``, read all at once by one
``kv_list``. The user cannot touch them; ``clear_samples(None, p)`` wipes both.

Design: docs/internals.md#kvplaneadapterstransfer_queue_controlpy--the-control-records

Examples:
    >>> import torch
    >>> from kvplane.adapters.transfer_queue._control import FieldSpec, ControlState, control_partition
    >>> control_partition("rollouts")
    '__kvplane__/backend/rollouts'
    >>> FieldSpec.of(torch.zeros(4, 3)), FieldSpec.of(torch.zeros(4))
    (FieldSpec(kind='torch.float32', rank=1), FieldSpec(kind='torch.float32', rank=0))
    >>> state = ControlState.parse({
    ...     "registration": {"fields": ["x"], "num_samples": 8, "consumer_tasks": ["train"], "epoch": "e2"},
    ...     "field/x": {"field": "x", "kind": "torch.int64", "rank": 0},
    ...     "claimed/train/c1": {"task": "train", "n": 3, "epoch": "e2"},
    ...     "claimed/train/c2": {"task": "train", "n": 2, "epoch": "e2"},
    ...     "claimed/train/c3": {"task": "train", "n": 9, "epoch": "e1"}})
    >>> state.fields["x"].describe(), state.claimed, state.registration.num_samples
    ('torch.int64 rows of rank 0', {'train': 5}, 8)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from transfer_queue import TransferQueueClient

from kvplane._tensors import OBJECT_KIND, field_kind
from kvplane._validation import BACKEND_OWNER, internal_partition

__all__ = ["ControlPlane", "ControlState", "FieldSpec", "Registration", "control_partition", "user_partition"]

_CONTROL_PREFIX = internal_partition(BACKEND_OWNER, "")
_REGISTRATION_KEY = "registration"
_FIELD_PREFIX = "field/"
_CLAIM_PREFIX = "claimed/"


def control_partition(partition_id: str) -> str:
    """The reserved partition holding ``partition_id``'s control records."""
    return internal_partition(BACKEND_OWNER, partition_id)


def user_partition(control_id: str) -> str | None:
    """The user partition a control partition belongs to (``None`` for any other id)."""
    return control_id[len(_CONTROL_PREFIX) :] if control_id.startswith(_CONTROL_PREFIX) else None


@dataclass(frozen=True)
class FieldSpec:
    """What a field holds, fixed by its first write within a partition.

    Attributes:
        kind: ``_tensors.field_kind``: a dtype string, or ``"object"`` for non-tensor columns.
        rank: The number of dimensions of one row (0 for a ``[B]`` column); ``None`` for objects.
    """

    kind: str
    rank: int | None

    @classmethod
    def of(cls, column: Any) -> FieldSpec:
        """The spec of a validated column (see :func:`kvplane._validation.to_batch`)."""
        kind = field_kind(column)
        return cls(kind, None if kind == OBJECT_KIND else column.dim() - 1)

    def describe(self) -> str:
        """Human-readable, for error messages."""
        return self.kind if self.rank is None else f"{self.kind} rows of rank {self.rank}"


@dataclass(frozen=True)
class Registration:
    """A partition's declaration (see ``DataPlaneClient.register_partition``)."""

    fields: list[str]
    num_samples: int | None
    consumer_tasks: list[str]
    grpo_group_size: int | None = None
    enums: dict[str, list[str]] = field(default_factory=dict)
    epoch: str = ""


@dataclass
class ControlState:
    """Everything the control partition holds about one user partition.

    Attributes:
        registration: The declaration, or ``None`` when the partition was never registered.
        fields: The spec of every field written so far.
        claimed: Samples claimed in all in the registration's epoch, per task (summed over clients).
    """

    registration: Registration | None = None
    fields: dict[str, FieldSpec] = field(default_factory=dict)
    claimed: dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, records: Mapping[str, Mapping[str, Any]]) -> ControlState:
        """Decode ``{key: tags}`` as listed from a control partition."""
        state = cls()
        counts = []
        for key, tags in records.items():
            if key == _REGISTRATION_KEY and tags:
                state.registration = Registration(**tags)
            elif key.startswith(_FIELD_PREFIX) and tags:
                state.fields[tags["field"]] = FieldSpec(tags["kind"], tags["rank"])
            elif key.startswith(_CLAIM_PREFIX) and tags:
                counts.append(tags)
        epoch = state.registration.epoch if state.registration is not None else None
        for tags in counts:
            if tags.get("epoch") == epoch:
                state.claimed[tags["task"]] = state.claimed.get(tags["task"], 0) + int(tags["n"])
        return state


class ControlPlane:
    """Reads and writes control records through a TransferQueue client (coroutines).

    Args:
        client: The process's TransferQueue client.
        client_id: This kvplane client's unique id (names its claim-count keys).
    """

    def __init__(self, client: TransferQueueClient, client_id: str) -> None:
        self._client = client
        self._client_id = client_id

    async def state(self, partition_id: str) -> ControlState:
        """One listing of the control partition (empty state when it does not exist)."""
        ctrl = control_partition(partition_id)
        listing = await self._client.async_kv_list(ctrl)
        return ControlState.parse(listing.get(ctrl, {}))

    async def _write(self, partition_id: str, records: Mapping[str, Mapping[str, Any]]) -> None:
        """Set the tags of control keys, replacing (not merging) what each key held."""
        keys = list(records)
        meta = await self._client.async_kv_retrieve_meta(keys, control_partition(partition_id), create=True)
        meta.custom_meta = [dict(records[k]) for k in keys]
        await self._client.async_set_custom_meta(meta)

    async def add_fields(self, partition_id: str, specs: Mapping[str, FieldSpec]) -> None:
        """Record the specs of fields written to the partition for the first time."""
        await self._write(
            partition_id,
            {f"{_FIELD_PREFIX}{name}": {"field": name, **asdict(spec)} for name, spec in specs.items()},
        )

    async def register(self, partition_id: str, registration: Registration) -> None:
        """Store (or replace) the partition's declaration."""
        await self._write(partition_id, {_REGISTRATION_KEY: asdict(registration)})

    async def set_claimed(self, partition_id: str, task_name: str, epoch: str, total: int) -> None:
        """Store this client's running claim count for a task in a registration epoch."""
        key = f"{_CLAIM_PREFIX}{task_name}/{self._client_id}"
        await self._write(partition_id, {key: {"task": task_name, "n": total, "epoch": epoch}})

    async def wipe(self, partition_id: str) -> None:
        """Drop every control record of the partition (its registration, specs and counts)."""
        # Control keys carry tags only (no stored data), so a controller-side clear is complete.
        await self._client._clear_partition_in_controller(control_partition(partition_id))
