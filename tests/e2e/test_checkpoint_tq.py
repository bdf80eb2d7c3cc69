"""Checkpoints of a TransferQueue deployment (SimpleStorage and MooncakeStore): what a checkpoint holds,
claims continuing exactly once, include_storage=False, and failed loads leaving the store as it was.

A load replaces the deployment's **whole** state (TransferQueue's and the embedded backend's rule), and
the e2e tests share one deployment per backend: so each test here starts by emptying the deployment
(loading a checkpoint of an empty embedded store, which also shows checkpoints are backend-neutral),
and "a restart" is simulated by emptying the same deployment and loading into it. Earlier test files'
partitions are gone after this file; no later test relies on them (each uses a fresh ``pid``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from tensordict import NonTensorStack, TensorDict

from kvplane import (
    CheckpointNotFoundError,
    DataPlaneCheckpointError,
    DataPlaneWriteError,
    build_data_plane_client,
)
from kvplane._tensors import make_object_column
from kvplane.adapters.transfer_queue import TransferQueueDataPlaneClient
from kvplane.adapters.transfer_queue._changes import log_partition
from kvplane.replay import select_groups, write_group
from loaders import StreamingDataset
from loaders._control import plan_partition_id
from tests.group_race import rescan

N = 6


@pytest.fixture
def empty_dir(tmp_path: Path) -> Path:
    """A checkpoint of an empty (embedded) store."""
    path = tmp_path / "empty"
    build_data_plane_client({"impl": "embedded"}).save_checkpoint(path)
    return path


@pytest.fixture
def client(deployment, empty_dir: Path) -> TransferQueueDataPlaneClient:
    """The shared client, over an emptied deployment."""
    deployment.client.load_checkpoint(empty_dir)
    assert deployment.client._list_keys(None) == {}
    return deployment.client


def _columns(n: int, seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {
        "f32": torch.randn(n, 3, generator=g),
        "bf16": torch.randn(n, 4, generator=g).to(torch.bfloat16),
        "fp8": torch.randn(n, 2, generator=g).to(torch.float8_e4m3fn),
        "i64_0dim": torch.arange(n) * 7 + seed,  # 0-dim rows
        "i64_col": torch.arange(n).view(n, 1),  # [B, 1] stays [B, 1]
        "mask": torch.rand(n, 5, generator=g) > 0.5,
        "ragged": torch.nested.nested_tensor(
            [torch.arange(1 + (i * 3 + seed) % 5, dtype=torch.int64) for i in range(n)], layout=torch.jagged
        ),
        "ragged_2d": torch.nested.nested_tensor(
            [torch.randn(1 + i % 3, 2, generator=g) for i in range(n)], layout=torch.jagged
        ),
        "text": make_object_column([f"row-{seed}-{i}" for i in range(n)]),
        "meta": make_object_column([{"turn": i, "tokens": list(range(i))} for i in range(n)]),
    }


def _fill(client: TransferQueueDataPlaneClient, pid: str, seed: int) -> list[str]:
    keys = [f"{pid}-k{i}" for i in range(N)]
    client.put_samples(keys, pid, TensorDict(_columns(N, seed), batch_size=[N]),
                       tags=[{"i": i, "seed": seed, "w": [i, "x"]} for i in range(N)])  # fmt: skip
    client.put_samples([f"{pid}-tag-only"], pid, tags=[{"only": "tags"}])
    return keys


def _plain(value: Any) -> Any:
    if isinstance(value, NonTensorStack):
        return ("objects", value.tolist())
    if value.is_nested:
        return ("ragged", str(value.dtype), [r.float().tolist() for r in value.unbind()])
    return ("dense", str(value.dtype), tuple(value.shape), value.float().tolist())


def _state(client: TransferQueueDataPlaneClient) -> dict[str, Any]:
    """Everything the store holds (kvplane's own partitions included), as comparable values."""
    out = {}
    for pid, tags in sorted(client._list_keys(None).items()):
        tags = dict(sorted(tags.items()))  # listing order follows TransferQueue's reused slots
        data_keys = [k for k in tags if not k.endswith("tag-only")]
        if pid.startswith("__kvplane__/backend/__kvplane__/backend/"):
            continue  # group-summary change entries: bookkeeping a restore writes afresh
        if pid.startswith("__kvplane__/backend/"):
            records = dict(tags)
            # per-client count records, and the group summaries' writer heads (written afresh too)
            bookkeeping = ("claimed/", "writer/")
            for key in [k for k in records if k.startswith(bookkeeping)]:
                records.pop(key)
            records.get("registration", {}).pop("epoch", None)  # a restore starts a new epoch
            out[pid] = records
            continue
        fields = {}
        if data_keys and not pid.startswith("__kvplane__/"):
            got = client.get_samples(data_keys, pid, None)
            fields = {name: _plain(got.get(name)) for name in got.keys()}
        out[pid] = {"tags": dict(tags), "fields": fields}
    return out


def test_a_checkpoint_round_trips_every_kind_across_partitions(client, pid, tmp_path):
    a, b, reg = f"{pid}-a", f"{pid}-b", f"{pid}-reg"
    _fill(client, a, seed=1)
    _fill(client, b, seed=2)
    client.register_partition(reg, ["x"], num_samples=4, consumer_tasks=["train"])  # registered, empty
    plans = plan_partition_id(a, "train")  # a loader's plan log: kvplane's own partition
    client.put_samples(["step-1"], plans, {"plan": make_object_column([[0, 1]])}, tags=[{"final": True}])
    before = _state(client)
    ckpt = tmp_path / "ckpt"
    client.save_checkpoint(ckpt, metadata={"step": 10, "note": "x"})
    assert json.loads((ckpt / "metadata.json").read_text()) == {
        "storage_saved": True, "user_metadata": {"step": 10, "note": "x"}
    }  # fmt: skip

    # Change everything, then restore: the store is exactly what was saved (other partitions gone).
    client.clear_samples(None, a)
    client.put_samples([f"{b}-k0"], b, TensorDict(_columns(1, seed=9), batch_size=[1]), tags=[{"i": 99}])
    _fill(client, f"{pid}-later", seed=3)
    client.load_checkpoint(ckpt)
    assert _state(client) == before
    assert client.list_keys(reg) == {reg: {}}  # the declaration came back: a typo'd task is refused
    with pytest.raises(Exception, match="not a consumer task"):
        client.claim_meta(reg, "trian", ["x"], batch_size=1, blocking=False)

    # The same checkpoint is the embedded backend's format: it loads there with the same content.
    embedded = build_data_plane_client({"impl": "embedded"})
    embedded.load_checkpoint(ckpt)
    got = embedded.get_samples([f"{b}-k{i}" for i in range(N)], b, None)
    want = client.get_samples([f"{b}-k{i}" for i in range(N)], b, None)
    assert {n: _plain(got.get(n)) for n in got.keys()} == {n: _plain(want.get(n)) for n in want.keys()}


def test_claims_continue_exactly_once_after_a_restore(client, pid, tmp_path, empty_dir):
    reg, free = f"{pid}-reg", f"{pid}-free"
    client.register_partition(reg, ["x"], num_samples=10, consumer_tasks=["train", "eval"])
    client.put_samples([f"r{i}" for i in range(10)], reg, {"x": torch.arange(10)})
    client.put_samples([f"f{i}" for i in range(6)], free, {"x": torch.arange(6)})
    train = client.claim_meta(reg, "train", ["x"], batch_size=3).sample_ids
    evals = client.claim_meta(reg, "eval", ["x"], batch_size=5).sample_ids
    first = client.claim_meta(free, "t", ["x"], batch_size=2).sample_ids
    ckpt = tmp_path / "ckpt"
    client.save_checkpoint(ckpt)
    client.claim_meta(reg, "train", ["x"], batch_size=4)  # claimed after the save: handed out again

    client.load_checkpoint(empty_dir)  # "the deployment restarted"
    client.load_checkpoint(ckpt)
    rest = client.claim_meta(reg, "train", ["x"], batch_size=10, blocking=False).sample_ids
    assert sorted(rest + train) == sorted(f"r{i}" for i in range(10)) and not set(rest) & set(train)
    # num_samples counts the claims made before the save: nothing more for train.
    assert client.claim_meta(reg, "train", ["x"], batch_size=1, blocking=False).sample_ids == []
    more = client.claim_meta(reg, "eval", ["x"], batch_size=10, blocking=False).sample_ids
    assert sorted(more + evals) == sorted(f"r{i}" for i in range(10)) and not set(more) & set(evals)
    assert client.check_consumption_status(reg, ["train", "eval"])
    later = client.claim_meta(free, "t", ["x"], batch_size=4).sample_ids
    assert sorted(first + later) == [f"f{i}" for i in range(6)]
    assert client.claim_meta(free, "t", ["x"], batch_size=1, blocking=False).sample_ids == []


def test_a_loader_resumes_exactly_once_from_its_state_and_the_checkpoint(client, pid, tmp_path, empty_dir):
    client.register_partition(pid, ["x"], num_samples=8, consumer_tasks=["train"])
    client.put_samples([f"k{i}" for i in range(8)], pid, {"x": torch.arange(8)})

    def dataset():
        return StreamingDataset(client, partition_id=pid, task_name="train", fields=["x"], batch_size=2,
                                dp_rank=0, dp_world=1)  # fmt: skip

    first = dataset()
    it = iter(first)
    seen = [k for _ in range(2) for k in next(it)[1].sample_ids]
    state = first.state_dict()
    it.close()  # no prefetch in flight: a save is not atomic against concurrent claims
    ckpt = tmp_path / "ckpt"
    client.save_checkpoint(ckpt)

    client.load_checkpoint(empty_dir)
    client.load_checkpoint(ckpt)
    resumed = dataset()
    resumed.load_state_dict(state)
    rest = [k for _, meta in resumed for k in meta.sample_ids]
    assert sorted(seen + rest) == [f"k{i}" for i in range(8)]


def test_include_storage_false_still_saves_the_data(client, pid, tmp_path, empty_dir, caplog):
    keys = _fill(client, pid, seed=4)
    before = _state(client)
    ckpt = tmp_path / "ckpt"
    with caplog.at_level(logging.WARNING):
        client.save_checkpoint(ckpt, include_storage=False, metadata={"k": 1})
    assert "include_storage=False has no effect" in caplog.text
    assert json.loads((ckpt / "metadata.json").read_text())["storage_saved"] is True
    client.load_checkpoint(empty_dir)
    client.load_checkpoint(ckpt)
    assert _state(client) == before and client.get_samples(keys[:1], pid, ["f32"])["f32"].shape == (1, 3)


def test_a_checkpoint_saved_without_storage_is_refused_and_changes_nothing(client, pid, tmp_path):
    embedded = build_data_plane_client({"impl": "embedded"})
    embedded.put_samples(["a"], "p", {"x": torch.ones(1)})
    ckpt = tmp_path / "meta-only"
    from kvplane._checkpoint import write_checkpoint  # the embedded backend never writes one itself

    write_checkpoint(ckpt, embedded._snapshot(), include_storage=False)
    _fill(client, pid, seed=5)
    before = _state(client)
    with pytest.raises(DataPlaneCheckpointError, match="include_storage=False"):
        client.load_checkpoint(ckpt)
    assert _state(client) == before


@pytest.mark.parametrize("victim", ["tensors.safetensors", "index.pkl", "state.json", "manifest.json"])
def test_a_corrupted_checkpoint_is_a_typed_error_and_the_store_is_unchanged(client, pid, tmp_path, victim):
    _fill(client, pid, seed=6)
    ckpt = tmp_path / "ckpt"
    client.save_checkpoint(ckpt)
    client.clear_samples([f"{pid}-k0"], pid)
    _fill(client, f"{pid}-other", seed=7)
    before = _state(client)
    path = ckpt / victim
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DataPlaneCheckpointError, match=victim):
        client.load_checkpoint(ckpt)
    assert _state(client) == before
    with pytest.raises(CheckpointNotFoundError):
        client.load_checkpoint(tmp_path / "missing")
    assert _state(client) == before


def test_a_load_failing_while_writing_puts_the_previous_state_back(client, pid, tmp_path, monkeypatch):
    _fill(client, pid, seed=8)
    ckpt = tmp_path / "ckpt"
    client.save_checkpoint(ckpt)
    client.register_partition(f"{pid}-reg", ["x"], num_samples=3, consumer_tasks=["train"])
    client.put_samples(["r0", "r1", "r2"], f"{pid}-reg", {"x": torch.arange(3)})
    claimed = client.claim_meta(f"{pid}-reg", "train", ["x"], batch_size=2).sample_ids
    _fill(client, f"{pid}-now", seed=9)
    before = _state(client)

    real_put = client._put
    calls = {"n": 0}

    async def failing_put(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # the checkpoint's second write: the store is already half replaced
            raise DataPlaneWriteError("injected: a storage unit failed")
        return await real_put(*args, **kwargs)

    monkeypatch.setattr(client, "_put", failing_put)
    with pytest.raises(DataPlaneWriteError, match="injected"):
        client.load_checkpoint(ckpt)
    monkeypatch.undo()
    assert _state(client) == before
    rest = client.claim_meta(f"{pid}-reg", "train", ["x"], batch_size=3, blocking=False).sample_ids
    assert sorted(rest + claimed) == ["r0", "r1", "r2"]


def test_summaries_after_a_load_equal_a_rescan_for_every_reader_and_no_change_log_is_restored(
    deployment, client: TransferQueueDataPlaneClient, pid: str, tmp_path: Path
):
    reader = TransferQueueDataPlaneClient(deployment.worker_config, bootstrap=False)
    try:
        write_group(client, pid, ["a", "b"], {"x": torch.arange(2)}, group_id="old", weight_version=1)
        client.save_checkpoint(tmp_path / "ck")
        write_group(client, pid, ["c"], {"x": torch.arange(1)}, group_id="new", weight_version=2)
        client.clear_samples(["a"], pid)
        assert client.depth(pid) == reader.depth(pid) == 1  # both hold summaries of the later state
        client.load_checkpoint(tmp_path / "ck")
        for who in (client, reader):
            state = rescan(who, pid)
            assert state["depth"] == state["full_depth"] == 1
            assert state["groups"] == state["full_groups"] == [("old", ["a", "b"], True)]
            fresh, stale = select_groups(who, pid, current_version=1, max_staleness=0)
            assert [g.group_id for g in fresh] == ["old"] and stale == []
        # The change logs were not restored as data: only the partition's own keys and records exist.
        assert sorted(client.list_keys(pid)[pid]) == ["a", "b"]
        log = client._tq.kv_list(log_partition(pid)).get(log_partition(pid), {})
        assert log and {k.split("/")[0] for k in log} == {client._id}  # the load's own announcements
    finally:
        reader.close()
