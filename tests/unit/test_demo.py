"""The main job: `kvplane demo` on the embedded backend, through the CLI with the tools' commands."""

from __future__ import annotations

import json

from kvplane.cli import main
from kvplane_tools.commands import COMMANDS


def test_demo_runs_the_whole_flow_and_reports(tmp_path, capsys):
    plot = tmp_path / "load.png"
    code = main(
        [
            "demo",
            "--steps",
            "4",
            "--dp-world",
            "4",
            "--batch-size",
            "32",
            "--group-size",
            "4",
            "--stale-fraction",
            "0.5",
            "--work-us-per-token",
            "0",
            "--json",
            "--plot",
            str(plot),
        ],
        commands=COMMANDS,
    )
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads(out[: out.rindex("}") + 1])
    assert report["steps"] == 4 and report["dp_world"] == 4
    assert report["samples_trained"] >= 4 * 32
    for step in report["per_step"]:
        assert sum(step["tokens_per_rank"]) == sum(step["nemo_default_tokens_per_rank"])
        assert step["imbalance"] <= step["nemo_default_imbalance"] + 1e-9
    assert report["imbalance_worst"] <= 1.05
    assert report["groups_evicted_stale"] > 0  # half the groups come from a lagging actor
    assert report["groups_admitted"] * 4 >= report["samples_trained"]
    assert report["peak_bytes_outstanding"] >= report["bytes_outstanding"] > 0
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"


def test_demo_rejects_a_batch_that_does_not_split_over_the_ranks(capsys):
    assert main(["demo", "--batch-size", "30", "--dp-world", "4"], commands=COMMANDS) == 1
    assert "multiple of --dp-world" in capsys.readouterr().err
