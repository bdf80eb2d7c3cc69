"""Loader states across store restarts: refused over a store that lacks their plan log, resumed exactly
once over the store restored from the checkpoint saved with them (embedded backend)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvplane import DataPlaneBadRequest
from kvplane.adapters.memory import MemoryDataPlaneClient
from loaders import StreamingDataLoader
from loaders._control import PlanLog
from tests.unit.test_loaders import TASK, consume, dataset, fill, register

ROOT = Path(__file__).resolve().parents[2]
KW = {"batch_size": 8, "micro_batch_size": 2, "prefetch": 3}


def _xs(items):
    return [x for xs, _ in items for x in xs]


def _started(client, pid, n=40, take=5):
    """A stream over ``n`` samples, ``take`` micro-batches consumed; (consumed, state)."""
    register(client, pid, n)
    fill(client, pid, range(n))
    loader = StreamingDataLoader(dataset(client, pid, **KW))
    it = iter(loader)
    got = consume(it, take)
    state = json.loads(json.dumps(loader.state_dict()))
    consume(it, 3)  # trained on after the state was taken
    return got, state


def test_a_state_over_a_fresh_store_is_a_typed_error_naming_the_checkpoint(client, pid):
    _, state = _started(client, pid)
    fresh = MemoryDataPlaneClient()
    try:
        register(fresh, pid, 40)  # the producers refilled the rebuilt store: a fresh cursor would re-deliver
        fill(fresh, pid, range(40))
        ds = dataset(fresh, pid, **KW)
        with pytest.raises(DataPlaneBadRequest, match="holds no plan log") as err:
            ds.load_state_dict(state)
        assert "load_checkpoint" in str(err.value) and state["epoch"] in str(err.value)
        assert ds.state_dict()["step"] is None  # nothing was loaded
    finally:
        fresh.close()


def test_a_state_over_a_store_with_another_epoch_is_refused(client, pid):
    """Another run of the same stream (or its checkpoint) has its own epoch."""
    _, state = _started(client, pid)
    other = MemoryDataPlaneClient()
    try:
        _, theirs = _started(other, pid)
        assert theirs["epoch"] != state["epoch"]
        with pytest.raises(DataPlaneBadRequest, match="store holds epoch"):
            dataset(other, pid, **KW).load_state_dict(state)
    finally:
        other.close()


def test_clearing_the_plan_log_forgets_the_epoch(client, pid):
    _, state = _started(client, pid)
    client.clear_samples(None, PlanLog(client, pid, TASK).partition_id)
    with pytest.raises(DataPlaneBadRequest, match="holds no plan log"):
        dataset(client, pid, **KW).load_state_dict(state)


def test_a_fresh_start_state_loads_over_any_store(client, pid):
    register(client, pid, 8)
    fill(client, pid, range(8))
    state = dataset(client, pid).state_dict()
    assert state["step"] is None and state["epoch"] is None
    ds = dataset(client, pid)
    ds.load_state_dict(state)
    assert sorted(_xs(consume(ds))) == list(range(8))


def test_the_epoch_survives_a_restart_of_the_leader_on_the_same_store(client, pid):
    _, state = _started(client, pid)
    again = StreamingDataLoader(dataset(client, pid, **KW))
    consume(iter(again), 1)  # a new leader object opens the same stream
    assert again.state_dict()["epoch"] == state["epoch"]


def test_a_restored_checkpoint_accepts_its_state_and_rejects_another(client, pid, tmp_path):
    """In one process: checkpoint A with its state resumes exactly once; checkpoint B refuses it."""
    got, state = _started(client, pid, n=40, take=5)
    client.save_checkpoint(tmp_path / "a")
    other = MemoryDataPlaneClient()
    restored = MemoryDataPlaneClient()
    try:
        _started(other, pid)
        other.save_checkpoint(tmp_path / "b")
        restored.load_checkpoint(tmp_path / "b")
        with pytest.raises(DataPlaneBadRequest, match="store holds epoch"):
            dataset(restored, pid, **KW).load_state_dict(state)
        restored.load_checkpoint(tmp_path / "a")
        ds = dataset(restored, pid, **KW)
        ds.load_state_dict(state)
        rest = _xs(consume(ds))
    finally:
        other.close()
        restored.close()
    assert sorted(_xs(got) + rest) == list(range(40))


# ------------------------------------------------------------ across processes
_SCRIPT = r"""
import json, os, sys
import kvplane
from loaders import StreamingDataLoader, StreamingDataset

phase, ckpt, out = sys.argv[1], sys.argv[2], sys.argv[3]
N, PID, TASK = 1000, "rollouts", "train"
kw = dict(partition_id=PID, task_name=TASK, fields=["x"], batch_size=32, micro_batch_size=8, prefetch=3,
          timeout_s=30.0)
kvplane.init()

def xs(loader, limit=None):
    seen = []
    for i, (td, meta) in enumerate(loader):
        seen += td["x"].tolist()
        if limit is not None and i + 1 == limit:
            break
    return seen

if phase == "first":
    import torch
    client = kvplane.get_client()
    client.register_partition(PID, ["x"], num_samples=N, consumer_tasks=[TASK])
    client.put_samples([f"s{i}" for i in range(N)], PID, {"x": torch.arange(N)})
    loader = StreamingDataLoader(StreamingDataset({"impl": "embedded"}, **kw))
    it = iter(loader)
    before = xs(it, 37)
    state = loader.state_dict()
    kvplane.save_checkpoint(ckpt, metadata={"trainer_step": 37})
    lost = xs(it, 11)  # trained on after the checkpoint; the process then dies without cleanup
    with open(out, "w") as f:
        json.dump({"before": before, "lost": lost, "state": state}, f)
    os._exit(0)
else:
    saved = json.load(open(sys.argv[4]))
    loader = StreamingDataLoader(StreamingDataset({"impl": "embedded"}, **kw))
    try:
        loader.load_state_dict(saved["state"])  # before the restore: this store has no such stream
        refused = None
    except kvplane.DataPlaneBadRequest as exc:
        refused = str(exc)
    assert kvplane.load_checkpoint(ckpt) == {"trainer_step": 37}
    loader.load_state_dict(saved["state"])
    with open(out, "w") as f:
        json.dump({"refused": refused, "after": xs(loader)}, f)
"""


def _run(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *args], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_loader_resumes_exactly_once_in_a_new_process_after_restoring_the_checkpoint(tmp_path):
    ckpt, first, second = (str(tmp_path / n) for n in ("ckpt", "first.json", "second.json"))
    _run("first", ckpt, first)
    _run("second", ckpt, second, first)
    one, two = json.loads(Path(first).read_text()), json.loads(Path(second).read_text())
    assert "holds no plan log" in two["refused"] and "load_checkpoint" in two["refused"]
    delivered = one["before"] + two["after"]
    assert len(one["before"]) == 37 * 8
    assert len(delivered) == 1000 and sorted(delivered) == list(range(1000))  # none repeated, none lost
    assert two["after"][: len(one["lost"])] == one["lost"]  # what the dead process trained on comes again
