"""The package import graph of ``modelfleet`` keeps its seams (issue 6, contract 10).

Every ``import`` in ``src/modelfleet`` is read with :mod:`ast` (function-level and
``TYPE_CHECKING`` imports included: a dependency is a dependency) and folded into a graph
between packages (``modelfleet.hub``, ``modelfleet.agent``, …; a top-level module such as
``modelfleet.client`` is its own node). The rules:

* no cycle between packages;
* fastapi, sqlalchemy, alembic and psycopg only under ``hub/``; starlette and uvicorn only
  under ``hub/`` and ``agent/`` (starlette also in ``delivery/mirror.py``, the site
  mirror); ``cli/`` may import any of them lazily, inside a function;
* ``agent/`` never imports ``hub/``, ``client``, fastapi or sqlalchemy; ``audit/`` never
  imports ``hub/``;
* ``serving/``, ``monitoring/`` and ``rollout/`` import no web framework, database or clock;
* ``sim/`` never imports ``hub/``, ``agent/``, ``client``, a web framework or a database;
* ``telemetry/`` never imports ``agent/``, ``hub/``, ``client``, a web framework or a database;
  opentelemetry (extra ``otel``) is imported only by ``telemetry/otel.py``, inside functions;
* what ``modelfleet agent run`` and the CLI load at import time needs no extra (the
  agent-only install): no hub or scikit-learn library is reachable through module-level
  imports from ``modelfleet.cli.main`` or ``modelfleet.agent.daemon``.

Each failure names the importing module, its file and line.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = SRC / "modelfleet"

WEB = frozenset({"fastapi", "starlette", "uvicorn"})
DATABASE = frozenset({"sqlalchemy", "alembic", "psycopg", "psycopg2"})
HUB_EXTRA = frozenset({"fastapi", "sqlalchemy", "alembic", "psycopg"})
SKLEARN_EXTRA = frozenset({"sklearn", "skl2onnx"})
OTEL_EXTRA = frozenset({"opentelemetry"})
CLOCK = frozenset({"time", "modelfleet.clock"})


@dataclass(frozen=True)
class Import:
    """One imported name as written in one module."""

    module: str  # the importing module, e.g. modelfleet.agent.daemon
    target: str  # absolute dotted name imported, e.g. modelfleet.hub.service or fastapi
    line: int
    lazy: bool  # inside a function body
    type_only: bool  # under ``if TYPE_CHECKING:``

    @property
    def where(self) -> str:
        path = module_path(self.module).relative_to(SRC.parent)
        return f"{self.module} ({path}:{self.line}) imports {self.target}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_path(module: str) -> Path:
    base = SRC.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def is_package(module: str) -> bool:
    return SRC.joinpath(*module.split(".")).is_dir()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve_from(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package(module):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_of(module: str) -> Iterator[Import]:
    tree = ast.parse(module_path(module).read_text(), filename=str(module_path(module)))

    def visit(node: ast.AST, lazy: bool, type_only: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(module, alias.name, child.lineno, lazy, type_only)
            elif isinstance(child, ast.ImportFrom):
                base = _resolve_from(module, child)
                for alias in child.names:
                    # ``from modelfleet import errors`` imports the module modelfleet.errors.
                    sub = f"{base}.{alias.name}"
                    is_sub = base.startswith("modelfleet") and module_path(sub).exists()
                    yield Import(module, sub if is_sub else base, child.lineno, lazy, type_only)
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                yield from visit(child, True, type_only)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from visit(ast.Module(body=[stmt], type_ignores=[]), lazy, True)
                for stmt in child.orelse:
                    yield from visit(ast.Module(body=[stmt], type_ignores=[]), lazy, type_only)
            else:
                yield from visit(child, lazy, type_only)

    yield from visit(tree, False, False)


def package_of(module: str) -> str:
    """``modelfleet.hub.api.devices`` -> ``modelfleet.hub``; top-level modules stand alone."""
    return ".".join(module.split(".")[:2])


def top(target: str) -> str:
    return target.split(".")[0]


ALL_MODULES = sorted(module_name(p) for p in ROOT.rglob("*.py"))
ALL_IMPORTS = [imp for m in ALL_MODULES for imp in imports_of(m)]
INTERNAL = [i for i in ALL_IMPORTS if top(i.target) == "modelfleet"]


def _in(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _report(problems: list[str], what: str) -> str:
    unique = sorted(set(problems))
    return f"{len(unique)} import(s) {what}:\n  " + "\n  ".join(unique)


# -- cycles --------------------------------------------------------------------------------


def package_graph() -> dict[str, dict[str, list[Import]]]:
    graph: dict[str, dict[str, list[Import]]] = {}
    for imp in INTERNAL:
        src, dst = package_of(imp.module), package_of(imp.target)
        if src != dst and dst != "modelfleet":
            graph.setdefault(src, {}).setdefault(dst, []).append(imp)
    return graph


def strongly_connected(graph: dict[str, dict[str, list[Import]]]) -> list[list[str]]:
    """Tarjan's algorithm; components with more than one package are cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    nodes = set(graph) | {d for edges in graph.values() for d in edges}
    for v in sorted(nodes):
        if v not in index:
            connect(v)
    return found


def test_the_graph_sees_function_level_and_relative_imports() -> None:
    # Guards the parser itself: a graph that misses lazy imports would pass vacuously.
    cli_main = [i for i in ALL_IMPORTS if i.module == "modelfleet.cli.main"]
    assert any(i.lazy and i.target.startswith("modelfleet.hub") for i in cli_main)
    assert ("modelfleet.cli", "modelfleet.errors") in {
        (package_of(i.module), package_of(i.target)) for i in INTERNAL
    }
    fake = Import("modelfleet.cli.main", "x", 1, False, False)
    assert "src/modelfleet/cli/main.py:1" in fake.where


def test_cycle_finder_reports_cycles_and_only_cycles() -> None:
    imp = Import("modelfleet.a", "modelfleet.b", 1, False, False)
    graph = {
        "a": {"b": [imp]},
        "b": {"c": [imp]},
        "c": {"a": [imp], "d": [imp]},
        "d": {"e": [imp]},
    }
    assert strongly_connected(graph) == [["a", "b", "c"]]


def test_no_import_cycle_between_packages() -> None:
    graph = package_graph()
    problems = []
    for component in strongly_connected(graph):
        members = set(component)
        edges = {
            imp.where
            for src in component
            for dst, imps in graph[src].items()
            if dst in members
            for imp in imps
        }
        problems.append(
            f"cycle between {' <-> '.join(component)}:\n    " + "\n    ".join(sorted(edges))
        )
    assert not problems, "import cycles between packages:\n" + "\n".join(problems)


# -- where third-party frameworks may be imported ------------------------------------------

RULES = [
    # (library, packages allowed at any level)
    ("fastapi", ("modelfleet.hub",)),
    ("sqlalchemy", ("modelfleet.hub",)),
    ("alembic", ("modelfleet.hub",)),
    ("psycopg", ("modelfleet.hub",)),
    ("psycopg2", ("modelfleet.hub",)),
    ("starlette", ("modelfleet.hub", "modelfleet.agent", "modelfleet.delivery.mirror")),
    ("uvicorn", ("modelfleet.hub", "modelfleet.agent")),
]


@pytest.mark.parametrize(("library", "allowed"), RULES, ids=[r[0] for r in RULES])
def test_framework_imported_only_where_it_belongs(library: str, allowed: tuple[str, ...]) -> None:
    problems = [
        imp.where + ("" if imp.lazy else " at module level")
        for imp in ALL_IMPORTS
        if top(imp.target) == library
        and not _in(imp.module, *allowed)
        and not (_in(imp.module, "modelfleet.cli") and imp.lazy)
    ]
    assert not problems, _report(
        problems, f"of {library} outside {', '.join(allowed)} (cli/ only inside a function)"
    )


FORBIDDEN = [
    ("agent-imports-hub", "modelfleet.agent", ("modelfleet.hub",)),
    ("agent-imports-client", "modelfleet.agent", ("modelfleet.client",)),
    ("agent-imports-web-or-db", "modelfleet.agent", ("fastapi", "sqlalchemy")),
    ("audit-imports-hub", "modelfleet.audit", ("modelfleet.hub",)),
    *(
        (f"{p}-imports-web-db-or-clock", f"modelfleet.{p}", (*WEB, *DATABASE, *CLOCK))
        for p in ("serving", "monitoring", "rollout")
    ),
    (
        "sim-imports-hub-agent-client-web-or-db",
        "modelfleet.sim",
        ("modelfleet.hub", "modelfleet.agent", "modelfleet.client", *WEB, *DATABASE),
    ),
    (
        "telemetry-imports-agent-hub-web-or-db",
        "modelfleet.telemetry",
        ("modelfleet.agent", "modelfleet.hub", "modelfleet.client", *WEB, *DATABASE),
    ),
]


@pytest.mark.parametrize(("importer", "forbidden"), [f[1:] for f in FORBIDDEN],
                         ids=[f[0] for f in FORBIDDEN])  # fmt: skip
def test_package_does_not_import_what_it_must_not(
    importer: str, forbidden: tuple[str, ...]
) -> None:
    problems = [
        imp.where
        for imp in ALL_IMPORTS
        if _in(imp.module, importer) and any(_in(imp.target, f) for f in forbidden)
    ]
    assert not problems, _report(problems, f"from {importer} of {', '.join(forbidden)}")


def test_opentelemetry_is_imported_only_lazily_and_only_by_telemetry_otel() -> None:
    # The otel extra is optional: only telemetry/otel.py may use it, inside functions (or
    # for type checking), so importing that module without the extra still works.
    problems = [
        imp.where + ("" if imp.lazy or imp.type_only else " at module level")
        for imp in ALL_IMPORTS
        if top(imp.target) in OTEL_EXTRA
        and (imp.module != "modelfleet.telemetry.otel" or not (imp.lazy or imp.type_only))
    ]
    assert not problems, _report(problems, "of opentelemetry outside telemetry/otel.py functions")


# -- the agent-only install ----------------------------------------------------------------


def eager_closure(start: str) -> dict[str, Import | None]:
    """Modules loaded by ``import start`` (module-level, non-TYPE_CHECKING imports,
    parent packages included), each with the import that first reached it."""
    reached: dict[str, Import | None] = {}
    todo: list[tuple[str, Import | None]] = [(start, None)]
    while todo:
        module, via = todo.pop()
        parts = module.split(".")
        for n in range(1, len(parts) + 1):
            name = ".".join(parts[:n])
            if name in reached or not module_path(name).exists():
                continue
            reached[name] = via
            for imp in imports_of(name):
                if imp.lazy or imp.type_only:
                    continue
                if top(imp.target) == "modelfleet":
                    todo.append((imp.target, imp))
                else:
                    reached.setdefault(imp.target, imp)
    return reached


def _chain(reached: dict[str, Import | None], name: str) -> str:
    links: list[str] = []
    imp = reached.get(name)
    while imp is not None and len(links) < 20:
        links.append(imp.where)
        imp = reached.get(imp.module)
    return "\n    <- ".join(links)


@pytest.mark.parametrize("entry", ["modelfleet.cli.main", "modelfleet.agent.daemon"])
def test_agent_and_cli_import_nothing_from_the_extras(entry: str) -> None:
    reached = eager_closure(entry)
    problems = [
        _chain(reached, name)
        for name in reached
        if top(name) in HUB_EXTRA | SKLEARN_EXTRA | OTEL_EXTRA and reached[name] is not None
    ]
    assert not problems, _report(
        problems,
        f"that make `import {entry}` need modelfleet[hub], modelfleet[sklearn] or modelfleet[otel]",
    )
