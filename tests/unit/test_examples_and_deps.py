"""Example configs by name from any directory, and missing optional packages as one typed line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import kvplane
import kvplane._factory
import kvplane.examples
from kvplane import DataPlaneBadRequest, DataPlaneConfig, DataPlaneUnavailable, build_data_plane_client
from kvplane._config import resolve_config_path
from kvplane.adapters.memory import MemoryDataPlaneClient
from kvplane.cli import Command, main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Run the test from a directory that is not the checkout."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---------------------------------------------------------------------------------------------- examples
def test_the_packaged_examples_are_found_by_name_from_any_directory(elsewhere):
    assert kvplane.examples.names() == ["embedded", "mooncake", "transfer_queue"]
    for name in kvplane.examples.names():
        path = kvplane.examples.path(name)
        assert path.is_absolute() and path.is_file() and path.parent.name == "examples"
        assert resolve_config_path(name) == path
        assert DataPlaneConfig.load(name) == DataPlaneConfig.load(path)
    assert DataPlaneConfig.load("transfer_queue").display_name == "transfer_queue/simple"
    assert DataPlaneConfig.load("mooncake").display_name == "transfer_queue/mooncake_cpu"
    assert DataPlaneConfig.load("embedded") == DataPlaneConfig()


def test_init_and_the_factory_take_an_example_name_from_any_directory(elsewhere):
    client = kvplane.init("embedded")
    try:
        assert client is kvplane.get_client() and type(client).__name__ == "MemoryDataPlaneClient"
    finally:
        kvplane.close()
    client = build_data_plane_client("embedded")
    client.close()


def test_a_file_in_the_working_directory_wins_over_an_example_of_the_same_name(elsewhere):
    (elsewhere / "transfer_queue").write_text("impl: embedded\nseq_len_tag: mine\n")
    assert DataPlaneConfig.load("transfer_queue").seq_len_tag == "mine"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("transfer_queue.yaml", "no such file 'transfer_queue.yaml'"),  # a suffix makes it a path
        ("configs/transfer_queue", "no such file 'configs/transfer_queue'"),  # so does a separator
        (Path("transfer_queue"), "no such file 'transfer_queue'"),  # only a string can be a name
        (
            "trasnfer_queue",
            "'trasnfer_queue' is neither a file nor an example config name (examples: "
            "embedded, mooncake, transfer_queue)",
        ),
    ],
)
def test_what_is_not_a_file_nor_an_example_name_is_named(elsewhere, source, message):
    with pytest.raises(DataPlaneBadRequest) as caught:
        DataPlaneConfig.load(source)
    assert str(caught.value) == f"data plane config: {message}"


def test_an_unknown_example_lists_the_examples():
    with pytest.raises(DataPlaneBadRequest, match=r"no example config named 'x' \(examples: embedded, "):
        kvplane.examples.path("x")


def test_a_fresh_interpreter_elsewhere_resolves_example_names(tmp_path):
    code = (
        "import kvplane, kvplane.examples; "
        "print(kvplane.DataPlaneConfig.load('transfer_queue').backend, kvplane.examples.path('mooncake'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    backend, path = done.stdout.split()
    assert backend == "simple" and Path(path) == ROOT / "kvplane" / "examples" / "mooncake.yaml"


def test_the_cli_takes_an_example_name_for_config_from_any_directory(elsewhere, capsys, monkeypatch):
    built = []

    def fake_build(config, *, bootstrap=True):  # stands in for the TransferQueue adapter: no Ray here
        built.append((config, bootstrap))
        return MemoryDataPlaneClient()

    monkeypatch.setattr(kvplane._factory, "build_data_plane_client", fake_build)
    assert main(["ping", "--json", "--config", "transfer_queue"], commands={}) == 0
    [(config, bootstrap)] = built
    assert config.display_name == "transfer_queue/simple" and bootstrap is False
    assert json.loads(capsys.readouterr().out)["backend"] == "transfer_queue/simple"


# ------------------------------------------------------------------------------------- missing packages
@pytest.mark.parametrize(
    ("missing", "config", "purpose", "extra"),
    [
        ("transfer_queue", "transfer_queue", "impl: transfer_queue", "transferqueue"),
        ("ray", "transfer_queue", "impl: transfer_queue", "transferqueue"),
        ("mooncake", "mooncake", "backend: mooncake_cpu", "mooncake"),
        (
            "prometheus_client",
            {"impl": "embedded", "observability": {"enabled": True, "prometheus_port": 0}},
            "observability.prometheus_port",
            "metrics",
        ),
    ],
)
def test_the_factory_names_a_missing_package_and_its_extra_before_starting_anything(
    monkeypatch, missing, config, purpose, extra
):
    monkeypatch.setitem(sys.modules, missing, None)  # as if it were not installed
    for name in ("kvplane.adapters.transfer_queue", "kvplane.adapters.memory"):
        monkeypatch.delitem(sys.modules, name, raising=False)  # an adapter import would show up here
    with pytest.raises(DataPlaneUnavailable) as caught:
        build_data_plane_client(config)
    assert (
        str(caught.value)
        == f"{purpose} needs {missing!r}, which is not installed: pip install 'kvplane[{extra}]'"
    )
    assert isinstance(caught.value.__cause__, ModuleNotFoundError) and caught.value.__cause__.name == missing
    assert (
        "kvplane.adapters.transfer_queue" not in sys.modules and "kvplane.adapters.memory" not in sys.modules
    )


def test_a_missing_dependency_of_the_transfer_queue_adapter_itself_is_translated(monkeypatch):
    monkeypatch.setitem(sys.modules, "psutil", None)  # imported by the adapter package, not checked up front
    monkeypatch.delitem(sys.modules, "kvplane.adapters.transfer_queue", raising=False)
    with pytest.raises(DataPlaneUnavailable) as caught:
        build_data_plane_client("transfer_queue")
    assert str(caught.value) == (
        "impl: transfer_queue needs 'psutil', which is not installed: pip install 'kvplane[transferqueue]'"
    )


def test_the_cli_reports_a_missing_backend_package_in_one_line(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "transfer_queue", None)
    assert main(["ls", "--config", "transfer_queue"], commands={}) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == (
        "kvplane: missing dependency: impl: transfer_queue needs 'transfer_queue', which is not installed: "
        "pip install 'kvplane[transferqueue]'\n"
    )


def test_stats_prometheus_without_prometheus_client_is_one_line(capsys, monkeypatch, client):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    assert main(["stats", "--prometheus"], client=client, commands={}) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == (
        "kvplane: missing dependency: kvplane stats --prometheus needs 'prometheus_client', which is not "
        "installed: pip install 'kvplane[metrics]'\n"
    )


def _importing(module):
    def run(args):
        __import__(module)

    return Command("imports a module", run)


def test_a_plugged_in_command_that_imports_a_missing_optional_package_is_one_line(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["draw"], commands={"draw": _importing("matplotlib")}) == 1
    assert capsys.readouterr().err == (
        "kvplane: missing dependency: matplotlib is not installed: pip install 'kvplane[plot]'\n"
    )


def test_a_missing_module_that_no_extra_provides_keeps_its_traceback(monkeypatch):
    with pytest.raises(ModuleNotFoundError, match="no_such_module_kvplane"):
        main(["broken"], commands={"broken": _importing("no_such_module_kvplane")})
