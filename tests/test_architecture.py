"""The import structure of the installed package, read from the source with ``ast``.

Every ``.py`` file under ``sdk/``, ``app/`` and ``components/`` is named by the module it becomes
once installed (``sdk/x.py`` is ``runstream.x``, ``app/core/store/rows.py`` is
``runstream.server.core.store.rows``, ``components/hook.py`` is ``runstream.components.hook``),
and every import statement becomes an edge of a graph between module names.

- The layering rules count every import: at module level, inside functions, and under
  ``if TYPE_CHECKING:``: a layer that may not depend on another may not mention it either.
- The cycle check counts only what runs when a module is imported: module-level imports, not
  those under ``if TYPE_CHECKING:`` nor those inside functions.

``from package import name`` is an edge to ``package.name`` when that is a module, and to
``package`` otherwise. Importing a module also runs its parents' ``__init__``; those implicit
edges are left out, or every package that imports its submodules would be a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# Source folder -> the import name it is installed as (pyproject.toml's package-dir).
SOURCE_FOLDERS: dict[str, str] = {
    "sdk": "runstream",
    "app": "runstream.server",
    "components": "runstream.components",
}

SERVER = "runstream.server"
CORE = "runstream.server.core"
RUNS = "runstream.server.runs"
FACES = "runstream.server.faces"
DASHBOARD = "runstream.server.dashboard"
COMPONENTS = "runstream.components"
STATIC = "runstream.static"


@dataclass(frozen=True)
class Source:
    """One module's source: its installed name, where it is, and whether it is a package."""

    module: str
    path: Path
    text: str
    is_package: bool


@dataclass(frozen=True)
class Edge:
    """One imported module, as one import statement names it."""

    importer: str
    imported: str
    path: Path
    line: int
    module_level: bool  # runs when the importer is imported (not inside a function)
    type_checking: bool  # under ``if TYPE_CHECKING:``

    @property
    def at_import_time(self) -> bool:
        return self.module_level and not self.type_checking

    def describe(self) -> str:
        where = self.path.relative_to(REPO_ROOT) if self.path.is_absolute() else self.path
        notes = "".join(
            f" ({note})"
            for note, applies in [
                ("in a function", not self.module_level),
                ("under TYPE_CHECKING", self.type_checking),
            ]
            if applies
        )
        return f"{self.importer} -> {self.imported}  [{where}:{self.line}]{notes}"


@dataclass(frozen=True)
class Graph:
    sources: Mapping[str, Source]
    edges: tuple[Edge, ...]

    @property
    def modules(self) -> frozenset[str]:
        return frozenset(self.sources)

    def internal_edges(self, *, at_import_time: bool) -> list[Edge]:
        return [
            edge
            for edge in self.edges
            if edge.imported in self.sources and (edge.at_import_time or not at_import_time)
        ]


# --- reading the source -------------------------------------------------------------------------


def module_name(folder: Path, path: Path, import_name: str) -> tuple[str, bool]:
    """The installed name of ``path`` inside ``folder``, and whether it is a package."""
    parts = list(path.relative_to(folder).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join([import_name, *parts]), is_package


def repository_sources(root: Path = REPO_ROOT) -> dict[str, Source]:
    sources: dict[str, Source] = {}
    for folder_name, import_name in SOURCE_FOLDERS.items():
        folder = root / folder_name
        for path in sorted(folder.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            name, is_package = module_name(folder, path, import_name)
            sources[name] = Source(name, path, path.read_text(encoding="utf-8"), is_package)
    return sources


def packages_of(sources: Mapping[str, Source]) -> set[str]:
    """Every package: those with an ``__init__`` and the folders without one (namespaces)."""
    packages = {name for name, source in sources.items() if source.is_package}
    for name in sources:
        parts = name.split(".")
        packages.update(".".join(parts[:end]) for end in range(1, len(parts)))
    return packages


def is_type_checking_test(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def resolve_base(source: Source, level: int, module: str | None) -> str:
    """The absolute module that ``from <dots><module> import ...`` imports from."""
    if level == 0:
        assert module is not None
        return module
    package = source.module if source.is_package else source.module.rpartition(".")[0]
    parts = package.split(".")
    if level - 1 >= len(parts):
        raise ValueError(f"{source.path}: a relative import goes above the top-level package")
    base = parts[: len(parts) - (level - 1)]
    if module:
        base.append(module)
    return ".".join(base)


def imports_of(source: Source, known: set[str]) -> Iterator[Edge]:
    """The edges of one module; ``known`` is every module and package of the project."""

    def edge(imported: str, node: ast.stmt, module_level: bool, type_checking: bool) -> Edge:
        return Edge(source.module, imported, source.path, node.lineno, module_level, type_checking)

    def visit(nodes: Iterable[ast.AST], module_level: bool, type_checking: bool) -> Iterator[Edge]:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield edge(alias.name, node, module_level, type_checking)
            elif isinstance(node, ast.ImportFrom):
                base = resolve_base(source, node.level, node.module)
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    target = submodule if alias.name != "*" and submodule in known else base
                    yield edge(target, node, module_level, type_checking)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                yield from visit(ast.iter_child_nodes(node), False, type_checking)
            elif isinstance(node, ast.If) and is_type_checking_test(node.test):
                yield from visit(node.body, module_level, True)
                yield from visit(node.orelse, module_level, type_checking)
            else:
                yield from visit(ast.iter_child_nodes(node), module_level, type_checking)

    tree = ast.parse(source.text, filename=str(source.path))
    yield from visit(tree.body, True, False)


def build_graph(sources: Mapping[str, Source]) -> Graph:
    known = set(sources) | packages_of(sources)
    edges: list[Edge] = []
    for source in sources.values():
        edges.extend(imports_of(source, known))
    return Graph(dict(sources), tuple(dict.fromkeys(edges)))


def strongly_connected_components(nodes: Iterable[str], edges: Iterable[Edge]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively (no recursion limit)."""
    successors: dict[str, list[str]] = {node: [] for node in nodes}
    for edge in edges:
        if edge.importer in successors and edge.imported in successors:
            successors[edge.importer].append(edge.imported)
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for start in sorted(successors):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(successors[start]))]
        index[start] = lowlink[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    parent = work[-1][0]
                    lowlink[parent] = min(lowlink[parent], lowlink[node])
                if lowlink[node] == index[node]:
                    component: list[str] = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
            elif child not in index:
                index[child] = lowlink[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(successors[child])))
            elif child in on_stack:
                lowlink[node] = min(lowlink[node], index[child])
    return components


# --- the rules ----------------------------------------------------------------------------------


def within(name: str, *prefixes: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def top_level(name: str, *names: str) -> bool:
    return name.split(".")[0] in names


def is_sdk(name: str) -> bool:
    return within(name, "runstream") and not within(name, SERVER, COMPONENTS, STATIC)


def is_private_sdk(name: str) -> bool:
    parts = name.split(".")[1:]
    return is_sdk(name) and any(part.startswith("_") and not part.endswith("__") for part in parts)


def violations(
    graph: Graph,
    importer: Callable[[str], bool],
    forbidden: Callable[[str], bool],
    *,
    at_import_time: bool = False,
) -> list[str]:
    return [
        edge.describe()
        for edge in graph.edges
        if importer(edge.importer)
        and forbidden(edge.imported)
        and (edge.at_import_time or not at_import_time)
    ]


def report(rule: str, found: list[str], what: str = "offending import(s)") -> str:
    return f"{rule}; {len(found)} {what}:\n  " + "\n  ".join(found)


@pytest.fixture(scope="module")
def graph() -> Graph:
    return build_graph(repository_sources())


def selected(graph: Graph, predicate: Callable[[str], bool]) -> list[str]:
    """The modules a rule is about; never none, or the rule would pass by checking nothing."""
    modules = sorted(module for module in graph.modules if predicate(module))
    assert modules, "this rule selects no module: the module naming is broken"
    return modules


# --- the graph builder finds what is there ------------------------------------------------------


def test_the_graph_covers_every_source_file(graph: Graph) -> None:
    files = [
        path
        for folder in SOURCE_FOLDERS
        for path in (REPO_ROOT / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    ]
    assert len(graph.sources) == len(files) > 30
    assert {"runstream", "runstream.sync", SERVER, CORE + ".store.rows", COMPONENTS + ".hook"} <= (
        graph.modules
    )
    assert graph.sources[SERVER].is_package and not graph.sources["runstream.sync"].is_package


def test_the_graph_finds_known_edges(graph: Graph) -> None:
    edges = {(edge.importer, edge.imported, edge.at_import_time) for edge in graph.edges}
    # from ..core.errors import Invalid
    assert ("runstream.server.faces.api", CORE + ".errors", True) in edges
    # from .. import offsets  (a submodule, from a package without __init__)
    assert (CORE + ".store.reads", CORE + ".offsets", True) in edges
    # from ...db import reading, writing  (names of the package runstream.server.db)
    assert (CORE + ".store.reads", "runstream.server.db", True) in edges
    # from runstream import streams  (a submodule, by its absolute name)
    assert (COMPONENTS + ".hook", "runstream.streams", True) in edges
    # from . import maintenance  (inside a function)
    assert ("runstream.server.cli", "runstream.server.maintenance", False) in edges
    # from flask import Flask
    assert (SERVER, "flask", True) in edges


def test_the_graph_builder_on_a_made_up_package() -> None:
    def source(module: str, text: str, is_package: bool = False) -> Source:
        return Source(module, Path(module.replace(".", "/") + ".py"), text, is_package)

    made_up = [
        source("pkg", "from . import a\nfrom . import helper\n", is_package=True),
        source(
            "pkg.a",
            "from typing import TYPE_CHECKING\n"
            "from . import b, name\n"
            "from .sub import c as see\n"
            "if TYPE_CHECKING:\n    import pkg.hidden\n"
            "class K:\n    import json\n"
            "def f():\n    from .sub.c import y\n    import flask.json\n",
        ),
        source("pkg.b", "from . import a\n"),
        source("pkg.hidden", "import pkg.a\n"),
        source("pkg.sub.c", "from ..b import thing\nfrom .. import *\n"),
    ]
    built = build_graph({s.module: s for s in made_up})
    got = {(e.importer, e.imported, e.module_level, e.type_checking) for e in built.edges}
    assert got == {
        ("pkg", "pkg.a", True, False),
        ("pkg", "pkg", True, False),  # helper is a name defined in pkg, not a module
        ("pkg.a", "typing", True, False),
        ("pkg.a", "pkg.b", True, False),
        ("pkg.a", "pkg", True, False),
        ("pkg.a", "pkg.sub.c", True, False),  # pkg.sub has no __init__: a namespace
        ("pkg.a", "pkg.hidden", True, True),
        ("pkg.a", "json", True, False),  # a class body runs at import time
        ("pkg.a", "pkg.sub.c", False, False),
        ("pkg.a", "flask.json", False, False),
        ("pkg.b", "pkg.a", True, False),
        ("pkg.hidden", "pkg.a", True, False),
        ("pkg.sub.c", "pkg.b", True, False),
        ("pkg.sub.c", "pkg", True, False),
    }
    with pytest.raises(ValueError, match="above the top-level package"):
        list(imports_of(source("top", "from .. import x\n"), set()))
    components = strongly_connected_components(
        built.modules, built.internal_edges(at_import_time=True)
    )
    # pkg.hidden -> pkg.a runs, but pkg.a -> pkg.hidden only under TYPE_CHECKING.
    assert [c for c in components if len(c) > 1] == [["pkg", "pkg.a", "pkg.b", "pkg.sub.c"]]
    assert violations(built, lambda m: m == "pkg.a", lambda m: top_level(m, "flask")) == [
        "pkg.a -> flask.json  [pkg/a.py:10] (in a function)"
    ]
    assert (
        violations(
            built, lambda m: m == "pkg.a", lambda m: top_level(m, "flask"), at_import_time=True
        )
        == []
    )


# --- the rules over the project -----------------------------------------------------------------


def test_no_import_cycles(graph: Graph) -> None:
    edges = graph.internal_edges(at_import_time=True)
    cycles = [c for c in strongly_connected_components(graph.modules, edges) if len(c) > 1]
    found = []
    for cycle in cycles:
        members = set(cycle)
        inside = [e.describe() for e in edges if e.importer in members and e.imported in members]
        found.append(f"cycle among {', '.join(cycle)}:\n    " + "\n    ".join(inside))
    assert not cycles, report("module-level imports form no cycle", found, "cycle(s)")


def test_the_core_imports_no_layer_above_it_and_no_web_framework(graph: Graph) -> None:
    in_core = selected(graph, lambda m: within(m, CORE))
    assert len(in_core) > 5

    def forbidden(name: str) -> bool:
        return within(name, FACES, DASHBOARD, RUNS, COMPONENTS) or top_level(
            name, "flask", "reactpy"
        )

    found = violations(graph, lambda m: within(m, CORE), forbidden)
    assert not found, report(
        f"{CORE} imports nothing of faces, dashboard, runs, components, flask or reactpy", found
    )


def test_runs_import_no_face_no_dashboard_and_no_flask(graph: Graph) -> None:
    selected(graph, lambda m: within(m, RUNS))

    def forbidden(name: str) -> bool:
        return within(name, FACES, DASHBOARD) or top_level(name, "flask")

    found = violations(graph, lambda m: within(m, RUNS), forbidden)
    assert not found, report(f"{RUNS} imports nothing of faces, dashboard or flask", found)


def test_faces_do_not_import_the_dashboard(graph: Graph) -> None:
    selected(graph, lambda m: within(m, FACES))
    found = violations(graph, lambda m: within(m, FACES), lambda name: within(name, DASHBOARD))
    assert not found, report(f"{FACES} imports nothing of {DASHBOARD}", found)


def test_the_sdk_imports_nothing_of_the_server_or_its_dependencies(graph: Graph) -> None:
    assert {"runstream", "runstream.sync", "runstream._ws"} <= set(selected(graph, is_sdk))

    def forbidden(name: str) -> bool:
        return within(name, SERVER, COMPONENTS) or top_level(
            name, "flask", "sqlalchemy", "alembic", "jwt", "reactpy"
        )

    found = violations(graph, is_sdk, forbidden)
    assert not found, report(
        "the SDK imports nothing of runstream.server, runstream.components, flask, sqlalchemy, "
        "alembic, jwt or reactpy",
        found,
    )


def test_components_import_no_server_no_private_sdk_and_no_flask_at_import(graph: Graph) -> None:
    selected(graph, lambda m: within(m, COMPONENTS))
    assert is_private_sdk("runstream._ws") and not is_private_sdk("runstream.streams")

    def in_components(name: str) -> bool:
        return within(name, COMPONENTS)

    found = violations(
        graph, in_components, lambda name: within(name, SERVER) or is_private_sdk(name)
    )
    found += violations(
        graph, in_components, lambda name: top_level(name, "flask"), at_import_time=True
    )
    assert not found, report(
        f"{COMPONENTS} imports nothing of {SERVER}, no private SDK module (runstream._x), and no "
        "flask at module level",
        found,
    )
