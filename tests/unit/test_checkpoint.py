"""Checkpoints of the embedded store: format round trip, claims, crash safety, corruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import kvplane
from kvplane._checkpoint import (
    INDEX_FILE,
    MANIFEST_FILE,
    METADATA_FILE,
    OBJECTS_FILE,
    STATE_FILE,
    TENSORS_FILE,
    DenseRows,
    FieldColumn,
    PartitionSnapshot,
    RaggedRows,
    StoreSnapshot,
    read_checkpoint,
    write_checkpoint,
)
from kvplane._errors import DataPlaneBadRequest, DataPlaneKeyError, DataPlaneUnavailable, DataPlaneWriteError
from kvplane._validation import Declaration
from kvplane.adapters.memory import MemoryDataPlaneClient

ROOT = Path(__file__).resolve().parents[2]

DTYPES = [
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2,
    torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64,
    torch.complex128,
]  # fmt: skip
UNSIGNED = [torch.uint16, torch.uint32, torch.uint64]  # the store cannot read these back (index_select)


def _raw(t: torch.Tensor) -> bytes:
    return bytes(t.contiguous().reshape(-1).view(torch.uint8).numpy())


def _random(dtype: torch.dtype, *shape: int, seed: int = 0) -> torch.Tensor:
    """Every bit pattern (NaNs and fp8 specials included), except bool which must be 0/1."""
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    n = int(torch.Size(shape).numel()) * dtype.itemsize
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g).view(dtype).view(shape)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.dtype != b.dtype or a.is_nested != b.is_nested:
            return False
        if a.is_nested:
            ra, rb = a.unbind(), b.unbind()
            return len(ra) == len(rb) and all(_same(x, y) for x, y in zip(ra, rb))
        return a.shape == b.shape and _raw(a) == _raw(b)
    return type(a) is type(b) and a == b


def _contents(client: MemoryDataPlaneClient, partitions: list[str]) -> dict:
    """Everything readable through the public API, per key (fields in the order a read returns them)."""
    out = {}
    for pid in partitions:
        tags = client.list_keys(pid).get(pid)
        rows = {}
        for key in tags or {}:
            try:
                td = client.get_samples([key], pid, None)
            except DataPlaneKeyError:
                rows[key] = "tag-only"
                continue
            rows[key] = [(name, td.get(name)) for name in td.keys()]
        out[pid] = (tags, rows)
    return out


def _assert_same_contents(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for pid in a:
        (tags_a, rows_a), (tags_b, rows_b) = a[pid], b[pid]
        assert tags_a == tags_b and list(tags_a or {}) == list(tags_b or {}), pid
        assert rows_a.keys() == rows_b.keys()
        for key in rows_a:
            ra, rb = rows_a[key], rows_b[key]
            if ra == "tag-only" or rb == "tag-only":
                assert ra == rb, key
                continue
            assert [n for n, _ in ra] == [n for n, _ in rb], key
            for (name, va), (_, vb) in zip(ra, rb):
                if isinstance(va, torch.Tensor):
                    assert _same(va, vb), (pid, key, name)
                else:
                    assert va.tolist() == vb.tolist(), (pid, key, name)


def _restore(src: MemoryDataPlaneClient, path: Path, **kw) -> MemoryDataPlaneClient:
    write_checkpoint(path, src._snapshot(), **kw)
    fresh = MemoryDataPlaneClient()
    fresh._restore(read_checkpoint(path))
    return fresh


# ------------------------------------------------------------------------------------------ round trip
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_round_trips_bit_exact(tmp_path, client, dtype):
    client.put_samples(["a", "b", "c"], "p", {"x": _random(dtype, 3, 4, 2), "s": _random(dtype, 3, seed=1)})
    client.put_samples(["d"], "p", {"x": _random(dtype, 1, 4, 2, seed=2), "s": _random(dtype, 1, seed=3)})
    before = _contents(client, ["p"])
    restored = _restore(client, tmp_path / "ck")
    after = _contents(restored, ["p"])
    _assert_same_contents(before, after)
    assert after["p"][1]["a"][0][1].dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES + UNSIGNED, ids=str)
def test_format_round_trips_every_dtype_and_0_dim_rows(tmp_path, dtype):
    dense, scalar, values = _random(dtype, 3, 2, 5), _random(dtype, 4, seed=1), _random(dtype, 6, 2, seed=2)
    offsets = torch.tensor([0, 1, 1, 6])
    part = PartitionSnapshot(
        keys=list("abcd"), tags=[{}] * 4, layouts=[("d", "s", "r"), ("s",)], layout_ids=[0, 0, 0, 1],
        fields={"d": FieldColumn(str(dtype), [DenseRows(dense)]),
                "s": FieldColumn(str(dtype), [DenseRows(scalar)]),
                "r": FieldColumn(str(dtype), [RaggedRows(values, offsets)])},
    )  # fmt: skip
    write_checkpoint(tmp_path / "ck", StoreSnapshot({"p": part}))
    fields = read_checkpoint(tmp_path / "ck").partitions["p"].fields
    assert _same(fields["d"].blocks[0].data, dense) and _same(fields["s"].blocks[0].data, scalar)
    assert _same(fields["r"].blocks[0].values, values)
    assert fields["r"].blocks[0].offsets.tolist() == [0, 1, 1, 6]


def test_shapes_ragged_objects_tags_layouts_round_trip(tmp_path, client):
    big = torch.randn(64, 300)  # >= 64 KiB: written straight from the stored chunk
    client.put_samples([f"b{i}" for i in range(64)], "p", {"x": big}, tags=[{"i": i} for i in range(64)])
    client.put_samples(["b3"], "p", {"x": torch.full((1, 300), 7.0)})  # breaks the chunk run
    for i in range(20):  # one key per put: packed into one block
        client.put_samples([f"s{i}"], "p", {"x": torch.full((1, 300), float(i))})
    client.put_samples(["t0", "t1"], "p", {"x": torch.randn(300, 2).T})  # non-contiguous source
    rows = [torch.arange(3), torch.arange(5), torch.arange(0)]
    ragged = torch.nested.nested_tensor(rows, layout=torch.jagged)
    client.put_samples(["r0", "r1", "r2"], "q", {"ids": ragged, "obj": ["u", {"k": [1, 2]}, None]})
    client.put_samples(["r3"], "q", {"ids": torch.arange(4).view(1, 4)})
    client.put_samples(["z0", "z1"], "q", {"scalar": torch.tensor([1.5, 2.5])}, tags=[{"w": (1, 2)}, {}])
    client.put_samples(["z0"], "q", {"ids": torch.arange(2).view(1, 2)})  # z0: fields in order scalar, ids
    client.put_samples(["tagonly"], "q", None, tags=[{"only": True}])
    client.put_samples(["e0", "e1"], "mixed", {"empty": torch.zeros(2, 0, 3)})
    client.put_samples(["m0"], "mixed", {"v": torch.tensor([3])})  # rows of different rank in one field
    client.put_samples(["m1"], "mixed", {"v": torch.ones(1, 2, dtype=torch.int64)})
    client.put_samples(["k"], "__kvplane_internal", {"log": torch.tensor([[1, 2]])}, tags=[{"epoch": "e1"}])
    client.clear_samples(["s5"], "p")
    parts = ["p", "q", "mixed", "__kvplane_internal"]
    before = _contents(client, parts)
    restored = _restore(client, tmp_path / "ck")
    _assert_same_contents(before, _contents(restored, parts))
    assert list(restored.get_samples(["z0"], "q", None).keys()) == ["scalar", "ids"]
    blocks = client._snapshot().partitions["p"].fields["x"].blocks
    chunk = client._partitions["p"].cell("b4", "x")[1].tensor
    assert [len(b) for b in blocks] == [4, 60, 21]  # b0-b3 stacked | b4-b63 | s0-s19 (no s5), t0, t1 stacked
    assert blocks[1].data.data_ptr() == chunk[4].data_ptr()  # the big run is a view, not a copy
    assert restored.list_keys() == client.list_keys()  # internal partitions stay hidden


def test_registrations_and_claims_continue_exactly_once(tmp_path, client):
    client.register_partition("p", ["x"], num_samples=12, consumer_tasks=["a", "b"], grpo_group_size=2,
                              enums={"x": ["u", "v"]})  # fmt: skip
    client.put_samples([f"k{i}" for i in range(10)], "p", {"x": torch.arange(10)})
    first_a = client.claim_meta("p", "a", ["x"], batch_size=4).sample_ids
    first_b = client.claim_meta("p", "b", ["x"], batch_size=7).sample_ids
    client.clear_samples(["k0"], "p")  # claimed and gone: still counts against num_samples
    restored = _restore(client, tmp_path / "ck")
    declared = Declaration(["x"], 12, ["a", "b"], 2, {"x": ["u", "v"]})
    assert read_checkpoint(tmp_path / "ck").partitions["p"].registration == declared
    for c in (client, restored):  # the original and the restored store continue identically
        c.put_samples(["k10", "k11"], "p", {"x": torch.arange(2)})
        assert not c.check_consumption_status("p", ["a"])
        rest_a = c.claim_meta("p", "a", ["x"], batch_size=100, blocking=False).sample_ids
        assert rest_a == [f"k{i}" for i in range(4, 12)]
        assert sorted(first_a + rest_a, key=lambda k: int(k[1:])) == [f"k{i}" for i in range(12)]
        assert c.claim_meta("p", "a", ["x"], batch_size=1, blocking=False).sample_ids == []  # 12 reached
        assert c.claim_meta("p", "b", ["x"], batch_size=5).sample_ids == ["k7", "k8", "k9", "k10", "k11"]
        assert not set(first_b) & {"k7", "k8", "k9", "k10", "k11"}
        assert c.check_consumption_status("p", ["a", "b"])
        with pytest.raises(DataPlaneKeyError, match="not a consumer task"):
            c.claim_meta("p", "c", ["x"], batch_size=1, blocking=False)


def test_user_metadata_kept_as_transfer_queue_does(tmp_path, client):
    client.put_samples(["a"], "p", {"x": torch.ones(1)})
    write_checkpoint(tmp_path / "ck", client._snapshot(), metadata={"step": 10, "time_stamp": 1.5})
    assert json.loads((tmp_path / "ck" / METADATA_FILE).read_text()) == {
        "storage_saved": True,
        "user_metadata": {"step": 10, "time_stamp": 1.5},
    }
    assert read_checkpoint(tmp_path / "ck").metadata == {"step": 10, "time_stamp": 1.5}
    with pytest.raises(DataPlaneBadRequest, match="JSON"):
        write_checkpoint(tmp_path / "bad", client._snapshot(), metadata={"x": object()})
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.tmp").exists()


def test_load_returns_the_user_metadata_as_nemo_rl_does(tmp_path, client):
    client.put_samples(["a"], "p", {"x": torch.ones(1)})
    client.save_checkpoint(tmp_path / "ck", metadata={"step": 7})
    client.save_checkpoint(tmp_path / "bare")
    fresh = MemoryDataPlaneClient()
    assert fresh.load_checkpoint(tmp_path / "ck") == {"step": 7}
    assert fresh.load_checkpoint(tmp_path / "bare") == {}


@pytest.mark.parametrize("observed", [False, True], ids=["plain", "with_metrics"])
def test_checkpoints_pass_through_the_metrics_middleware(tmp_path, observed):
    config = {"impl": "embedded", "observability": {"enabled": observed}}
    source = kvplane.build_data_plane_client(config)
    source.put_samples(["a", "b"], "p", {"x": torch.arange(2.0)})
    source.save_checkpoint(tmp_path / "ck", metadata={"step": 1})
    restored = kvplane.build_data_plane_client(config)
    restored.put_samples(["stale"], "q", {"x": torch.zeros(1)})
    assert restored.load_checkpoint(tmp_path / "ck") == {"step": 1}
    assert restored.get_samples(["a", "b"], "p", ["x"])["x"].tolist() == [0.0, 1.0]
    assert restored.list_keys() == {"p": {"a": {}, "b": {}}}
    if observed:
        assert source.snapshot()["ops_by_op"]["save_checkpoint"] == 1
        snap = restored.snapshot()
        assert snap["ops_by_op"]["load_checkpoint"] == 1
        assert snap["n_keys_outstanding"] == 0  # the stale put's accounting went with its store
    source.close()
    restored.close()


def test_metadata_only_checkpoint(tmp_path, client):
    client.put_samples(["a", "b"], "p", {"x": torch.ones(2), "o": ["s", "t"]}, tags=[{"n": 1}, {"n": 2}])
    client.claim_meta("p", "train", ["x"], batch_size=1)
    write_checkpoint(tmp_path / "ck", client._snapshot(), include_storage=False, metadata={"m": 1})
    assert sorted(os.listdir(tmp_path / "ck")) == sorted([
        MANIFEST_FILE, METADATA_FILE, STATE_FILE, INDEX_FILE
    ])
    # no column values: neither objects.pkl nor tensors.safetensors
    snap = read_checkpoint(tmp_path / "ck")
    part = snap.partitions["p"]
    assert not snap.storage_saved and snap.metadata == {"m": 1}
    assert part.keys == ["a", "b"] and part.tags == [{"n": 1}, {"n": 2}] and part.layouts == [("x", "o")]
    assert part.tasks["train"].claimed == [0] and all(not c.blocks for c in part.fields.values())
    target = MemoryDataPlaneClient()
    target.put_samples(["keep"], "other", {"y": torch.zeros(1)})
    with pytest.raises(DataPlaneBadRequest, match="include_storage=False"):
        target._restore(snap)
    assert target.list_keys() == {"other": {"keep": {}}}


def test_read_without_storage_skips_the_columns(tmp_path, client):
    client.put_samples(["a"], "p", {"x": torch.ones(1)}, tags=[{"n": 1}])
    write_checkpoint(tmp_path / "ck", client._snapshot())
    (tmp_path / "ck" / TENSORS_FILE).write_bytes(b"garbage")  # not read
    snap = read_checkpoint(tmp_path / "ck", storage=False)
    assert snap.storage_saved and snap.partitions["p"].tags == [{"n": 1}]
    assert snap.partitions["p"].fields["x"].blocks == []


def test_import_replaces_a_non_empty_store(tmp_path, client):
    client.put_samples(["a"], "p", {"x": torch.ones(1)})
    target = MemoryDataPlaneClient()
    target.put_samples(["a", "z"], "p", {"x": torch.zeros(2)})
    target.put_samples(["y"], "gone", {"x": torch.zeros(1)})
    write_checkpoint(tmp_path / "ck", client._snapshot())
    target._restore(read_checkpoint(tmp_path / "ck"))
    assert target.list_keys() == {"p": {"a": {}}}
    assert target.get_samples(["a"], "p", ["x"])["x"].tolist() == [1.0]


def test_import_wakes_a_blocked_claim(tmp_path, client):
    import threading

    client.put_samples(["a"], "p", {"x": torch.ones(1)})
    write_checkpoint(tmp_path / "ck", client._snapshot())
    target = MemoryDataPlaneClient()
    got = []
    claim = lambda: got.append(target.claim_meta("p", "t", ["x"], 1, timeout_s=600))  # noqa: E731
    waiter = threading.Thread(target=claim, daemon=True)  # without a wake-up it would sleep 600 s
    waiter.start()
    target._restore(read_checkpoint(tmp_path / "ck"))
    waiter.join(timeout=60)
    assert [m.sample_ids for m in got] == [["a"]]


def test_tensors_file_is_standard_safetensors(tmp_path, client):
    from safetensors import safe_open

    x = _random(torch.bfloat16, 70, 600)
    client.put_samples([f"k{i}" for i in range(70)], "p", {"x": x, "f8": _random(torch.float8_e5m2, 70, 3)})
    write_checkpoint(tmp_path / "ck", client._snapshot())
    with safe_open(str(tmp_path / "ck" / TENSORS_FILE), framework="pt") as f:
        found = {f.get_tensor(name).dtype: f.get_tensor(name) for name in f.keys()}
    assert _raw(found[torch.bfloat16]) == _raw(x)


def test_closed_client_is_unavailable(tmp_path):
    c = MemoryDataPlaneClient()
    snap = c._snapshot()
    c.close()
    with pytest.raises(DataPlaneUnavailable):
        c._snapshot()
    with pytest.raises(DataPlaneUnavailable):
        c._restore(snap)


# ------------------------------------------------------------------------------------------ errors
@pytest.fixture
def saved(tmp_path, client):
    client.put_samples(["a", "b"], "p", {"x": torch.randn(2, 50), "o": ["u", "v"]}, tags=[{"n": 1}, {}])
    client.claim_meta("p", "t", ["x"], batch_size=1)
    write_checkpoint(tmp_path / "ck", client._snapshot(), metadata={"step": 3})
    return tmp_path / "ck"


def _store_with_data() -> tuple[MemoryDataPlaneClient, dict]:
    target = MemoryDataPlaneClient()
    target.put_samples(["keep"], "other", {"y": torch.arange(3).view(1, 3)}, tags=[{"t": 1}])
    return target, _contents(target, ["other"])


def _load(path: Path, target: MemoryDataPlaneClient) -> None:
    target._restore(read_checkpoint(path))


ALL_FILES = [MANIFEST_FILE, METADATA_FILE, STATE_FILE, INDEX_FILE, OBJECTS_FILE, TENSORS_FILE]


@pytest.mark.parametrize("name", ALL_FILES)
@pytest.mark.parametrize("where", [0, 0.5, -1])
def test_a_corrupted_byte_names_the_file_and_leaves_the_store(saved, name, where):
    path = saved / name
    data = bytearray(path.read_bytes())
    at = int(len(data) * where) if where >= 0 else len(data) - 1
    data[at] ^= 0x20
    path.write_bytes(bytes(data))
    target, before = _store_with_data()
    with pytest.raises(DataPlaneBadRequest, match=name.replace(".", r"\.")):
        _load(saved, target)
    _assert_same_contents(before, _contents(target, ["other"]))


@pytest.mark.parametrize("name", ALL_FILES)
def test_a_truncated_or_missing_file_names_it(saved, name):
    path = saved / name
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataPlaneBadRequest, match=name.replace(".", r"\.")):
        read_checkpoint(saved)
    path.unlink()
    with pytest.raises(DataPlaneBadRequest, match=name.replace(".", r"\.")):
        read_checkpoint(saved)


def test_foreign_version_names_the_manifest(saved):
    from kvplane._checkpoint import _json

    outer = json.loads((saved / MANIFEST_FILE).read_text())
    outer["manifest"]["version"] = 99
    (saved / MANIFEST_FILE).write_bytes(_json(outer))
    with pytest.raises(DataPlaneBadRequest, match=r"manifest\.json.*version 99"):
        read_checkpoint(saved)


def test_missing_directory_and_missing_metadata(tmp_path, saved):
    with pytest.raises(DataPlaneBadRequest, match="checkpoint directory not found"):
        read_checkpoint(tmp_path / "nope")
    (saved / METADATA_FILE).unlink()
    with pytest.raises(DataPlaneBadRequest, match="metadata.json not found"):
        read_checkpoint(saved)


def test_a_consistent_checksum_over_inconsistent_content_is_refused(tmp_path):
    part = PartitionSnapshot(keys=["a", "b"], tags=[{}, {}], layouts=[("x",)], layout_ids=[0, 0],
                             fields={"x": FieldColumn("torch.float32", [DenseRows(torch.ones(1, 2))])})  # fmt: skip
    write_checkpoint(tmp_path / "ck", StoreSnapshot({"p": part}))  # two keys hold x, one row stored
    with pytest.raises(DataPlaneBadRequest, match=r"state\.json.*different number of keys"):
        read_checkpoint(tmp_path / "ck")


def test_an_inconsistent_snapshot_leaves_the_store(saved):
    snap = read_checkpoint(saved)
    snap.partitions["p"].fields["x"].blocks[0].data = snap.partitions["p"].fields["x"].blocks[0].data[:1]
    target, before = _store_with_data()
    with pytest.raises(DataPlaneBadRequest, match="fewer rows"):
        target._restore(snap)
    _assert_same_contents(before, _contents(target, ["other"]))


# ------------------------------------------------------------------------------------------ crash safety
def test_interrupted_replacement_reads_the_previous_checkpoint(tmp_path, client):
    ck = tmp_path / "ck"
    client.put_samples(["a"], "p", {"x": torch.ones(1)})
    write_checkpoint(ck, client._snapshot(), metadata={"gen": 1})
    ck.rename(tmp_path / "ck.old")  # a save died between its two renames
    assert read_checkpoint(ck).metadata == {"gen": 1}
    ck.mkdir()  # ... or left an unfinished directory in place
    (ck / METADATA_FILE).write_text("{}")
    assert read_checkpoint(ck).metadata == {"gen": 1}
    with pytest.raises(DataPlaneBadRequest, match="not a kvplane checkpoint"):  # never deletes foreign data
        write_checkpoint(ck, client._snapshot(), metadata={"gen": 2})
    (ck / METADATA_FILE).unlink()
    write_checkpoint(ck, client._snapshot(), metadata={"gen": 2})  # the next save cleans up
    assert read_checkpoint(ck).metadata == {"gen": 2}
    assert sorted(os.listdir(tmp_path)) == ["ck"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataPlaneBadRequest, match="not a directory"):
        write_checkpoint(tmp_path / "file", client._snapshot())


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, client, monkeypatch):
    import kvplane._checkpoint as ckpt

    ck = tmp_path / "ck"
    client.put_samples(["a"], "p", {"x": torch.ones(1)})
    write_checkpoint(ck, client._snapshot(), metadata={"gen": 1})
    real = ckpt._write_file

    def failing(path, chunks):
        if path.name == TENSORS_FILE:
            raise OSError(28, "No space left on device")
        return real(path, chunks)

    monkeypatch.setattr(ckpt, "_write_file", failing)
    with pytest.raises(DataPlaneWriteError, match="No space left"):
        write_checkpoint(ck, client._snapshot(), metadata={"gen": 2})
    assert read_checkpoint(ck).metadata == {"gen": 1}
    assert sorted(os.listdir(tmp_path)) == ["ck"]


_SAVER = textwrap.dedent(
    """
    import sys, torch
    from kvplane._checkpoint import write_checkpoint
    from kvplane.adapters.memory import MemoryDataPlaneClient

    gen = 0
    while True:
        gen += 1
        c = MemoryDataPlaneClient()
        n = 50 + gen % 7
        c.put_samples([f"k{i}" for i in range(n)], "p", {"x": torch.full((n, 20000), float(gen)),
                      "o": [gen] * n}, tags=[{"gen": gen}] * n)
        write_checkpoint(sys.argv[1], c._snapshot(), metadata={"gen": gen})
        print(gen, flush=True)
    """
)


def test_a_save_killed_at_any_moment_leaves_the_old_or_the_new(tmp_path):
    ck = tmp_path / "ck"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    delays = [0.0, 0.017, 0.043, 0.089, 0.21, 0.34]
    for delay in delays:
        cmd = [sys.executable, "-c", _SAVER, str(ck)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
        try:
            first = proc.stdout.readline()  # one finished save (readline ends when the child dies)
            assert first.strip(), "the saver died before its first checkpoint"
            time.sleep(delay)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        snap = read_checkpoint(ck)
        gen = snap.metadata["gen"]
        part = snap.partitions["p"]
        n = 50 + gen % 7
        assert part.keys == [f"k{i}" for i in range(n)] and part.tags == [{"gen": gen}] * n
        x = torch.cat([b.data for b in part.fields["x"].blocks])
        assert x.shape == (n, 20000) and bool((x == gen).all())
        assert part.fields["o"].blocks[0].values == [gen] * n
