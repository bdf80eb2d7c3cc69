"""Dependency rules, checked by module prefix: only the TransferQueue adapter (and the tools' raw
baseline) imports transfer_queue; kvplane never imports loaders or the tools; loaders use kvplane's
public API only; the contract's leaves import nothing else of kvplane; every module that is not
public API is visibly private (``_name``), and ``dir(kvplane)`` shows only public names."""

from __future__ import annotations

import ast
from pathlib import Path

import kvplane

ROOT = Path(__file__).resolve().parents[2]
TQ_ADAPTER = ROOT / "kvplane" / "adapters" / "transfer_queue"
RAW_BASELINE = ROOT / "kvplane_tools" / "bench" / "raw_tq.py"
SIMPLE_BESIDE = ROOT / "kvplane_tools" / "bench" / "_simple_beside.py"  # decision 77

#: Public modules of the library; every other module's file name starts with an underscore.
PUBLIC_MODULES = {
    "kvplane",
    "kvplane.__main__",
    "kvplane.adapters",
    "kvplane.adapters.memory",
    "kvplane.adapters.transfer_queue",
    "kvplane.balancing",
    "kvplane.cli",
    "kvplane.codec",
    "kvplane.examples",
    "kvplane.replay",
    "kvplane.testing",
    "loaders",
}
#: What loaders may import of kvplane (exact module names).
LOADERS_MAY_IMPORT = {"kvplane", "kvplane.balancing", "kvplane.replay"}
#: The contract's leaves and what of kvplane each may import.
CONTRACT = {"_errors", "_meta", "_config", "_groups", "_tags", "_tensors", "_validation", "_client", "_gated", "examples"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute module names ``path`` imports anywhere (lazy imports included), relative ones resolved."""
    name = _module(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
    return names


def _sources(*packages: str) -> list[Path]:
    return [p for pkg in packages for p in (ROOT / pkg).rglob("*.py")]


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_only_the_transfer_queue_adapter_and_the_raw_baseline_import_transfer_queue():
    offenders = [
        _module(p)
        for p in _sources("kvplane", "loaders", "kvplane_tools", "tutorial")
        if TQ_ADAPTER not in p.parents
        and p not in (RAW_BASELINE, SIMPLE_BESIDE)
        and any(_under(n, "transfer_queue") for n in _imports(p))
    ]
    assert offenders == []


def test_kvplane_never_imports_loaders_or_the_tools():
    offenders = {
        _module(p): sorted(n for n in _imports(p) if _under(n, "loaders") or _under(n, "kvplane_tools"))
        for p in _sources("kvplane")
    }
    assert {m: ns for m, ns in offenders.items() if ns} == {}
    # Not through importlib either: the tools plug into the CLI by entry points (pyproject.toml).
    dynamic = [_module(p) for p in _sources("kvplane") if "kvplane_tools" in p.read_text() or
               'import_module("loaders' in p.read_text()]
    assert dynamic == []


def test_loaders_import_only_kvplane_balancing_and_replay():
    offenders = {
        _module(p): sorted(n for n in _imports(p) if _under(n, "kvplane") and n not in LOADERS_MAY_IMPORT)
        for p in _sources("loaders")
    }
    assert {m: ns for m, ns in offenders.items() if ns} == {}


def test_contract_leaves_import_nothing_else_of_kvplane():
    allowed = {f"kvplane.{leaf}" for leaf in CONTRACT}
    for leaf in CONTRACT:
        path = ROOT / "kvplane" / leaf
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        used = {n for n in _imports(path) if _under(n, "kvplane")}
        assert used <= allowed, (leaf, used - allowed)


def test_every_module_that_is_not_public_api_is_visibly_private():
    not_marked = sorted(
        name
        for p in _sources("kvplane", "loaders")
        if (name := _module(p)) not in PUBLIC_MODULES and not p.stem.startswith("_")
    )
    assert not_marked == []


def test_dir_of_kvplane_shows_only_public_names():
    listed = set(dir(kvplane))
    assert set(kvplane.__all__) <= listed
    assert {"Any", "annotations", "importlib", "logging"}.isdisjoint(listed)
    assert not [n for n in listed if n.startswith("_") and n != "__version__"]
    assert listed - set(kvplane.__all__) == {"__version__", "adapters", "balancing", "codec", "replay", "testing"}
