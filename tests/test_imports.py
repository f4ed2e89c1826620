"""No import circles between resflow's modules.

A circle makes a module's names depend on which module of the circle was imported first,
and makes the layers (data -> planning -> stages -> engines -> outputs) impossible to read
one at a time. The graph is built from the source with :mod:`ast`, so it needs no import:
an edge is a module-level import of one resflow module by another. Imports inside
functions (deferred on purpose) and under ``if TYPE_CHECKING:`` (never run) are not edges,
and neither is the package a module sits in (Python runs a package's ``__init__`` first,
whatever it imports).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "resflow"

def module_name(path: Path) -> str:
    """``resflow/store/writer.py`` -> ``resflow.store.writer``; a package is its
    ``__init__``."""
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_files() -> dict[str, Path]:
    """Every module of the package by name."""
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements run when a module is imported: not in functions, not under
    ``if TYPE_CHECKING:``."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _imports(node.orelse)
        else:
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    yield from _imports([n for n in inner if isinstance(n, ast.stmt)]
                                        + [s for h in inner if isinstance(h, ast.ExceptHandler)
                                           for s in h.body])


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
             modules: set[str]) -> Iterator[str]:
    """The resflow modules one import statement loads."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module if is_package else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                 for alias in node.names]
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name:
            yield name


def import_graph() -> dict[str, set[str]]:
    """Module -> the resflow modules it imports at module level."""
    files = module_files()
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        graph[module] = {target for node in _imports(tree.body)
                         for target in _targets(node, module, is_package, modules)
                         if target != module}
    return graph


def circles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def cycle_path(graph: dict[str, set[str]], component: frozenset[str]) -> list[str]:
    """One import path around ``component``, from its first module back to it."""
    start = min(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & component):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    return [start]


def test_resflow_has_no_import_circles() -> None:
    graph = import_graph()
    found = circles(graph)
    assert not found, "import circles: " + "; ".join(
        " -> ".join(cycle_path(graph, c)) for c in found)


@pytest.mark.parametrize("source, found", [
    ("import resflow.b\n", {"resflow.b"}),
    ("from resflow import b\n", {"resflow.b"}),
    ("from . import b\n", {"resflow.b"}),
    ("from resflow.b import name\n", {"resflow.b"}),
    ("if TYPE_CHECKING:\n    import resflow.b\n", set()),
    ("def f():\n    import resflow.b\n", set()),
    ("try:\n    import resflow.b\nexcept ImportError:\n    pass\n", {"resflow.b"}),
])
def test_only_module_level_imports_are_edges(source: str, found: set[str]) -> None:
    tree = ast.parse(source)
    modules = {"resflow", "resflow.a", "resflow.b"}
    assert {t for node in _imports(tree.body)
            for t in _targets(node, "resflow.a", False, modules)} == found


def test_a_circle_is_found_and_named() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    (component,) = circles(graph)
    assert component == {"a", "b", "c"}
    assert cycle_path(graph, component) == ["a", "b", "c", "a"]
