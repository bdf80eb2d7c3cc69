"""The tools (``kvplane_tools``) sit beside the library: kvplane and loaders never reach them, the
tools' raw baseline is their only door to ``transfer_queue`` and it uses kvplane's public names only,
and no package has an import circle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("kvplane", "loaders", "kvplane_tools")
RAW_BASELINE = ROOT / "kvplane_tools" / "bench" / "raw_tq.py"
#: Raw SimpleStorage beside a columnar deployment (swaps TransferQueue's process-wide client; decision 77).
SIMPLE_BESIDE = ROOT / "kvplane_tools" / "bench" / "_simple_beside.py"


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path, modules: set[str]) -> set[str]:
    """Every module of ``modules`` that ``path`` imports, anywhere in the file (lazy and
    ``TYPE_CHECKING`` imports included), relative imports resolved."""
    name = _module(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):  # its own package
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    paths = {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    return {name: _imported(path, set(paths)) for name, path in paths.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan).

    Examples:
        >>> _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}})
        [['a', 'b']]
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    assert _cycles(_graph()) == []


def test_the_library_never_names_the_tools():
    """Not by import, not through importlib or entry point strings: kvplane and loaders stand alone."""
    offenders = [
        str(p.relative_to(ROOT))
        for pkg in ("kvplane", "loaders")
        for p in (ROOT / pkg).rglob("*")
        if p.is_file() and p.suffix in {".py", ".yaml", ".typed"} and "kvplane_tools" in p.read_text()
    ]
    assert offenders == []


def test_only_the_raw_baseline_imports_transfer_queue_among_the_tools():
    importers = sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "kvplane_tools").rglob("*.py")
        for node in ast.walk(ast.parse(p.read_text()))
        if (isinstance(node, ast.Import) and any(a.name.split(".")[0] == "transfer_queue" for a in node.names))
        or (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "transfer_queue")
    )
    assert set(importers) == {str(RAW_BASELINE.relative_to(ROOT)), str(SIMPLE_BESIDE.relative_to(ROOT))}


def test_the_raw_baseline_uses_only_public_kvplane_names():
    tree = ast.parse(RAW_BASELINE.read_text())
    kvplane_imports = {
        node.module: [a.name for a in node.names]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "kvplane"
    }
    assert set(kvplane_imports) == {"kvplane", "kvplane.adapters.transfer_queue"}
    assert not [n for names in kvplane_imports.values() for n in names if n.startswith("_")]
    private = [
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
    ]
    assert private == []
