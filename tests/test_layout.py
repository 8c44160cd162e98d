"""The package's import graph: folders import only from the floors below them, and no module
imports another that (directly or not) imports it back, at module level or inside a function.

The imports are read with `ast` from the source files, so a cycle hidden in a function body or
under `if TYPE_CHECKING:` is found as well.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
# Floors from the bottom up (DESIGN.md): a folder may import its own floor and those below it.
FLOORS = ("support", "dialects", "backend", "runtime", "passes", "compiler", "codesign")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["dopant", *parts])


def _sources() -> dict[str, Path]:
    return {_module_name(path): path for folder in FLOORS for path in (ROOT / folder).rglob("*.py")}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The dopant modules `path` imports anywhere in its body (a `from package import name`
    counts as importing the submodule when `name` is one)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m in known and m != name}


def _packages_entered(importer: str, imported: str, known: set[str]) -> set[str]:
    """Importing `a.b.c` runs `a/b/__init__.py` first, unless the importer is already inside
    package `a.b` (then that package is being initialized anyway)."""
    parts = imported.split(".")
    parents = {".".join(parts[:i]) for i in range(2, len(parts))}
    return {p for p in parents if p in known and not importer.startswith(p + ".")}


def _graph() -> nx.DiGraph:
    sources = _sources()
    known = set(sources)
    graph = nx.DiGraph()
    for name, path in sources.items():
        graph.add_node(name)
        for imported in _imports(path, name, known):
            graph.add_edge(name, imported)
            for package in _packages_entered(name, imported, known) - {name}:
                graph.add_edge(name, package)
    return graph


def _floor(module: str) -> int:
    return FLOORS.index(module.split(".")[1])


def test_every_folder_imports_only_its_own_floor_and_those_below() -> None:
    graph = _graph()
    upward = [f"{a} imports {b}" for a, b in graph.edges if _floor(b) > _floor(a)]
    assert not upward, "imports that climb a floor: " + "; ".join(sorted(upward))


def test_no_module_import_cycle() -> None:
    cycles = list(nx.simple_cycles(_graph()))
    shown = ["  ->  ".join([*cycle, cycle[0]]) for cycle in cycles[:10]]
    assert not cycles, f"{len(cycles)} import cycle(s):\n" + "\n".join(shown)


def test_the_folder_graph_has_no_cycle() -> None:
    graph = _graph()
    folders = nx.DiGraph()
    folders.add_nodes_from(FLOORS)
    folders.add_edges_from(
        (a.split(".")[1], b.split(".")[1])
        for a, b in graph.edges
        if a.split(".")[1] != b.split(".")[1]
    )
    assert nx.is_directed_acyclic_graph(folders), list(nx.simple_cycles(folders))


def test_pyproject_lists_every_subpackage() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    packages = {
        _module_name(init) for folder in FLOORS for init in (ROOT / folder).rglob("__init__.py")
    }
    assert listed == packages
