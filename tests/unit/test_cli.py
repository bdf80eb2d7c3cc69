"""The kvplane CLI, run in-process through ``main([...])`` and as ``python -m kvplane`` /
``python -m kvplane_tools``; the tools' commands (``demo``, ``bench``) through the explicit registry
and through the entry points ``pyproject.toml`` declares."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch

import kvplane._factory
import kvplane.cli
from kvplane import DataPlaneBadRequest
from kvplane._prometheus import PrometheusExporter
from kvplane.adapters.memory import MemoryDataPlaneClient
from kvplane.cli import Command, main
from kvplane_tools.bench import SUITES
from kvplane_tools.commands import COMMANDS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def populated(client):
    """Two partitions: 'rollouts' (a committed group g0 of two keys, an open group g1) and 'eval'."""
    committed = {"group_id": "g0", "committed": True, "weight_version": 3, "size_bytes": 64}
    client.put_samples(["k0", "k1"], "rollouts", {"x": torch.zeros(2, 4)}, tags=[committed, committed])
    client.put_samples(
        ["k2"], "rollouts", {"x": torch.zeros(1, 4)}, tags=[{"group_id": "g1", "committed": False}]
    )
    client.put_samples(["e0"], "eval", tags=[{"note": "tag only"}])
    return client


def _run(capsys, argv, **kwargs):
    code = main(argv, **kwargs)
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------- ls
def test_ls_lists_partitions_with_key_group_and_depth_counts(capsys, populated):
    code, out, _ = _run(capsys, ["ls"], client=populated)
    assert code == 0
    lines = [line.split() for line in out.strip().splitlines()]
    assert lines == [
        ["PARTITION", "KEYS", "GROUPS", "DEPTH"],
        ["eval", "1", "1", "0"],
        ["rollouts", "3", "2", "1"],
    ]
    code, out, _ = _run(capsys, ["ls", "--json"], client=populated)
    assert json.loads(out) == {
        "eval": {"keys": 1, "groups": 1, "depth": 0},
        "rollouts": {"keys": 3, "groups": 2, "depth": 1},
    }


def test_ls_partition_lists_keys_tags_or_groups(capsys, populated):
    assert _run(capsys, ["ls", "rollouts"], client=populated)[1].split() == ["k0", "k1", "k2"]
    code, out, _ = _run(capsys, ["ls", "rollouts", "--tags", "--json"], client=populated)
    assert json.loads(out)["rollouts"]["k2"] == {"group_id": "g1", "committed": False}
    code, out, _ = _run(capsys, ["ls", "rollouts", "--groups", "--json"], client=populated)
    groups = {g["group_id"]: g for g in json.loads(out)["rollouts"]}
    assert groups["g0"]["keys"] == ["k0", "k1"] and groups["g0"]["committed"] is True
    assert groups["g0"]["weight_version"] == 3 and groups["g0"]["size_bytes"] == 64
    assert groups["g1"]["num_keys"] == 1 and groups["g1"]["committed"] is False
    code, out, _ = _run(capsys, ["ls", "rollouts", "--groups"], client=populated)
    table = [line.split() for line in out.strip().splitlines()]
    assert table[0][:4] == ["GROUP", "KEYS", "EXPECTED", "COMMITTED"]
    assert table[1][:4] == ["g0", "2", "-", "True"]


def test_ls_tags_without_partition_covers_every_partition(capsys, populated):
    code, out, _ = _run(capsys, ["ls", "--tags"], client=populated)
    assert code == 0
    assert "# eval" in out and "# rollouts" in out and '{"note": "tag only"}' in out


def test_ls_of_an_unknown_partition_says_it_is_empty(capsys, populated):
    code, out, _ = _run(capsys, ["ls", "nope"], client=populated)
    assert code == 0 and out.strip() == "(partition 'nope' has no keys)"


@pytest.mark.parametrize("command", ["ls", "stats", "ping"])
def test_without_config_the_inspection_says_it_looked_at_an_empty_embedded_store(capsys, command):
    code, _, err = _run(capsys, [command])
    assert code == 0
    [note] = err.splitlines()
    assert note.startswith("kvplane: note: no --config: ") and "empty embedded store" in note
    assert "--config FILE" in note and "--config transfer_queue" in note


def test_an_injected_client_or_a_config_gets_no_note(capsys, client, tmp_path):
    assert _run(capsys, ["ls"], client=client)[2] == ""
    assert _run(capsys, ["ls", "--config", "embedded"])[2] == ""


def test_ls_on_the_default_embedded_backend_is_empty(capsys):
    code, out, _ = _run(capsys, ["ls"])
    assert (code, out) == (0, "(no partitions)\n")
    code, out, _ = _run(capsys, ["ls", "--json"])
    assert (code, json.loads(out)) == (0, {})


@pytest.mark.parametrize("flag", ["--groups", "--tags"])
def test_ls_groups_or_tags_with_nothing_stored_says_so(capsys, client, flag):
    assert _run(capsys, ["ls", flag], client=client)[:2] == (0, "(no partitions)\n")
    code, out, _ = _run(capsys, ["ls", "train", flag], client=client)
    kind = "groups" if flag == "--groups" else "keys"
    assert (code, out) == (0, f"(partition 'train' has no {kind})\n")


def test_inspection_attaches_to_a_transfer_queue_config_and_observes_nothing(capsys, tmp_path, monkeypatch):
    cfg = tmp_path / "tq.yaml"
    cfg.write_text(
        "impl: transfer_queue\nbackend: simple\nstorage_capacity: null\nnum_storage_units: 1\n"
        "claim_meta_poll_interval_s: 0.01\nobservability: {enabled: true, prometheus_port: 0}\n"
    )
    built = []

    def fake_build(config, *, bootstrap=True):  # stands in for the TransferQueue adapter: no Ray here
        client = MemoryDataPlaneClient()
        built.append((config, bootstrap, client))
        return client

    monkeypatch.setattr(kvplane._factory, "build_data_plane_client", fake_build)
    code, out, _ = _run(capsys, ["ls", "--config", str(cfg)])
    assert (code, out) == (0, "(no partitions)\n")
    [(config, bootstrap, client)] = built
    assert config.impl == "transfer_queue" and bootstrap is False
    assert config.observability.enabled is False and config.observability.prometheus_port is None
    assert _run(capsys, ["ping"], client=client)[0] == 1  # the CLI closed (detached) what it built


def test_a_memory_config_file_with_observability_serves_nothing(capsys, tmp_path, monkeypatch):
    cfg = tmp_path / "memory.yaml"
    cfg.write_text(
        "data_plane:\n  impl: memory\n  observability:\n    enabled: true\n    prometheus_port: 0\n"
    )
    monkeypatch.setattr(PrometheusExporter, "serve", lambda *a, **k: pytest.fail("inspection must not serve"))
    code, out, _ = _run(capsys, ["ls", "--config", str(cfg)])
    assert (code, out) == (0, "(no partitions)\n")


# ---------------------------------------------------------------------------------------------- stats
def test_stats_reports_inventory_and_capabilities(capsys, populated):
    code, out, _ = _run(capsys, ["stats", "--json"], client=populated)
    doc = json.loads(out)
    assert code == 0
    assert (doc["partitions"], doc["keys"], doc["groups"], doc["depth"]) == (2, 4, 3, 1)
    assert doc["group_size_bytes"] == 64
    assert doc["capabilities"] == {
        name: getattr(populated.get_capabilities(), name) for name in doc["capabilities"]
    }
    assert doc["by_partition"]["rollouts"] == {"keys": 3, "groups": 2, "depth": 1}
    code, out, _ = _run(capsys, ["stats"], client=populated)
    rows = dict(line.split(None, 1) for line in out.strip().splitlines()[1:])
    assert rows["keys"] == "4" and rows["partitions"] == "2"


def test_stats_prometheus_prints_the_exposition(capsys, populated):
    code, out, _ = _run(capsys, ["stats", "--prometheus"], client=populated)
    assert code == 0
    assert 'kvplane_partition_keys{partition="rollouts"} 3.0' in out
    assert 'kvplane_partition_depth{partition="rollouts"} 1.0' in out
    assert 'kvplane_ops_total{op="ping",status="ok"} 1.0' in out
    assert "# TYPE kvplane_op_duration_seconds histogram" in out


# ---------------------------------------------------------------------------------------------- ping
def test_ping_answers_pong(capsys, client):
    code, out, _ = _run(capsys, ["ping"], client=client)
    assert code == 0 and out.startswith("PONG (MemoryDataPlaneClient, ")
    code, out, _ = _run(capsys, ["ping", "--json"])
    doc = json.loads(out)
    assert code == 0 and doc["ok"] is True and doc["backend"] == "embedded" and doc["ms"] >= 0


def test_ping_of_an_unavailable_backend_exits_1(capsys, client):
    client.close()
    code, out, err = _run(capsys, ["ping"], client=client)
    assert (code, out) == (1, "")
    assert err.startswith("kvplane: unavailable: ") and err.count("\n") == 1
    code, out, _ = _run(capsys, ["ping", "--json"], client=client)
    assert code == 1 and json.loads(out)["ok"] is False


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf", "1e10", "soon"])
def test_ping_rejects_a_bad_timeout_as_a_usage_error(capsys, timeout):
    code, out, err = _run(capsys, ["ping", "--timeout", timeout])
    assert (code, out) == (2, "")
    assert err == (
        f"kvplane ping: error: argument --timeout: must be a number > 0 and <= 86400, got {timeout!r} "
        "(see kvplane ping --help)\n"
    )


def test_stats_names_the_backend_embedded(capsys):
    code, out, _ = _run(capsys, ["stats", "--json"])
    assert code == 0 and json.loads(out)["backend"] == "embedded"
    code, out, _ = _run(capsys, ["stats", "--config", "embedded"])
    assert code == 0 and ["backend", "embedded"] in [line.split() for line in out.splitlines()]


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("command", ["ls", "stats", "ping"])
def test_a_bad_config_is_a_usage_error_with_one_line(capsys, tmp_path, command, monkeypatch):
    monkeypatch.setattr(kvplane._factory, "build_data_plane_client", lambda *a, **k: pytest.fail("built"))
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("impl: embedded\nstorage_capacty: 3\n")
    code, out, err = _run(capsys, [command, "--config", str(cfg)])
    assert (code, out) == (2, "")
    assert err.startswith(
        f"kvplane {command}: error: argument --config: data plane config: 'storage_capacty' is an unknown key"
    )
    assert err.count("\n") == 1


def test_a_missing_or_unparsable_config_file_is_named(capsys, tmp_path):
    code, _, err = _run(capsys, ["ls", "--config", str(tmp_path / "nope.yaml")])
    assert code == 2 and "no such file" in err and "nope.yaml" in err and err.count("\n") == 1
    broken = tmp_path / "broken.yaml"
    broken.write_text("impl: [unclosed\n")
    code, _, err = _run(capsys, ["ls", "--config", str(broken)])
    assert code == 2 and "is not valid YAML" in err
    assert err.startswith("kvplane ls: error: argument --config:")


def test_an_unknown_example_name_lists_the_examples(capsys):
    code, _, err = _run(capsys, ["stats", "--config", "trasnfer_queue"])
    assert code == 2
    assert "'trasnfer_queue' is neither a file nor an example config name" in err
    assert "(examples: embedded, mooncake, transfer_queue)" in err


def test_config_and_an_explicit_client_conflict(capsys, client):
    code, _, err = _run(capsys, ["ls", "--config", "embedded"], client=client)
    assert code == 1 and "--config cannot be combined" in err


def test_usage_errors_return_2_without_exiting(capsys):
    assert main([]) == 2
    assert "required: COMMAND" in capsys.readouterr().err
    assert main(["ls", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert err == "kvplane ls: error: unrecognized arguments: --bogus (see kvplane ls --help)\n"
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("kvplane ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ls", ""], "argument partition: must not be empty"),
        (["ls", "--tags", "--groups"], "argument --groups: not allowed with argument --tags"),
        (["stats", "--json", "--prometheus"], "argument --prometheus: not allowed with argument --json"),
    ],
)
def test_inspection_options_are_checked_before_any_work(capsys, monkeypatch, argv, message):
    monkeypatch.setattr(kvplane._factory, "build_data_plane_client", lambda *a, **k: pytest.fail("built"))
    code, out, err = _run(capsys, argv)
    assert (code, out) == (2, "")
    assert err == f"kvplane {argv[0]}: error: {message} (see kvplane {argv[0]} --help)\n"


def test_a_bad_log_level_in_the_environment_is_a_usage_error(capsys, monkeypatch):
    monkeypatch.setenv("KVPLANE_LOG_LEVEL", "verbose")
    code, out, err = _run(capsys, ["ping"])
    assert (code, out) == (2, "")
    assert err.startswith("kvplane: error: KVPLANE_LOG_LEVEL='VERBOSE' is not one of DEBUG, INFO")


# ---------------------------------------------------------------------------------------------- logging
def test_log_level_configures_the_kvplane_logger_for_the_command_only(capsys, client):
    package_logger = logging.getLogger("kvplane")
    handlers, level = list(package_logger.handlers), package_logger.level

    def chatty(event):
        logging.getLogger("kvplane._observability").debug("saw %s", event["op"])

    from kvplane._observability import MetricsDataPlaneClient

    code, _, err = _run(
        capsys, ["--log-level", "debug", "ping"], client=MetricsDataPlaneClient(client, chatty)
    )
    assert code == 0 and "DEBUG kvplane._observability: saw ping" in err
    assert (package_logger.handlers, package_logger.level) == (handlers, level)
    code, _, err = _run(capsys, ["ping"], client=MetricsDataPlaneClient(client, chatty))
    assert "saw ping" not in err  # default WARNING


# ---------------------------------------------------------------------------------------------- bench
@pytest.fixture
def fake_suites(tmp_path, monkeypatch):
    """Three suites registered in the tools' registry, in modules of an extra directory."""
    (tmp_path / "clitest_tiny.py").write_text(
        "def run(*, quick=False):\n"
        "    timing = {'median': 0.5, 'min': 0.4, 'max': 0.6}\n"
        "    return {'quick': quick, 'ratio_vs_raw': 0.97, 'timing': timing}\n"
    )
    (tmp_path / "clitest_broken.py").write_text("def run(*, quick=False):\n    raise RuntimeError('boom')\n")
    (tmp_path / "clitest_partial.py").write_text(
        "def run(*, quick=False):\n"
        "    failed = {'status': 'error', 'error': 'ImportError: x'}\n"
        "    return {'ratio': 1.0, 'transfer_queue': {'simple': failed}}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("clitest_tiny", "clitest_broken", "clitest_partial"):
        monkeypatch.setitem(SUITES, name, name)
    yield
    for name in ("clitest_tiny", "clitest_broken", "clitest_partial"):
        sys.modules.pop(name, None)


def _tools(capsys, argv):
    return _run(capsys, argv, commands=COMMANDS)


def test_the_suites_are_one_explicit_registry():
    assert sorted(SUITES) == ["balance", "checkpoint", "kv", "loader"]
    assert all(module.startswith("kvplane_tools.bench.") for module in SUITES.values())


def test_bench_runs_a_selected_suite_and_prints_json(capsys, fake_suites):
    code, out, err = _tools(capsys, ["bench", "--suite", "clitest_tiny", "--quick"])
    assert code == 0
    doc = json.loads(out)
    assert doc["quick"] is True and list(doc["suites"]) == ["clitest_tiny"]
    outcome = doc["suites"]["clitest_tiny"]
    assert outcome["status"] == "ok" and outcome["result"]["quick"] is True and outcome["seconds"] >= 0
    assert {"python", "torch", "cpu_count"} <= set(doc["host"])
    table = err.splitlines()
    assert table[0].split()[:2] == ["SUITE", "STATUS"]
    assert table[1].split()[:2] == ["clitest_tiny", "ok"]
    assert table[2].split() == ["ratio_vs_raw", "0.97"]  # headline metrics first
    assert ["timing", "0.5"] in [line.split() for line in table]  # a timing summary shows its median


def test_bench_writes_output_and_fails_when_a_suite_fails(capsys, fake_suites, tmp_path):
    target = tmp_path / "result.json"
    argv = ["bench", "--suite", "clitest_tiny,clitest_broken", "--output", str(target)]
    code, out, err = _tools(capsys, argv)
    assert code == 1 and out == ""
    doc = json.loads(target.read_text())
    assert doc["suites"]["clitest_tiny"]["status"] == "ok"
    assert doc["suites"]["clitest_broken"] == {
        "status": "error",
        "seconds": doc["suites"]["clitest_broken"]["seconds"],
        "error": "RuntimeError: boom",
    }
    assert f"wrote {target}" in err


def test_bench_fails_when_part_of_a_suite_failed_and_keeps_the_rest(capsys, fake_suites):
    code, out, _ = _tools(capsys, ["bench", "--suite", "clitest_partial"])
    outcome = json.loads(out)["suites"]["clitest_partial"]
    assert code == 1 and outcome["status"] == "error"
    assert outcome["error"] == "transfer_queue.simple: ImportError: x"
    assert outcome["result"]["ratio"] == 1.0


def test_bench_unknown_suite_is_a_one_line_usage_error(capsys, fake_suites):
    code, out, err = _tools(capsys, ["bench", "--suite", "clitest_tiny,nope"])
    assert (code, out) == (2, "")
    assert err.startswith("kvplane bench: error: argument --suite: unknown bench suite(s) ['nope']")
    assert "clitest_tiny" in err and err.count("\n") == 1


@pytest.fixture
def no_suite_runs(monkeypatch):
    """Fail the test if a bench suite starts: the checks must come before any work."""
    import kvplane_tools.bench.runner as runner

    monkeypatch.setattr(runner, "run_suite", lambda *a, **k: pytest.fail("a suite ran"))


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("/nonexistent/x.json", "directory '/nonexistent' does not exist (for '/nonexistent/x.json')"),
        ("{tmp}", "'{tmp}' is a directory, not a file"),
        ("{tmp}/result.txt", "must end in .json, got '{tmp}/result.txt'"),
    ],
)
def test_bench_output_is_checked_before_any_suite_runs(capsys, no_suite_runs, tmp_path, target, message):
    target, message = (s.format(tmp=tmp_path) for s in (target, message))
    code, out, err = _tools(capsys, ["bench", "--output", target])
    assert (code, out) == (2, "")
    assert err == f"kvplane bench: error: argument --output: {message} (see kvplane bench --help)\n"


def test_bench_output_in_a_read_only_place_is_refused(capsys, no_suite_runs, tmp_path, monkeypatch):
    import kvplane._cli_args

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(kvplane._cli_args.tempfile, "NamedTemporaryFile", refuse)
    code, _, err = _tools(capsys, ["bench", "--output", str(tmp_path / "r.json")])
    assert code == 2 and f"cannot write in '{tmp_path}': Permission denied" in err


def test_a_failed_final_write_still_prints_the_report(capsys, fake_suites, tmp_path, monkeypatch):
    target = tmp_path / "gone" / "r.json"
    target.parent.mkdir()
    import kvplane_tools.bench.runner as runner

    real_run_suite = runner.run_suite

    def run_then_lose_the_directory(*args, **kwargs):  # the directory was there when it was checked
        outcome = real_run_suite(*args, **kwargs)
        target.parent.rmdir()
        return outcome

    monkeypatch.setattr(runner, "run_suite", run_then_lose_the_directory)
    code, out, err = _tools(capsys, ["bench", "--suite", "clitest_tiny", "--output", str(target)])
    assert code == 1
    assert json.loads(out)["suites"]["clitest_tiny"]["status"] == "ok"  # the work is not lost
    assert err.splitlines()[-1].startswith(f"kvplane: error: could not write {target}: ")
    assert "the report is on stdout" in err


def test_bench_list(capsys, fake_suites):
    code, out, _ = _tools(capsys, ["bench", "--list"])
    assert code == 0 and out.split() == sorted(SUITES)


def test_bench_usage_errors_exit_2(capsys):
    assert _tools(capsys, ["bench", "--bogus"])[0] == 2
    assert _tools(capsys, ["bench", "--suite"])[0] == 2


# ---------------------------------------------------------------------------------------------- registry
def test_a_registered_command_gets_its_options_and_exit_code(capsys):
    seen = {}

    def run(args):
        seen["plot"] = args.plot
        return 3

    demo = Command("a fake demo", run, lambda parser: parser.add_argument("--plot", metavar="FILE.png"))
    assert main(["demo", "--plot", "out.png"], commands={"demo": demo}) == 3
    assert seen == {"plot": "out.png"}


def test_an_unregistered_command_is_a_usage_error(capsys):
    code, _, err = _run(capsys, ["demo", "--plot", "x.png"], commands={})
    assert code == 2 and "invalid choice: 'demo'" in err


def test_a_command_cannot_replace_a_core_command():
    with pytest.raises(DataPlaneBadRequest, match=r"\['ls'\]"):
        main(["ls"], commands={"ls": Command("not ls", lambda args: 0)})


def _declared_entry_points() -> list[importlib.metadata.EntryPoint]:
    """The ``kvplane.commands`` entry points pyproject.toml declares (what pip install -e . installs)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"kvplane": "kvplane.cli:main"}
    declared = project["entry-points"]
    assert set(declared) == {kvplane.cli.COMMANDS_GROUP}  # no other plug-in group
    return [
        importlib.metadata.EntryPoint(name, value, kvplane.cli.COMMANDS_GROUP)
        for name, value in declared[kvplane.cli.COMMANDS_GROUP].items()
    ]


def test_the_distribution_declares_the_tools_commands():
    loaded = {entry.name: entry.load() for entry in _declared_entry_points()}
    assert loaded == COMMANDS


def test_installed_commands_come_from_the_entry_points(capsys, monkeypatch):
    declared = _declared_entry_points()
    in_group = lambda group: [e for e in declared if e.group == group]  # noqa: E731
    monkeypatch.setattr(kvplane.cli.importlib.metadata, "entry_points", in_group)
    assert kvplane.cli.installed_commands() == COMMANDS
    code, out, _ = _run(capsys, ["bench", "--list"])  # the installed `kvplane` script's path
    assert (code, out.split()) == (0, ["balance", "checkpoint", "kv", "loader"])


def test_an_unloadable_entry_point_fails_only_its_own_command(capsys, monkeypatch):
    stale = importlib.metadata.EntryPoint("demo", "no_such_module_kvplane:DEMO", kvplane.cli.COMMANDS_GROUP)
    monkeypatch.setattr(kvplane.cli.importlib.metadata, "entry_points", lambda group: [stale])
    code, _, err = _run(capsys, ["demo", "--steps", "2"])
    assert code == 1 and err.count("\n") == 1
    assert "command 'demo' (no_such_module_kvplane:DEMO) could not be loaded: ModuleNotFoundError" in err
    assert _run(capsys, ["ping", "--json"])[0] == 0


# ---------------------------------------------------------------------------------------------- subprocess
def test_python_dash_m_kvplane_exit_codes(tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "kvplane", "ping", "--json"], capture_output=True, text=True, timeout=120
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True
    bad = tmp_path / "bad.yaml"
    bad.write_text("impl: nosuch\n")
    failed = subprocess.run(
        [sys.executable, "-m", "kvplane", "ls", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 2
    assert failed.stderr.strip() == (
        "kvplane ls: error: argument --config: data plane config: 'impl' must be one of "
        "['embedded', 'transfer_queue'] ('memory' means 'embedded'), got 'nosuch' (see kvplane ls --help)"
    )


def test_python_dash_m_kvplane_tools_works_without_an_install():
    """From a plain checkout: the tools' commands come from the explicit registry, not entry points."""
    listed = subprocess.run(
        [sys.executable, "-m", "kvplane_tools", "bench", "--list"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["balance", "checkpoint", "kv", "loader"]
    usage = subprocess.run(
        [sys.executable, "-m", "kvplane_tools", "bench", "--bogus"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert usage.returncode == 2 and "unrecognized arguments: --bogus" in usage.stderr
