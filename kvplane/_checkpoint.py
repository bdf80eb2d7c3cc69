"""Checkpoint directories: a store's durable state on disk, for any backend.

A backend turns its state into a :class:`StoreSnapshot` (plain data) and back; this module owns the
directory. ``write_checkpoint``/``read_checkpoint`` follow TransferQueue 0.1.11's
``save_checkpoint``/``load_checkpoint``. A save killed at any moment leaves the previous or the new
checkpoint loadable, never a mix. Every file's size and crc32 are checked before its content is used;
a bad or foreign-version file is a :class:`~kvplane.DataPlaneCheckpointError` naming the file.

**Trust boundary:** ``index.pkl`` and ``objects.pkl`` are pickles: load only checkpoints you (or a
party you trust) wrote. The checksums catch corruption, not tampering.

Design: docs/internals.md#kvplane_checkpointpy--the-on-disk-format

Examples:
    >>> import tempfile, torch
    >>> from kvplane._checkpoint import (DenseRows, FieldColumn, PartitionSnapshot, StoreSnapshot,
    ...                                  read_checkpoint, write_checkpoint)
    >>> column = FieldColumn("torch.int64", [DenseRows(torch.arange(4).view(2, 2))])
    >>> part = PartitionSnapshot(keys=["a", "b"], tags=[{"n": 1}, {}], layouts=[("x",)], layout_ids=[0, 0],
    ...                          fields={"x": column})
    >>> path = tempfile.mkdtemp() + "/ckpt"
    >>> write_checkpoint(path, StoreSnapshot({"p": part}), metadata={"step": 10})
    >>> back = read_checkpoint(path)
    >>> back.metadata, back.partitions["p"].keys, back.partitions["p"].fields["x"].blocks[0].data.tolist()
    ({'step': 10}, ['a', 'b'], [[0, 1], [2, 3]])
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import shutil
import struct
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Union

import torch
from isal.isal_zlib import crc32  # zlib's crc32 values, with ISA-L's carry-less-multiply code: ~6x faster

from kvplane._errors import (
    CheckpointNotFoundError,
    DataPlaneBadRequest,
    DataPlaneCheckpointError,
    DataPlaneReadError,
    DataPlaneWriteError,
)
from kvplane._tensors import OBJECT_KIND
from kvplane._validation import Declaration

__all__ = [
    "FORMAT",
    "VERSION",
    "Block",
    "DenseRows",
    "FieldColumn",
    "ObjectRows",
    "PartitionSnapshot",
    "RaggedRows",
    "StoreSnapshot",
    "TaskState",
    "read_checkpoint",
    "write_checkpoint",
]

logger = logging.getLogger(__name__)

FORMAT = "kvplane-checkpoint"
VERSION = 1

MANIFEST_FILE = "manifest.json"
METADATA_FILE = "metadata.json"  # TransferQueue's name and content
STATE_FILE = "state.json"
INDEX_FILE = "index.pkl"
OBJECTS_FILE = "objects.pkl"
TENSORS_FILE = "tensors.safetensors"

_FLUSH_EVERY = 64 << 20
_PIECE = 256 << 10  # bytes per write/read call, checksummed while in the CPU cache


# ---------------------------------------------------------------------------------------- the snapshot
@dataclass
class DenseRows:
    """Rows of one shape: ``data`` is ``[n, *row_shape]`` (``[n]`` for 0-dim rows)."""

    data: torch.Tensor

    def __len__(self) -> int:
        return int(self.data.shape[0])


@dataclass
class RaggedRows:
    """Rows differing in their first dim: row ``i`` is ``values[offsets[i]:offsets[i + 1]]``."""

    values: torch.Tensor
    offsets: torch.Tensor  # int64 [n + 1], offsets[0] == 0, non-decreasing, offsets[-1] == len(values)

    def __len__(self) -> int:
        return int(self.offsets.numel()) - 1


@dataclass
class ObjectRows:
    """Non-tensor values, one per row."""

    values: list[Any]

    def __len__(self) -> int:
        return len(self.values)


Block = Union[DenseRows, RaggedRows, ObjectRows]


@dataclass
class FieldColumn:
    """One field of a partition.

    ``kind`` is the dtype the field keeps (``"torch.float32"``..., or ``"object"``); ``blocks`` hold
    its rows for the keys holding the field, in key order (empty in a checkpoint saved without storage).
    """

    kind: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class TaskState:
    """A consumer task's cursor: positions (into the partition's keys) it has claimed, and how many
    samples it has ever claimed (cleared ones included; ``num_samples`` is counted against this)."""

    claimed_total: int
    claimed: list[int] = field(default_factory=list)


@dataclass
class PartitionSnapshot:
    """One partition. Key ``i`` holds the fields ``layouts[layout_ids[i]]`` (in that order) and the
    tags ``tags[i]``; a tag-only key has the empty layout."""

    keys: list[str]
    tags: list[dict[str, Any]]
    layouts: list[tuple[str, ...]]
    layout_ids: list[int]
    fields: dict[str, FieldColumn] = field(default_factory=dict)
    registration: Declaration | None = None
    tasks: dict[str, TaskState] = field(default_factory=dict)

    def holders(self, name: str) -> int:
        """How many keys hold field ``name``."""
        per_layout = [name in layout for layout in self.layouts]
        return sum(1 for i in self.layout_ids if per_layout[i])


@dataclass
class StoreSnapshot:
    """A whole store. ``storage_saved`` and ``metadata`` (the user's pairs) are filled by
    :func:`read_checkpoint`; :func:`write_checkpoint` takes them as arguments instead."""

    partitions: dict[str, PartitionSnapshot]
    storage_saved: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------- checksums
class _Crc:
    """crc32 of a byte stream, fed each piece right next to its I/O while the piece is in the CPU
    cache (measured faster here than checksumming on a helper thread: 0.71 s vs 0.85 s per GiB)."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, piece: memoryview) -> None:
        self.value = crc32(piece, self.value)

    def hexdigest(self) -> str:
        return f"{self.value:08x}"


def _pieces(view: memoryview) -> Iterator[memoryview]:
    for start in range(0, len(view), _PIECE):
        yield view[start : start + _PIECE]


# ---------------------------------------------------------------------------------------- safetensors
_ST_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.complex64: "C64",
}  # fmt: skip
for _name, _st in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"), ("uint16", "U16"),
                   ("uint32", "U32"), ("uint64", "U64")):  # fmt: skip
    if hasattr(torch, _name):
        _ST_NAMES[getattr(torch, _name)] = _st
_ST_DTYPES = {v: k for k, v in _ST_NAMES.items()}


def _dtype(name: str) -> torch.dtype:
    """``"torch.float32"`` → ``torch.float32``."""
    value = getattr(torch, name.removeprefix("torch."), None) if name.startswith("torch.") else None
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return value


def _raw_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as a flat uint8 tensor sharing its memory (a copy only if not contiguous/CPU)."""
    t = tensor.detach()
    if t.is_nested or t.layout != torch.strided or t.is_quantized:
        raise DataPlaneBadRequest(f"cannot checkpoint a {t.layout} tensor of dtype {t.dtype}")
    return t.cpu().resolve_conj().resolve_neg().contiguous().reshape(-1).view(torch.uint8)


def _safetensors_layout(tensors: Mapping[str, torch.Tensor]) -> tuple[bytes, list[torch.Tensor]]:
    """The safetensors header and the tensors' bytes in file order (widest dtype first, so every
    tensor starts aligned to its element size; the header is padded to 8 bytes as the spec asks)."""
    order = sorted(tensors, key=lambda n: -tensors[n].dtype.itemsize)
    header: dict[str, Any] = {}
    payload = []
    offset = 0
    for name in order:
        t = tensors[name]
        raw = _raw_bytes(t)
        st = _ST_NAMES.get(t.dtype)
        shape = list(t.shape) if st else [raw.numel()]  # a dtype safetensors lacks: its bytes as U8
        header[name] = {"dtype": st or "U8", "shape": shape, "data_offsets": [offset, offset + raw.numel()]}
        payload.append(raw)
        offset += raw.numel()
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    return struct.pack("<Q", len(text)) + text, payload


def _read_exact(f: BinaryIO, view: memoryview, crc: _Crc) -> None:
    done = 0
    for piece in _pieces(view):
        got = f.readinto(piece)
        while got is not None and got < len(piece):
            more = f.readinto(piece[got:])
            if not more:
                raise ValueError(f"file ends early (read {done + got} of {len(view)} bytes of a section)")
            got += more
        crc.update(piece)
        done += len(piece)


def _read_safetensors(f: BinaryIO, size: int, crc: _Crc) -> dict[str, torch.Tensor]:
    head = memoryview(bytearray(8))
    _read_exact(f, head, crc)
    (length,) = struct.unpack("<Q", head)
    if length > size - 8:
        raise ValueError(f"header length {length} exceeds the file")
    text = memoryview(bytearray(length))
    _read_exact(f, text, crc)
    header = json.loads(bytes(text))
    header.pop("__metadata__", None)
    entries = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    offset = 0
    out = {}
    for name, entry in entries:
        begin, end = entry["data_offsets"]
        dtype = _ST_DTYPES[entry["dtype"]]
        shape = [int(d) for d in entry["shape"]]
        if begin != offset or end - begin != math.prod(shape) * dtype.itemsize or end > size - 8 - length:
            raise ValueError(f"tensor {name!r} has inconsistent offsets {begin}..{end}")
        raw = torch.empty(end - begin, dtype=torch.uint8)
        if end > begin:
            _read_exact(f, memoryview(raw.numpy()), crc)
        out[name] = raw.view(dtype).view(shape)
        offset = end
    if 8 + length + offset != size:
        raise ValueError("the tensors do not cover the file")
    return out


# ---------------------------------------------------------------------------------------- writing
def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, chunks: list[Any]) -> dict[str, Any]:
    """Write byte chunks (bytes or uint8 tensors, straight from their memory), fsync; size and crc32.

    While the writes go on, a helper thread flushes what is already written every ``_FLUSH_EVERY``
    bytes (waiting on the disk there, not here), so the final fsync has little left to wait for.
    """
    crc = _Crc()
    size = 0
    flushing: Future | None = None
    flusher = ThreadPoolExecutor(1, thread_name_prefix="kvplane-flush")
    with open(path, "wb", buffering=0) as f, flusher:
        unflushed = 0
        for chunk in chunks:
            view = memoryview(chunk.numpy() if isinstance(chunk, torch.Tensor) else chunk).cast("B")
            for piece in _pieces(view):
                crc.update(piece)
                written = 0
                while written < len(piece):
                    written += f.write(piece[written:])
                unflushed += len(piece)
                if unflushed >= _FLUSH_EVERY and (flushing is None or flushing.done()):
                    flushing = flusher.submit(os.fdatasync, f.fileno())
                    unflushed = 0
            size += len(view)
        if flushing is not None:
            flushing.result()
        os.fsync(f.fileno())
    return {"size": size, "crc32": crc.hexdigest()}


def _encode(
    snapshot: StoreSnapshot, include_storage: bool
) -> tuple[dict[str, Any], dict[str, Any], list[list[Any]], dict[str, torch.Tensor]]:
    """The snapshot as (state.json, index.pkl, objects.pkl, tensors) contents."""
    state: dict[str, Any] = {}
    index: dict[str, Any] = {}
    objects: list[list[Any]] = []
    tensors: dict[str, torch.Tensor] = {}

    def tensor_ref(t: torch.Tensor) -> str:
        name = f"t{len(tensors)}"
        tensors[name] = t
        return name

    for pid, part in snapshot.partitions.items():
        fields = {}
        for name, column in part.fields.items():
            blocks = []
            for block in column.blocks if include_storage else ():
                if isinstance(block, DenseRows):
                    d = block.data
                    blocks.append({"form": "dense", "tensor": tensor_ref(d), "dtype": str(d.dtype),
                                   "shape": list(d.shape)})  # fmt: skip
                elif isinstance(block, RaggedRows):
                    v = block.values
                    offsets = tensor_ref(block.offsets.to(torch.int64))
                    blocks.append({"form": "ragged", "values": tensor_ref(v), "dtype": str(v.dtype),
                                   "shape": list(v.shape), "offsets": offsets})  # fmt: skip
                else:
                    blocks.append({"form": "objects", "values": len(objects), "rows": len(block.values)})
                    objects.append(list(block.values))
            fields[name] = {"kind": column.kind, "blocks": blocks}
        state[pid] = {
            "fields": fields,
            "layouts": [list(layout) for layout in part.layouts],
            "tasks": {task: s.claimed_total for task, s in part.tasks.items()},
        }
        index[pid] = {
            "keys": list(part.keys),
            "tags": part.tags,
            "layout_ids": list(part.layout_ids),
            "registration": None if part.registration is None else tuple(part.registration),
            "claimed": {task: list(s.claimed) for task, s in part.tasks.items()},
        }
    return {"partitions": state}, index, objects, tensors


def _install(tmp: Path, target: Path, old: Path) -> None:
    """Move the finished ``tmp`` into place; the previous checkpoint survives until the new one is in."""
    if _finished(target):
        if old.exists():
            shutil.rmtree(old)
        target.rename(old)
    elif target.exists():
        target.rmdir()  # empty (``_check_target``); a finished checkpoint may wait in ``old``
    tmp.rename(target)
    _fsync_dir(target.parent)
    if old.exists():
        shutil.rmtree(old)


def _check_target(target: Path) -> None:
    """Refuse to replace anything but a kvplane checkpoint or an empty directory (never a user's data)."""
    if target.exists() and not target.is_dir():
        raise DataPlaneBadRequest(f"checkpoint path {target} exists and is not a directory")
    if target.is_dir() and not _finished(target) and any(target.iterdir()):
        raise DataPlaneBadRequest(
            f"refusing to replace {target}: it is not empty and not a kvplane checkpoint (no {MANIFEST_FILE})"
        )


def _finished(path: Path) -> bool:
    return (path / MANIFEST_FILE).is_file()


def _siblings(checkpoint_dir: str | os.PathLike) -> tuple[Path, Path, Path]:
    target = Path(checkpoint_dir)
    return target, target.with_name(target.name + ".tmp"), target.with_name(target.name + ".old")


def write_checkpoint(
    checkpoint_dir: str | os.PathLike,
    snapshot: StoreSnapshot,
    *,
    include_storage: bool = True,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write ``snapshot`` to ``checkpoint_dir`` (created with its parents), replacing what was there.

    Args:
        include_storage: False writes the metadata only (keys, tags, layouts, registrations, claims;
            no column values), as TransferQueue does for backends whose data persists elsewhere.
        metadata: The user's JSON-serialisable pairs, kept in ``metadata.json``.

    Raises:
        DataPlaneBadRequest: ``metadata`` is not a JSON-serialisable dict, the snapshot holds
            something that cannot be written, or ``checkpoint_dir`` is a file or a non-empty
            directory that is not a kvplane checkpoint; nothing on disk changed.
        DataPlaneWriteError: The file system failed; the previous checkpoint is still in place.
    """
    if metadata is not None and not isinstance(metadata, Mapping):
        raise DataPlaneBadRequest(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        meta_bytes = _json({"storage_saved": bool(include_storage), "user_metadata": dict(metadata or {})})
    except (TypeError, ValueError) as e:
        raise DataPlaneBadRequest(f"metadata must be JSON-serialisable: {e}") from e
    state, index, objects, tensors = _encode(snapshot, include_storage)
    try:
        index_bytes = pickle.dumps(index, protocol=pickle.HIGHEST_PROTOCOL)
        objects_bytes = pickle.dumps(objects, protocol=pickle.HIGHEST_PROTOCOL) if include_storage else None
    except Exception as e:  # noqa: BLE001 - any pickling failure is the caller's value
        raise DataPlaneBadRequest(f"a tag or non-tensor value cannot be pickled: {e}") from e
    target, tmp, old = _siblings(checkpoint_dir)
    _check_target(target)
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        files = {
            METADATA_FILE: _write_file(tmp / METADATA_FILE, [meta_bytes]),
            STATE_FILE: _write_file(tmp / STATE_FILE, [_json(state)]),
            INDEX_FILE: _write_file(tmp / INDEX_FILE, [index_bytes]),
        }
        if objects_bytes is not None:
            files[OBJECTS_FILE] = _write_file(tmp / OBJECTS_FILE, [objects_bytes])
        if include_storage:
            head, payload = _safetensors_layout(tensors)
            files[TENSORS_FILE] = _write_file(tmp / TENSORS_FILE, [head, *payload])
        body = {"format": FORMAT, "version": VERSION, "files": files}
        manifest = {"manifest": body, "crc32": f"{crc32(_json(body)):08x}"}
        _write_file(tmp / MANIFEST_FILE, [_json(manifest)])
        _fsync_dir(tmp)
        _install(tmp, target, old)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not target.exists():
            old.rename(target)  # as TransferQueue: put the previous checkpoint back
        if isinstance(e, OSError):
            raise DataPlaneWriteError(f"saving the checkpoint to {target} failed: {e}") from e
        raise
    logger.info("checkpoint saved to %s (%d partitions)", target, len(snapshot.partitions))


# ---------------------------------------------------------------------------------------- reading
def _corrupt(path: Path, why: str) -> DataPlaneCheckpointError:
    return DataPlaneCheckpointError(f"checkpoint file {path} is unusable: {why}")


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST_FILE
    try:
        outer = json.loads(path.read_bytes())
        body = outer["manifest"]
        found = (body.get("format"), body.get("version"))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise _corrupt(path, f"not a valid manifest ({e})") from e
    if found != (FORMAT, VERSION):
        raise _corrupt(path, f"format {found[0]!r} version {found[1]!r}; kvplane reads {FORMAT!r} {VERSION}")
    if outer.get("crc32") != f"{crc32(_json(body)):08x}":
        raise _corrupt(path, "checksum mismatch")
    files = body.get("files")
    valid = isinstance(files, dict) and all(
        isinstance(e, dict) and isinstance(e.get("size"), int) and isinstance(e.get("crc32"), str)
        for e in files.values()
    )
    if not valid:
        raise _corrupt(path, "the file list is malformed")
    return files


def _load_file(root: Path, name: str, files: dict[str, Any], parse: Any) -> Any:
    """Read one listed file, check its size and crc32, and ``parse(f, size, crc)`` it."""
    path = root / name
    if name not in files:
        raise _corrupt(root / MANIFEST_FILE, f"{name} is not listed")
    want = files[name]
    try:
        size = path.stat().st_size
    except FileNotFoundError as e:
        raise _corrupt(path, "missing") from e
    if size != want["size"]:
        raise _corrupt(path, f"{size} bytes, the manifest says {want['size']} (truncated or rewritten)")
    crc = _Crc()
    try:
        with open(path, "rb", buffering=0) as f:
            value = parse(f, size, crc)
    except OSError as e:
        raise DataPlaneReadError(f"reading checkpoint file {path} failed: {e}") from e
    except Exception as e:  # noqa: BLE001 - unparseable content is corruption; the crc check says which
        if crc.hexdigest() != want["crc32"]:
            raise _corrupt(path, "checksum mismatch") from e
        raise _corrupt(path, f"cannot parse: {e}") from e
    if crc.hexdigest() != want["crc32"]:
        raise _corrupt(path, "checksum mismatch")
    return value


def _whole(f: BinaryIO, size: int, crc: _Crc) -> bytearray:
    buf = bytearray(size)
    _read_exact(f, memoryview(buf), crc)
    return buf


def _json_file(f: BinaryIO, size: int, crc: _Crc) -> Any:
    return json.loads(_whole(f, size, crc))


def _pickle_file(f: BinaryIO, size: int, crc: _Crc) -> Any:
    # The trust boundary (module docstring): only checkpoints you trust, checksum verified after.
    return pickle.loads(_whole(f, size, crc))  # noqa: S301


def _decode(
    state: dict, index: dict, objects: list | None, tensors: dict | None, storage: bool
) -> dict[str, PartitionSnapshot]:
    partitions = {}
    for pid, ps in state["partitions"].items():
        ix = index[pid]
        fields = {}
        for name, fs in ps["fields"].items():
            blocks: list[Block] = []
            for b in fs["blocks"] if storage else ():
                if b["form"] == "objects":
                    blocks.append(ObjectRows(objects[b["values"]]))
                    continue
                t = tensors[b["values"] if b["form"] == "ragged" else b["tensor"]]
                dtype, shape = _dtype(b["dtype"]), b["shape"]
                if t.dtype != dtype:  # a dtype safetensors lacks, stored as its bytes
                    t = t.view(dtype)
                t = t.view(shape)
                blocks.append(RaggedRows(t, tensors[b["offsets"]]) if b["form"] == "ragged" else DenseRows(t))
            fields[name] = FieldColumn(fs["kind"], blocks)
        reg = ix["registration"]
        partitions[pid] = PartitionSnapshot(
            keys=ix["keys"],
            tags=ix["tags"],
            layouts=[tuple(layout) for layout in ps["layouts"]],
            layout_ids=ix["layout_ids"],
            fields=fields,
            registration=None if reg is None else Declaration(*reg),
            tasks={t: TaskState(total, ix["claimed"][t]) for t, total in ps["tasks"].items()},
        )
    return partitions


def _check(part: PartitionSnapshot, storage: bool) -> None:
    """Raise ValueError when a partition's parts disagree (a consistent checkpoint never does)."""
    n = len(part.keys)
    if len(set(part.keys)) != n or len(part.tags) != n or len(part.layout_ids) != n:
        raise ValueError("keys, tags and layouts disagree")
    if any(not 0 <= i < len(part.layouts) for i in part.layout_ids):
        raise ValueError("a key names a layout that does not exist")
    if any(f not in part.fields for layout in part.layouts for f in layout):
        raise ValueError("a layout names a field without a column")
    for task in part.tasks.values():
        if any(not 0 <= i < n for i in task.claimed) or len(set(task.claimed)) != len(task.claimed):
            raise ValueError("a task's claimed positions are out of range")
    for name, column in part.fields.items() if storage else ():
        for b in column.blocks:
            if isinstance(b, ObjectRows):
                if column.kind != OBJECT_KIND:
                    raise ValueError(f"field {name!r} of kind {column.kind} holds objects")
                continue
            data = b.data if isinstance(b, DenseRows) else b.values
            if str(data.dtype) != column.kind or data.dim() < 1:
                raise ValueError(f"field {name!r} ({column.kind}): a {data.dtype} block of {data.dim()} dims")
            if isinstance(b, RaggedRows):
                o = b.offsets
                if o.dim() != 1 or o.numel() < 1 or o[0] != 0 or o[-1] != len(data) or (o.diff() < 0).any():
                    raise ValueError(f"field {name!r} has bad ragged offsets")
        if sum(len(b) for b in column.blocks) != part.holders(name):
            raise ValueError(f"field {name!r} has rows for a different number of keys than hold it")


def _resolve(checkpoint_dir: str | os.PathLike) -> Path:
    """The directory to read: ``<dir>``, or ``<dir>.old`` when a save died before ``<dir>`` was finished."""
    target, _, old = _siblings(checkpoint_dir)
    if not _finished(target) and _finished(old):
        logger.warning("%s is missing or unfinished (an interrupted save); reading %s", target, old)
        return old
    if not target.is_dir():
        raise CheckpointNotFoundError(f"checkpoint directory not found: {target}")
    if not (target / METADATA_FILE).is_file():
        raise CheckpointNotFoundError(f"{METADATA_FILE} not found in {target}")
    if not _finished(target):
        raise _corrupt(target / MANIFEST_FILE, "missing: not a kvplane checkpoint, or its save never ended")
    return target


def read_checkpoint(checkpoint_dir: str | os.PathLike, *, storage: bool = True) -> StoreSnapshot:
    """Read and verify a checkpoint written by :func:`write_checkpoint`.

    Args:
        storage: False skips the column values (keys, tags, registrations and claims only), for
            inspecting a checkpoint cheaply.

    Raises:
        DataPlaneBadRequest: The directory or ``metadata.json`` is missing, or a file is missing,
            truncated, corrupted or of another format version (the message names the file).
        DataPlaneReadError: The file system failed.
    """
    root = _resolve(checkpoint_dir)
    files = _read_manifest(root)
    meta = _load_file(root, METADATA_FILE, files, _json_file)
    state = _load_file(root, STATE_FILE, files, _json_file)
    index = _load_file(root, INDEX_FILE, files, _pickle_file)
    if not isinstance(meta, dict):
        raise _corrupt(root / METADATA_FILE, "not a JSON object")
    saved = bool(meta.get("storage_saved"))
    load = storage and saved
    objects = _load_file(root, OBJECTS_FILE, files, _pickle_file) if load else None
    tensors = _load_file(root, TENSORS_FILE, files, _read_safetensors) if load else None
    try:
        partitions = _decode(state, index, objects, tensors, load)
        for part in partitions.values():
            _check(part, load)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
        raise _corrupt(root / STATE_FILE, f"inconsistent with {INDEX_FILE}/{TENSORS_FILE}: {e}") from e
    return StoreSnapshot(partitions, storage_saved=saved, metadata=meta.get("user_metadata", {}))
