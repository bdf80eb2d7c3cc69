"""Two Ray nodes on this machine: a producer on node A, two DP-rank loaders on node B.

The scenario runs in its own driver process (:mod:`tests.e2e.two_nodes`), because this pytest process
already holds the session's Ray connection. The driver starts in a new session, so every process it
starts (the cluster's GCS and raylets, Ray workers, TransferQueue's actors) shares its session id:
afterwards every process left in that session is killed by its PID, whether the driver finished,
failed or overran its deadline. Ray runs with token authentication (``RAY_AUTH_MODE=token`` and a
fresh ``RAY_AUTH_TOKEN`` that every node and worker inherits), and a process with another token is
refused with a typed error.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from .two_nodes import BATCH_SIZE, NUM_SAMPLES
from .workers import key_of

ROOT = Path(__file__).resolve().parents[2]
#: The driver's own deadline for the whole scenario (cluster start, bootstrap, produce, consume).
SCENARIO_DEADLINE_S = 240
#: The test's limit for the driver process, including the cluster's shutdown.
DRIVER_LIMIT_S = SCENARIO_DEADLINE_S + 60
_SWEEP_S = 15.0


def _session_pids(sid: int) -> list[int]:
    """PIDs of the live (non-zombie) processes in session ``sid``, from ``/proc``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        state, _ppid, _pgrp, session = stat.rsplit(")", 1)[1].split()[:4]
        if int(session) == sid and state != "Z":
            pids.append(int(entry.name))
    return pids


def _kill_session(sid: int) -> list[int]:
    """SIGKILL every process of session ``sid`` until none is left (bounded); return the survivors."""
    deadline = time.monotonic() + _SWEEP_S
    while (pids := _session_pids(sid)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    return pids


def _run_driver(tmp_path: Path, *args: str) -> dict:
    out, log = tmp_path / "two_nodes.json", tmp_path / "driver.log"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_USAGE_STATS_ENABLED="0",
    )
    cmd = [sys.executable, "-m", "tests.e2e.two_nodes", str(out), str(SCENARIO_DEADLINE_S), *args]
    with log.open("w") as sink:
        driver = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            rc = driver.wait(timeout=DRIVER_LIMIT_S)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            survivors = _kill_session(driver.pid)  # the driver itself too, if it overran
            driver.wait(_SWEEP_S)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
    assert rc == 0, f"the two-node driver {'overran' if rc is None else f'exited {rc}'}:\n{tail}"
    assert survivors == [], f"processes of the two-node cluster outlived the sweep: {survivors}"
    return json.loads(out.read_text())


def test_a_producer_on_one_node_and_two_dp_ranks_on_another_get_each_sample_once_bit_exact(tmp_path):
    seen = _run_driver(tmp_path)
    node_a, node_b = seen["nodes"]["node_a"], seen["nodes"]["node_b"]
    assert node_a != node_b

    # TransferQueue spread the two SimpleStorage units over the two nodes, one each.
    assert sorted(seen["storage_units"]) == ["TransferQueueStorageUnit#0", "TransferQueueStorageUnit#1"]
    assert sorted(seen["storage_units"].values()) == sorted([node_a, node_b])

    assert seen["producer"] == {"node": node_a, "written": NUM_SAMPLES}
    ranks = seen["ranks"]
    assert [(r["rank"], r["node"]) for r in ranks] == [(0, node_b), (1, node_b)]

    # Every sample exactly once across the two ranks (each row was checked bit-exact where received).
    received = sorted(k for r in ranks for item in r["steps"] for k in item["ids"])
    assert received == [key_of(i) for i in range(NUM_SAMPLES)]
    # Both ranks took part in every step, the short last one included.
    steps = [sorted({item["step"] for item in r["steps"]}) for r in ranks]
    assert steps[0] == steps[1] == list(range(-(-NUM_SAMPLES // BATCH_SIZE)))
    assert seen["consumed"] is True

    # Ray enforced its token: a process outside the cluster with another token could not attach.
    refused = seen["wrong_token"]
    assert refused["error"] == "DataPlaneUnavailable", refused
    assert any("token" in cause.lower() for cause in refused["causes"]), refused


def test_columnar_on_two_nodes_and_a_node_joining_later_gets_each_sample_once_bit_exact(tmp_path):
    seen = _run_driver(tmp_path, "columnar")
    nodes = seen["nodes"]
    assert len(set(nodes.values())) == 3

    # The bootstrap started one owner per alive node (A and B); node C joined later and has none.
    owner_nodes = sorted(o["node"] for o in seen["owners_at_start"].values())
    assert owner_nodes == sorted([nodes["node_a"], nodes["node_b"]])
    assert sorted(o["node"] for o in seen["owners_at_end"].values()) == owner_nodes

    producers = seen["producers"]
    assert [p["node"] for p in producers] == [nodes["node_a"], nodes["node_c"]]
    assert sum(p["written"] for p in producers) == NUM_SAMPLES
    # Node A's producer left its columns with node A's owner (the producer task has exited since).
    at_a = next(o for o in seen["owners_at_end"].values() if o["node"] == nodes["node_a"])
    assert at_a["objects"] > 0

    # Both ranks on node B read every sample once, bit-exact (checked where received), from both
    # producers' nodes: the late node's columns went to an existing owner and outlived their producer.
    ranks = seen["ranks"]
    assert [r["node"] for r in ranks] == [nodes["node_b"]] * 2
    received = sorted(k for r in ranks for item in r["steps"] for k in item["ids"])
    assert received == [key_of(i) for i in range(NUM_SAMPLES)]
    assert seen["consumed"] is True
