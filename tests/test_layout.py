"""House rules of the package layout, checked on every module under ``src/weightinit``.

* no module over 400 lines;
* imports between the package's own modules sit at module level (no
  function-local imports to dodge a cycle);
* every exception class lives in ``weightinit/errors.py``;
* the module-level imports between the package's modules form no cycle;
* ``weightinit.__all__`` holds public names only, and each of them exists.
"""

from __future__ import annotations

import ast
import builtins
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

import weightinit

PACKAGE = "weightinit"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE
MAX_LINES = 400
ERRORS_MODULE = f"{PACKAGE}.errors"


@dataclass(frozen=True)
class Module:
    name: str
    path: Path

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"

    @property
    def package(self) -> str:
        """The package relative imports start from."""
        return self.name if self.is_package else self.name.rpartition(".")[0]

    @property
    def rel(self) -> str:
        return str(self.path.relative_to(SRC.parent))

    @property
    def tree(self) -> ast.Module:
        return _parse(self.path)


@cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@cache
def modules() -> dict[str, Module]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = Module(".".join(parts), path)
    return out


def _imports(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement with whether it runs at import time (not in a def or class)."""

    def walk(node: ast.AST, top: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, top
            nested = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda,
                                        ast.ClassDef))
            yield from walk(child, top and not nested)

    yield from walk(tree, True)


def _source(mod: Module, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` reads from."""
    if not node.level:
        return node.module or ""
    parts = mod.package.split(".")
    base = parts[:len(parts) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _own(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _edges(mod: Module) -> set[str]:
    """The package's modules that importing ``mod`` imports first (module-level imports).

    ``from PKG import name`` depends on ``PKG.name`` when that is a module, and
    on ``PKG`` itself (its ``__init__``) unless ``PKG`` is a package ``mod`` lives
    in and every name is a submodule (``from . import sibling``). Importing a
    module imports its packages first, except those ``mod`` already lives in.
    """
    known = modules()
    inside = set(_ancestors(mod.name)) | ({mod.name} if mod.is_package else set())
    targets: set[str] = set()
    for node, top in _imports(mod.tree):
        if not top:
            continue
        if isinstance(node, ast.Import):
            targets |= {a.name for a in node.names if _own(a.name)}
            continue
        source = _source(mod, node)
        if not _own(source):
            continue
        subs = {f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in known}
        targets |= subs
        if len(subs) < len(node.names) or source not in inside:
            targets.add(source)
    out = set()
    for target in targets:
        out |= {t for t in _ancestors(target) if t in known and t not in inside}
        out |= {target} if target in known else set()
    out.discard(mod.name)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for comp in components:
        start = min(comp)
        # shortest way back to ``start`` inside the component (breadth first)
        prev: dict[str, str] = {}
        frontier = [start]
        found = None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & comp):
                    if w == start:
                        found = v
                        break
                    if w not in prev:
                        prev[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path = [start]
        v = found
        while v is not None and v != start:
            path.insert(1, v)
            v = prev.get(v)
        cycles.append(path + [start])
    return cycles


# ------------------------------------------------------------------ the rules


@pytest.mark.parametrize("name", sorted(modules()))
def test_module_is_at_most_400_lines(name):
    mod = modules()[name]
    n = len(mod.path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, (f"{mod.rel} has {n} lines (at most {MAX_LINES}): split it into "
                            "modules of one responsibility each")


def test_no_function_local_imports_of_the_package():
    bad = []
    for mod in modules().values():
        for node, top in _imports(mod.tree):
            if top:
                continue
            own = (any(_own(a.name) for a in node.names) if isinstance(node, ast.Import)
                   else bool(node.level) or _own(node.module or ""))
            if own:
                bad.append(f"{mod.rel}:{node.lineno}: {ast.unparse(node)}")
    assert not bad, ("imports of the package's own modules inside functions or classes (move "
                     "them to the module top; break the cycle instead):\n" + "\n".join(bad))


def _exception_classes() -> list[tuple[Module, ast.ClassDef]]:
    """Every class (at any depth) deriving from an exception, judged by its bases' names."""
    known = {n for n in dir(builtins)
             if isinstance(getattr(builtins, n), type)
             and issubclass(getattr(builtins, n), BaseException)}
    classes = [(mod, node) for mod in modules().values() for node in ast.walk(mod.tree)
               if isinstance(node, ast.ClassDef)]

    def base_name(expr: ast.expr) -> str:
        if isinstance(expr, ast.Subscript):
            expr = expr.value
        if isinstance(expr, ast.Attribute):
            return expr.attr
        return expr.id if isinstance(expr, ast.Name) else ""

    found: list[tuple[Module, ast.ClassDef]] = []
    changed = True
    while changed:
        changed = False
        for mod, node in classes:
            if (mod, node) in found:
                continue
            if any(base_name(b) in known for b in node.bases):
                found.append((mod, node))
                known.add(node.name)
                changed = True
    return found


def test_exceptions_live_in_errors_py():
    bad = [f"{mod.rel}:{node.lineno}: class {node.name}" for mod, node in _exception_classes()
           if mod.name != ERRORS_MODULE]
    assert not bad, "exception classes outside errors.py:\n" + "\n".join(bad)
    # the same at run time, for bases the names above cannot see through
    for name in (n for n in modules() if "mmcv" not in n or importlib.util.find_spec("mmcv")):
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, BaseException)
                    and obj.__module__ == name):
                assert name == ERRORS_MODULE, f"{name}.{obj.__qualname__} is an exception " \
                                              "class outside errors.py"


def test_module_imports_have_no_cycle():
    graph = {name: _edges(mod) for name, mod in modules().items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles among the package's modules:\n" + "\n".join(
        " -> ".join(c) for c in cycles)


def test_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert sorted(_cycles(graph)) == [["a", "b", "c", "a"], ["e", "e"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_edges_follow_real_dependencies():
    known = modules()
    report = _edges(known[f"{PACKAGE}.report.model"])
    assert f"{PACKAGE}.report.formatting" in report
    assert f"{PACKAGE}.report" not in report  # its own package: already being imported
    cli = _edges(known[f"{PACKAGE}.cli.commands"])
    assert {f"{PACKAGE}.configfile", f"{PACKAGE}.report", f"{PACKAGE}.health"} <= cli
    assert PACKAGE not in cli
    assert _edges(known[f"{PACKAGE}.cli.__main__"]) == {f"{PACKAGE}.cli"}  # from . import main


INTERNALS = ["derive_seed", "MODEL_WRAPPERS", "Session", "build_plan"]


def test_public_api_holds_no_internals():
    names = weightinit.__all__
    assert len(names) == len(set(names)), "duplicates in weightinit.__all__"
    leaked = [n for n in names if n in INTERNALS or n.startswith("_")]
    assert not leaked, f"internals in weightinit.__all__: {leaked}"
    missing = [n for n in names if not hasattr(weightinit, n)]
    assert not missing, f"names in weightinit.__all__ that do not exist: {missing}"
    ns: dict[str, object] = {}
    exec(f"from {PACKAGE} import *", ns)  # noqa: S102 - the star import users write
    assert set(names) <= set(ns)
