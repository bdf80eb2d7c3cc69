"""Dependency rules: only the TransferQueue adapter imports transfer_queue; kvplane never imports
loaders; the contract leaves import nothing else of kvplane."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TQ_ADAPTER = ROOT / "kvplane" / "adapters" / "transfer_queue"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _sources(*packages: str) -> list[Path]:
    return [p for pkg in packages for p in (ROOT / pkg).rglob("*.py")]


def test_only_the_transfer_queue_adapter_imports_transfer_queue():
    offenders = [
        str(p.relative_to(ROOT))
        for p in _sources("kvplane", "loaders", "tutorial")
        if p != TQ_ADAPTER.with_suffix(".py")
        and TQ_ADAPTER not in p.parents
        and any(n == "transfer_queue" or n.startswith("transfer_queue.") for n in _imports(p))
    ]
    assert offenders == []


def test_kvplane_never_imports_loaders():
    offenders = [
        str(p) for p in _sources("kvplane") if any(n.split(".")[0] == "loaders" for n in _imports(p))
    ]
    assert offenders == []
    # Not through importlib either: loaders plug into the CLI by entry points (pyproject.toml).
    dynamic = [str(p) for p in _sources("kvplane") if 'import_module("loaders' in p.read_text()]
    assert dynamic == []


def test_contract_leaves_import_nothing_else_of_kvplane():
    leaves = ("errors", "meta", "config", "groups", "_tags", "_tensors", "_validation", "client", "_gated")
    allowed = {f"kvplane.{leaf}" for leaf in leaves}
    allowed.add("kvplane.examples")  # the packaged example configs' names (it imports only kvplane.errors)
    for leaf in leaves:
        used = {n for n in _imports(ROOT / "kvplane" / f"{leaf}.py") if n.startswith("kvplane")}
        assert used <= allowed, (leaf, used - allowed)


def test_loaders_use_only_the_public_kvplane_api():
    internal = {
        "kvplane.adapters",
        "kvplane.adapters.memory",
        "kvplane.adapters.transfer_queue",
        "kvplane.facade",
    }
    for path in _sources("loaders"):
        assert not (_imports(path) & internal), path
