"""The structure DESIGN.md asks for, read from the code itself: the layers import one way
(catalogs ← pipeline ← heads), no modules import each other in a circle, and no function in
``heads/`` or ``pipeline/`` is longer than a screenful."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("catalogs", "pipeline", "heads")
LAYER = {"catalogs": 0, "pipeline": 1, "heads": 2}
MAX_FUNCTION_LINES = 100  # signature, docstring and body


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports anywhere in the file (top level, inside functions,
    under ``TYPE_CHECKING``); ``from pkg import name`` counts as the submodule ``pkg.name``
    when there is one, else as ``pkg``."""
    found = set()
    this = module_name(path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package of this module
                package = this if path.name == "__init__.py" else this.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}".strip(".")
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:
                    found.add(sub)
                elif base in known:
                    found.add(base)
    return found - {this}


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, set(known)) for name, path in known.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_lazy_and_type_checking_imports(tmp_path, monkeypatch):
    """The checker itself: an import inside a function or under TYPE_CHECKING is an edge."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg.b import g\n")
    (package / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                  "    from pkg import a\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    known = {"pkg", "pkg.a", "pkg.b"}
    graph = {m: imports(tmp_path / (m.replace(".", "/") + ".py"), known)
             for m in ("pkg.a", "pkg.b")}
    assert graph == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}}
    assert circles(graph) == [["pkg.a", "pkg.b"]]


def test_no_import_circles():
    assert circles(import_graph()) == []


def test_layers_import_downwards_only():
    """catalogs ← pipeline ← heads (DESIGN.md): no module imports a higher layer."""
    upward = sorted(
        f"{source} -> {target}"
        for source, targets in import_graph().items() for target in targets
        if LAYER[target.split(".")[0]] > LAYER[source.split(".")[0]]
    )
    assert upward == []


@pytest.mark.parametrize("package", ["heads", "pipeline"])
def test_functions_fit_on_a_screen(package):
    long = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length})")
    assert long == []
