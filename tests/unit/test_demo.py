"""The main job: `kvplane demo` on the embedded backend, through the CLI with the tools' commands."""

from __future__ import annotations

import json
import sys

import pytest

import kvplane._factory
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
    assert report["backend"] == "embedded"
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


def test_demo_with_no_staleness_allowed_still_trains(capsys):
    """--max-staleness 0 (the lowest accepted value) admits only groups of the current version."""
    argv = [
        "demo",
        "--steps",
        "2",
        "--batch-size",
        "16",
        "--group-size",
        "4",
        "--work-us-per-token",
        "0",
        "--json",
    ]
    assert main([*argv, "--max-staleness", "0"], commands=COMMANDS) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 2


@pytest.fixture
def nothing_is_built(monkeypatch):
    """Fail the test if the demo builds a client: the checks must come before any work."""
    monkeypatch.setattr(kvplane._factory, "build_data_plane_client", lambda *a, **k: pytest.fail("built"))
    import kvplane_tools.demo

    monkeypatch.setattr(kvplane_tools.demo, "build_data_plane_client", lambda *a, **k: pytest.fail("built"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--stale-fraction", "1.0"], "argument --stale-fraction: must be a number >= 0 and < 1, got '1.0'"),
        (
            ["--stale-fraction", "-0.1"],
            "argument --stale-fraction: must be a number >= 0 and < 1, got '-0.1'",
        ),
        (["--max-staleness", "-1"], "argument --max-staleness: must be an integer >= 0, got '-1'"),
        (["--steps", "0"], "argument --steps: must be an integer >= 1 and <= 10000, got '0'"),
        (["--steps", "two"], "argument --steps: must be an integer >= 1 and <= 10000, got 'two'"),
        (["--dp-world", "0"], "argument --dp-world: must be an integer >= 1 and <= 256, got '0'"),
        (
            ["--batch-size", "10**30"],
            "argument --batch-size: must be an integer >= 1 and <= 65536, got '10**30'",
        ),
        (["--group-size", "0"], "argument --group-size: must be an integer >= 1, got '0'"),
        (
            ["--work-us-per-token", "-1"],
            "argument --work-us-per-token: must be a number >= 0 and <= 1000, got '-1'",
        ),
        (
            ["--work-us-per-token", "inf"],
            "argument --work-us-per-token: must be a number >= 0 and <= 1000, got 'inf'",
        ),
        (["--seed", "1.5"], "argument --seed: must be an integer, got '1.5'"),
        (["--plot", "load.gif"], "argument --plot: must end in .png or .pdf or .svg, got 'load.gif'"),
        (["--plot", "/nonexistent/load.png"], "argument --plot: directory '/nonexistent' does not exist"),
        (
            ["--config", "no_such_example"],
            "argument --config: data plane config: 'no_such_example' is neither",
        ),
        (["--batch-size", "30"], "--batch-size (30) must be a multiple of --dp-world (4)"),
        (["--batch-size", "8", "--group-size", "16"], "--group-size (16) must be <= --batch-size (8)"),
    ],
)
def test_bad_demo_options_are_usage_errors_before_any_work(capsys, nothing_is_built, argv, message):
    code = main(["demo", *argv], commands=COMMANDS)
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err.startswith(f"kvplane demo: error: {message}") and err.endswith("(see kvplane demo --help)\n")
    assert err.count("\n") == 1


def test_demo_plot_without_matplotlib_is_one_line_with_the_install_hint(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    monkeypatch.setattr(kvplane._factory, "build_data_plane_client", lambda *a, **k: pytest.fail("built"))
    code = main(["demo", "--plot", str(tmp_path / "load.png")], commands=COMMANDS)
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err == (
        "kvplane: missing dependency: kvplane demo --plot needs 'matplotlib', which is not installed: "
        "pip install 'kvplane[plot]'\n"
    )


def test_demo_on_transfer_queue_without_it_installed_is_one_line(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "transfer_queue", None)
    code = main(["demo", "--config", "transfer_queue"], commands=COMMANDS)
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err == (
        "kvplane: missing dependency: impl: transfer_queue needs 'transfer_queue', which is not installed: "
        "pip install 'kvplane[transferqueue]'\n"
    )
