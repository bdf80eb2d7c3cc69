"""``kvplane save``/``load`` and ``ls``/``stats --checkpoint DIR`` (offline inspection)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kvplane._checkpoint import DenseRows, FieldColumn, PartitionSnapshot, StoreSnapshot, write_checkpoint
from kvplane.adapters.memory import MemoryDataPlaneClient
from kvplane.cli import main
from loaders import StreamingDataset
from loaders._control import plan_partition_id

ROOT = Path(__file__).resolve().parents[2]


def _run(capsys, argv, **kwargs):
    code = main(argv, commands={}, **kwargs)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def saved(client, tmp_path):
    """A checkpoint of 'rollouts' (a committed group g0 of 2 keys, a claimed key, an object field) and
    'eval' (a tag-only key), saved with user metadata."""
    client.register_partition("rollouts", ["x", "note"], num_samples=4, consumer_tasks=["train"])
    tags = {"group_id": "g0", "committed": True, "expected_num_keys": 2}
    client.put_samples(
        ["k0", "k1"], "rollouts", {"x": torch.zeros(2, 4), "note": ["a", "b"]}, tags=[tags] * 2
    )
    client.put_samples(["e0"], "eval", tags=[{"note": "tag only"}])
    client.claim_meta("rollouts", "train", ["x"], 1)
    path = tmp_path / "ckpt"
    client.save_checkpoint(path, metadata={"step": 12})
    return path


# ---------------------------------------------------------------------------------------------- save, load
def test_save_then_load_round_trips_through_the_cli(capsys, client, tmp_path):
    client.put_samples(["k0"], "p", {"x": torch.arange(3).view(1, 3)}, tags=[{"n": 1}])
    path = tmp_path / "ckpt"
    code, out, _ = _run(capsys, ["save", str(path), "--metadata", '{"step": 5}'], client=client)
    assert code == 0 and str(path) in out and "with storage" in out
    assert json.loads((path / "metadata.json").read_text())["user_metadata"] == {"step": 5}
    other = MemoryDataPlaneClient()
    try:
        code, out, _ = _run(capsys, ["load", str(path)], client=other)
        assert code == 0 and "loaded" in out
        assert other.get_samples(["k0"], "p", ["x"])["x"].tolist() == [[0, 1, 2]]
        assert other.list_keys("p") == {"p": {"k0": {"n": 1}}}
    finally:
        other.close()


@pytest.mark.parametrize("command", ["save", "load"])
def test_save_and_load_require_a_config_that_is_not_embedded(capsys, tmp_path, command):
    (tmp_path / "ckpt").mkdir()
    target = str(tmp_path / "ckpt")
    code, out, err = _run(capsys, [command, target])
    assert (code, out) == (2, "")
    assert err.startswith(f"kvplane {command}: error: {command} needs --config FILE")
    assert f"kvplane.{command}_checkpoint(DIR)" in err
    code, _, err = _run(capsys, [command, target, "--config", "embedded"])
    assert code == 2 and "names the embedded backend" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["load", "{missing}", "--config", "transfer_queue"], "argument DIR: directory"),
        (["save", "{file}", "--config", "transfer_queue"], "is a file, not a directory"),
        (["save", "{missing}/deeper", "--config", "transfer_queue"], "does not exist"),
        (["save", "{dir}", "--config", "transfer_queue", "--metadata", "[1, 2]"], "must be a JSON object"),
        (["save", "{dir}", "--config", "transfer_queue", "--metadata", "{not json"], "must be a JSON object"),
        (["ls", "--checkpoint", "{missing}"], "argument --checkpoint: directory"),
        (["stats", "--checkpoint", "{missing}"], "argument --checkpoint: directory"),
        (["stats", "--checkpoint", "{dir}", "--prometheus"], "cannot be combined with --checkpoint"),
        (["ls", "--checkpoint", "{dir}", "--config", "embedded"], "not allowed with argument"),
    ],
)
def test_bad_arguments_are_usage_errors_before_any_work(capsys, tmp_path, argv, message):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "d").mkdir()
    names = {
        "missing": str(tmp_path / "missing"),
        "file": str(tmp_path / "a_file"),
        "dir": str(tmp_path / "d"),
    }
    for name, value in names.items():
        argv = [a.replace("{" + name + "}", value) for a in argv]
    code, out, err = _run(capsys, argv)
    assert (code, out) == (2, "")
    assert message in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "d"]  # nothing was written


def test_loading_a_corrupted_checkpoint_is_a_runtime_error_and_changes_nothing(capsys, client, saved):
    state = saved / "state.json"
    raw = bytearray(state.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    state.write_bytes(bytes(raw))
    other = MemoryDataPlaneClient()
    try:
        other.put_samples(["mine"], "p", {"x": torch.zeros(1)})
        code, out, err = _run(capsys, ["load", str(saved)], client=other)
        assert (code, out) == (1, "")
        assert err.startswith("kvplane: bad request: ") and "state.json" in err
        assert other.list_keys() == {"p": {"mine": {}}}
    finally:
        other.close()


# ------------------------------------------------------------------------------ offline inspection
def test_ls_checkpoint_lists_partitions_keys_tags_and_groups(capsys, saved):
    code, out, err = _run(capsys, ["ls", "--checkpoint", str(saved)])
    assert code == 0 and err == ""  # no note about an empty embedded store: nothing was started
    assert [line.split() for line in out.strip().splitlines()] == [
        ["PARTITION", "KEYS", "GROUPS", "DEPTH"],
        ["eval", "1", "1", "0"],
        ["rollouts", "2", "1", "1"],
    ]
    code, out, _ = _run(capsys, ["ls", "rollouts", "--tags", "--json", "--checkpoint", str(saved)])
    tags = {"committed": True, "expected_num_keys": 2, "group_id": "g0"}
    assert (code, json.loads(out)) == (0, {"rollouts": {"k0": tags, "k1": tags}})
    code, out, _ = _run(capsys, ["ls", "rollouts", "--groups", "--json", "--checkpoint", str(saved)])
    [group] = json.loads(out)["rollouts"]
    assert (group["group_id"], group["keys"], group["committed"], group["is_complete"]) == (
        "g0",
        ["k0", "k1"],
        True,
        True,
    )


def test_stats_checkpoint_reports_metadata_claims_and_bytes_per_field(capsys, saved):
    code, out, _ = _run(capsys, ["stats", "--checkpoint", str(saved), "--json"])
    doc = json.loads(out)
    assert code == 0
    assert (doc["storage_saved"], doc["user_metadata"], doc["partitions"], doc["keys"]) == (
        True,
        {"step": 12},
        2,
        3,
    )
    rollouts = doc["by_partition"]["rollouts"]
    assert rollouts["num_samples"] == 4 and rollouts["tasks"] == {"train": {"claimed": 1, "claimed_total": 1}}
    assert rollouts["fields"] == {
        "note": {"kind": "object", "rows": 2, "bytes": None},
        "x": {"kind": "torch.float32", "rows": 2, "bytes": 2 * 4 * 4},
    }
    assert doc["tensor_bytes"] == 32
    code, out, _ = _run(capsys, ["stats", "--checkpoint", str(saved)])
    assert code == 0
    assert ["user_metadata", '{"step":', "12}"] in [line.split() for line in out.splitlines()]
    assert ["rollouts", "train", "1", "1"] in [line.split() for line in out.splitlines()]


def test_stats_checkpoint_without_storage_has_no_bytes(capsys, tmp_path):
    """A metadata-only checkpoint (as TransferQueue's controller-only one; the embedded backend always
    saves its storage)."""
    column = FieldColumn("torch.float32", [DenseRows(torch.zeros(1, 8))])
    part = PartitionSnapshot(keys=["k0"], tags=[{}], layouts=[("x",)], layout_ids=[0], fields={"x": column})
    write_checkpoint(tmp_path / "meta-only", StoreSnapshot({"p": part}), include_storage=False)
    code, out, _ = _run(capsys, ["stats", "--checkpoint", str(tmp_path / "meta-only"), "--json"])
    doc = json.loads(out)
    assert code == 0 and doc["storage_saved"] is False and doc["tensor_bytes"] is None
    assert doc["by_partition"]["p"]["fields"]["x"] == {"kind": "torch.float32", "rows": 1, "bytes": None}


def test_a_directory_that_is_not_a_checkpoint_is_a_runtime_error(capsys, tmp_path):
    code, out, err = _run(capsys, ["ls", "--checkpoint", str(tmp_path)])
    assert (code, out) == (1, "") and err.startswith("kvplane: bad request: metadata.json not found")


def test_ls_checkpoint_shows_the_loader_plan_logs_it_holds(capsys, client, tmp_path):
    client.register_partition("rollouts", ["x"], num_samples=4, consumer_tasks=["train"])
    client.put_samples([f"s{i}" for i in range(4)], "rollouts", {"x": torch.arange(4)})
    ds = StreamingDataset(client, partition_id="rollouts", task_name="train", fields=["x"], batch_size=2)
    next(iter(ds))
    client.save_checkpoint(tmp_path / "ckpt")
    log = plan_partition_id("rollouts", "train")
    code, out, _ = _run(capsys, ["ls", log, "--json", "--checkpoint", str(tmp_path / "ckpt")])
    assert code == 0 and {"epoch", "rank-0", "step-000000000000"} <= set(json.loads(out)[log])


def test_ls_checkpoint_runs_in_a_new_process(saved):
    """The point of offline inspection: the store that wrote the checkpoint is gone."""
    done = subprocess.run(
        [sys.executable, "-m", "kvplane", "ls", "--json", "--checkpoint", str(saved)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "eval": {"keys": 1, "groups": 1, "depth": 0},
        "rollouts": {"keys": 2, "groups": 1, "depth": 1},
    }
