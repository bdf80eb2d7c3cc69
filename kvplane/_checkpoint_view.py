"""A checkpoint directory seen offline: what ``kvplane ls``/``stats --checkpoint DIR`` show.

:class:`CheckpointView` reads a checkpoint with :func:`kvplane._checkpoint.read_checkpoint` (every
file it reads is checksum-verified; no backend is started) and answers the inspection calls the
CLI makes of a live client: ``list_keys``, ``list_metadata`` (groups derived from the tags exactly
as every backend derives them, :func:`kvplane._groups.groups_from_tags`) and ``depth``. kvplane's own
partitions (loader plan logs, ``__kvplane__/...``) are listed too: a checkpoint holds them.
:meth:`CheckpointView.stats` adds what only a checkpoint has: ``storage_saved``, the user's
metadata, registrations, each task's claims and the bytes of each field (with ``storage=True``,
which reads the tensors).

Examples:
    >>> import tempfile, torch
    >>> from kvplane.adapters.memory import MemoryDataPlaneClient
    >>> from kvplane._checkpoint_view import CheckpointView
    >>> client = MemoryDataPlaneClient()
    >>> _ = client.put_samples(["k0", "k1"], "p", {"x": torch.zeros(2, 3)}, tags=[{"group_id": "g"}] * 2)
    >>> ckpt = tempfile.mkdtemp() + "/ckpt"
    >>> client.save_checkpoint(ckpt, metadata={"step": 7}); client.close()
    >>> view = CheckpointView(ckpt, storage=True)
    >>> view.list_keys("p"), [g.group_id for g in view.list_metadata("p")]
    ({'p': {'k0': {'group_id': 'g'}, 'k1': {'group_id': 'g'}}}, ['g'])
    >>> doc = view.stats()
    >>> doc["user_metadata"], doc["by_partition"]["p"]["fields"]["x"]
    ({'step': 7}, {'kind': 'torch.float32', 'rows': 2, 'bytes': 24})
"""

from __future__ import annotations

import os
from typing import Any

from kvplane._checkpoint import DenseRows, FieldColumn, ObjectRows, PartitionSnapshot, read_checkpoint
from kvplane._client import DataPlaneClient
from kvplane._groups import groups_from_tags
from kvplane._meta import DataPlaneGroupMeta
from kvplane._validation import check_scan

__all__ = ["CheckpointView"]


def _field_bytes(column: FieldColumn) -> int | None:
    """Bytes of a field's tensor rows (``None`` for non-tensor values, whose size is not defined)."""
    total = 0
    for block in column.blocks:
        if isinstance(block, ObjectRows):
            return None
        data = block.data if isinstance(block, DenseRows) else block.values
        total += data.numel() * data.element_size()
    return total


class CheckpointView:
    """A checkpoint, read once, answering the CLI's inspection calls.

    Args:
        checkpoint_dir: The directory (``<dir>.old`` is read when a save died, as a load would).
        storage: Also read (and verify) the column values, for :meth:`stats`' bytes per field.

    Raises:
        CheckpointNotFoundError: The directory or its ``metadata.json`` is missing.
        DataPlaneCheckpointError: A file is corrupted, truncated or of another version.
    """

    def __init__(self, checkpoint_dir: str | os.PathLike[str], *, storage: bool = False) -> None:
        self.path = os.fspath(checkpoint_dir)
        self.snapshot = read_checkpoint(checkpoint_dir, storage=storage)
        self._bytes = storage and self.snapshot.storage_saved

    def _partition(self, partition_id: str) -> PartitionSnapshot | None:
        return self.snapshot.partitions.get(partition_id)

    def list_keys(
        self,
        partition_id: str | None = None,
        cursor: int | None = None,
        count: int | None = None,
        match: str | None = None,
    ) -> dict[str, dict[str, dict[str, Any]]] | tuple[int, dict[str, dict[str, dict[str, Any]]]]:
        """``{partition: {key: tags}}``: every partition, or just ``partition_id`` (empty if absent);
        with ``cursor``, one page as :meth:`DataPlaneClient.list_keys` documents (the cursor is a
        position in the checkpoint's key order)."""
        if cursor is not None or count is not None or match is not None:
            pid, start, page, prefix = check_scan(partition_id, cursor, count, match)
            part = self._partition(pid)
            if part is None:
                return 0, {}
            stop = start + page
            items = {
                k: dict(t)
                for k, t in zip(part.keys[start:stop], part.tags[start:stop], strict=True)
                if prefix is None or k.startswith(prefix)
            }
            return (stop if stop < len(part.keys) else 0), {pid: items}
        names = sorted(self.snapshot.partitions) if partition_id is None else [partition_id]
        out = {}
        for name in names:
            part = self._partition(name)
            if part is not None:
                out[name] = {k: dict(t) for k, t in zip(part.keys, part.tags, strict=True)}
        return out

    def list_metadata(self, partition_id: str) -> list[DataPlaneGroupMeta]:
        """The partition's rollout groups, derived from its tags."""
        return groups_from_tags(partition_id, self.list_keys(partition_id).get(partition_id, {}))

    def depth(self, partition_id: str) -> int:
        """Committed and complete groups (the contract's definition)."""
        return DataPlaneClient.depth(self, partition_id)  # type: ignore[arg-type]  # uses list_metadata only

    def stats(self) -> dict[str, Any]:
        """Everything ``kvplane stats --checkpoint`` reports (see the module docstring)."""
        by_partition = {}
        for name in sorted(self.snapshot.partitions):
            part = self.snapshot.partitions[name]
            reg = part.registration
            groups = self.list_metadata(name)
            by_partition[name] = {
                "keys": len(part.keys),
                "groups": len(groups),
                "depth": self.depth(name),
                "num_samples": None if reg is None else reg.num_samples,
                "tasks": {
                    t: {"claimed": len(s.claimed), "claimed_total": s.claimed_total}
                    for t, s in sorted(part.tasks.items())
                },
                "fields": {
                    f: {
                        "kind": c.kind,
                        "rows": part.holders(f),
                        "bytes": _field_bytes(c) if self._bytes else None,
                    }
                    for f, c in sorted(part.fields.items())
                },
            }
        sizes = [
            f["bytes"] for p in by_partition.values() for f in p["fields"].values() if f["bytes"] is not None
        ]
        return {
            "checkpoint": self.path,
            "storage_saved": self.snapshot.storage_saved,
            "user_metadata": self.snapshot.metadata,
            "partitions": len(by_partition),
            "keys": sum(p["keys"] for p in by_partition.values()),
            "groups": sum(p["groups"] for p in by_partition.values()),
            "depth": sum(p["depth"] for p in by_partition.values()),
            "tensor_bytes": sum(sizes) if self._bytes else None,
            "by_partition": by_partition,
        }
