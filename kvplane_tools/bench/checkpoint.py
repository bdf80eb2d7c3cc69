"""Checkpoint speed on the embedded backend, against plain file I/O of the same bytes in the same run.

- ``save``: ``client.save_checkpoint(dir)`` of a store holding ``mib`` MiB into a new
  directory, against writing the same bytes to a new file and fsyncing it (a checkpoint is fsynced
  too); the unsynced write, and a save replacing the previous checkpoint, are reported beside it.
- ``load``: ``fresh.load_checkpoint(dir)`` against reading the plain file back into
  memory.
- ``restore_keys``: seconds to restore a store of ``keys`` small tagged samples.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from kvplane import DataPlaneClient, build_data_plane_client
from kvplane_tools.bench.stats import measure, ratio

__all__ = ["run"]


def _fresh() -> DataPlaneClient:
    return build_data_plane_client({"impl": "embedded"})


_ROW = 64 << 10  # float32 elements per key: 256 KiB


def _big_store(mib: int) -> tuple[DataPlaneClient, list[torch.Tensor]]:
    client = _fresh()
    keys_per_put = 512
    columns = []
    for put in range(max(1, mib * 4 // keys_per_put)):
        x = torch.randn(keys_per_put, _ROW)
        keys = [f"k{put}_{i}" for i in range(keys_per_put)]
        client.put_samples(keys, "big", {"x": x}, tags=[{"seq_len": _ROW}] * keys_per_put)
        columns.append(x)
    return client, columns


def _plain_write(path: Path, columns: list[torch.Tensor], sync: bool) -> None:
    with open(path, "wb", buffering=0) as f:
        for x in columns:
            f.write(memoryview(x.numpy()).cast("B"))
        if sync:
            os.fsync(f.fileno())


def _plain_read(path: Path, columns: list[torch.Tensor]) -> None:
    with open(path, "rb", buffering=0) as f:
        for x in columns:
            f.readinto(memoryview(torch.empty_like(x).numpy()).cast("B"))


def _remove(*paths: Path) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def bench_bytes(root: Path, mib: int, repeats: int) -> dict[str, Any]:
    client, columns = _big_store(mib)
    nbytes = sum(x.numel() * x.element_size() for x in columns)
    plain, ck = root / "plain.bin", root / "ck"
    fresh = {"repeats": repeats, "setup": lambda: _remove(plain, ck)}  # every write makes new files
    write_sync = measure(lambda: _plain_write(plain, columns, True), **fresh)
    write = measure(lambda: _plain_write(plain, columns, False), **fresh)
    save = measure(lambda: client.save_checkpoint(ck), **fresh)
    overwrite = measure(lambda: client.save_checkpoint(ck), repeats=repeats)
    _plain_write(plain, columns, True)
    read = measure(lambda: _plain_read(plain, columns), repeats=repeats)
    load = measure(lambda: _fresh().load_checkpoint(ck), repeats=repeats)
    timings = {"plain_write_fsync": write_sync, "plain_write": write, "plain_read": read, "save": save,
               "save_over_previous": overwrite, "load": load}  # fmt: skip
    return {
        "bytes": nbytes,
        "gb_per_s": {name: round(nbytes / t["median"] / 1e9, 3) for name, t in timings.items()},
        "save_vs_plain_write_fsync": ratio(write_sync["median"], save["median"]),
        "save_vs_plain_write_no_fsync": ratio(write["median"], save["median"]),
        "load_vs_plain_read": ratio(read["median"], load["median"]),
    }


def bench_restore_keys(root: Path, n: int, repeats: int) -> dict[str, Any]:
    client = _fresh()
    for start in range(0, n, 1000):
        keys = [f"t{i:07d}" for i in range(start, min(n, start + 1000))]
        tags = [{"group_id": f"g{i // 8}", "weight_version": 1, "seq_len": 8} for i in range(len(keys))]
        client.put_samples(keys, "small", {"ids": torch.zeros(len(keys), 8, dtype=torch.int64)}, tags=tags)
    client.claim_meta("small", "train", ["ids"], batch_size=n // 2)
    ck = root / "keys"
    save = measure(lambda: client.save_checkpoint(ck), repeats=repeats)
    restore = measure(lambda: _fresh().load_checkpoint(ck), repeats=repeats)
    return {"keys": n, "save_s": round(save["median"], 3), "restore_s": round(restore["median"], 3)}


def run(*, quick: bool = False) -> dict[str, Any]:
    """The checkpoint suite: 1 GiB and 100k keys (``quick``: 128 MiB and 10k keys)."""
    root = Path(tempfile.mkdtemp(prefix="kvplane-bench-ckpt-"))
    started = time.perf_counter()
    try:
        return {
            "bytes": bench_bytes(root, 128 if quick else 1024, 2 if quick else 3),
            "restore_keys": bench_restore_keys(root, 10_000 if quick else 100_000, 3),
            "seconds": round(time.perf_counter() - started, 1),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
