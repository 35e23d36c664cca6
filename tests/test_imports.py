"""No import circle between the packages of vpncloud, and a fast path that imports nothing of ours.

The graph is read from the source (ast), with the imports inside functions too: a deferred import
hides a circle from the interpreter, not from a reader. A node of the graph is a package of
``vpncloud`` (``core``, ``daemon``...) or a top-level module (``cli``, ``sourcefile``...).
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

import vpncloud

ROOT = Path(vpncloud.__file__).parent


def _imports(path: Path, module: list[str]) -> Iterator[str]:
    """Absolute names of the modules that ``path`` (module ``module``) imports."""
    package = module if path.name == "__init__.py" else module[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            # ``from pkg import sub`` imports the module pkg.sub when there is one
            yield from (f"{source}.{alias.name}" for alias in node.names)


def package_graph(root: Path) -> dict[str, dict[str, str]]:
    """package -> {imported package: a module that imports it} for the package at ``root``."""
    name = root.name
    graph: dict[str, dict[str, str]] = {}
    for path in sorted(root.rglob("*.py")):
        parts = [name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if len(parts) < 2:
            continue  # the root package's own __init__
        source = parts[1]
        edges = graph.setdefault(source, {})
        for target in _imports(path, parts):
            split = target.split(".")
            if split[0] == name and len(split) > 1 and split[1] != source:
                edges.setdefault(split[1], ".".join(parts))
    return graph


def circles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """Every circle of the graph, once each, as the packages along it (the first repeated last)."""
    found: list[list[str]] = []
    seen: set[frozenset[str]] = set()

    def walk(path: list[str]) -> None:
        for nxt in sorted(graph.get(path[-1], {})):
            if nxt == path[0]:
                if frozenset(path) not in seen:
                    seen.add(frozenset(path))
                    found.append([*path, nxt])
            elif nxt not in path and nxt > path[0]:
                walk([*path, nxt])

    for start in sorted(graph):
        walk([start])
    return found


def _describe(graph: dict[str, dict[str, str]], circle: list[str]) -> str:
    """The circle with the module that makes each step."""
    steps = " -> ".join(f"{a} ({graph[a][b]})" for a, b in itertools.pairwise(circle))
    return f"{steps} -> {circle[-1]}"


def test_no_import_circle_between_packages() -> None:
    graph = package_graph(ROOT)
    assert {"core", "fastpath", "daemon", "mesh", "lab", "proxy"} <= graph.keys()
    assert [_describe(graph, c) for c in circles(graph)] == []


def test_the_fast_path_imports_nothing_of_ours() -> None:
    """The fast path is buffer functions: the core calls it, it never calls back. Its one use of the
    project is ``vpncloud.lazy``, a leaf module of the standard library only (first-use imports)."""
    uses = package_graph(ROOT)["fastpath"]
    assert set(uses) <= {"lazy"}, uses
    assert package_graph(ROOT).get("lazy", {}) == {}


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_a_circle_is_found_also_through_a_deferred_or_relative_import(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    _write(
        root,
        {
            "__init__.py": "",
            "a/__init__.py": "from pkg.b import thing\n",
            "b/__init__.py": "",
            "b/inner.py": "def f():\n    from ..c import other\n",
            "c.py": "import pkg.a.x\nfrom . import b\n",
            "d/__init__.py": "from pkg import c\n",
        },
    )
    graph = package_graph(root)
    assert graph["a"] == {"b": "pkg.a"}
    assert graph["b"] == {"c": "pkg.b.inner"}
    assert circles(graph) == [["a", "b", "c", "a"], ["b", "c", "b"]]
    assert "pkg.b.inner" in _describe(graph, circles(graph)[0])
