"""A process with a loader iterator still open exits promptly, whatever state the iterator is in.

Each scenario is a script run in a subprocess (the embedded backend) that leaves ``it = iter(loader)``
at module level and raises; the subprocess's timeout is the deadline a hang would miss. The debug
log shows that the exit path skipped the acknowledgement it could not safely make.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXIT_DEADLINE_S = 120

PREAMBLE = """
import logging, sys, threading, torch, kvplane
from loaders import StreamingDataLoader, StreamingDataset
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(name)s %(message)s")
client = kvplane.init()
client.register_partition("p", ["x"], num_samples=None, consumer_tasks=["t"])
client.put_samples([f"s{i}" for i in range(8)], "p", {"x": torch.arange(8)})
"""

SCENARIOS = {
    # the step was handed out whole: its acknowledgement is what the exit path skips
    "after-a-whole-step": """
        ds = StreamingDataset(client, partition_id="p", task_name="t", fields=["x"], batch_size=4,
                              timeout_s=600)
        it = iter(StreamingDataLoader(ds))
        print(next(it)[0]["x"].tolist(), flush=True)
        raise RuntimeError("training failed")
    """,
    # the leader's planner waits in a claim that only a 600 s timeout would end
    "leader-waiting-for-data": """
        ds = StreamingDataset(client, partition_id="p", task_name="t", fields=["x"], batch_size=4,
                              timeout_s=600)
        it = iter(StreamingDataLoader(ds))
        print([next(it)[0]["x"].tolist() for _ in range(2)], flush=True)
        threading.Timer(0.5, lambda: None).start()
        raise RuntimeError("training failed")
    """,
    # a follower waits for a plan no leader will write, mid-step of a replica's stream
    "follower-waiting-for-a-plan": """
        ds = StreamingDataset(client, partition_id="p", task_name="t", fields=["x"], batch_size=4,
                              micro_batch_size=2, dp_rank=1, dp_world=2, timeout_s=600)
        lead = StreamingDataset(client, partition_id="p", task_name="t", fields=["x"], batch_size=4,
                                micro_batch_size=2, dp_rank=0, dp_world=2, timeout_s=600)
        lead_it = iter(lead)
        next(lead_it)
        it = iter(StreamingDataLoader(ds))
        print(next(it)[0]["x"].tolist(), flush=True)
        raise RuntimeError("training failed")
    """,
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_an_open_iterator_does_not_hang_the_exit(scenario, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(PREAMBLE + textwrap.dedent(SCENARIOS[scenario]))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=EXIT_DEADLINE_S,
    )
    assert done.returncode == 1, done.stderr
    assert "RuntimeError: training failed" in done.stderr
    assert "interpreter exit" in done.stderr, done.stderr  # the finalizer path, said at debug level
