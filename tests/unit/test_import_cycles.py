"""No import circles inside the harness package.

The graph is read from the source with ``ast``: every ``import`` and ``from ... import``
counts, at module level and inside functions alike (a function-level import that closes a
circle only hides it until the function runs).  An edge goes to the module named; for
``from P import x`` to ``P.x`` when that is a module, else to ``P``.  Importing a module
also runs its parent packages' ``__init__``, but those edges are left out: a package whose
``__init__`` imports its own submodules would otherwise be a circle with every child.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import harness

PKG_DIR = Path(harness.__file__).resolve().parent
PKG = "harness"


def _modules(root: Path, pkg: str) -> Dict[str, Path]:
    """module name -> file, for every .py under ``root``."""
    mods = {}
    for f in sorted(root.rglob("*.py")):
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join([pkg] + parts)] = f
    return mods


def _resolve(name: str, mods: Dict[str, Path]) -> str:
    """The longest prefix of ``name`` that is one of ``mods`` ('' when none is)."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in mods:
            return cand
        parts.pop()
    return ""


def import_graph(root: Path = PKG_DIR, pkg: str = PKG) -> Dict[str, Set[str]]:
    mods = _modules(root, pkg)
    graph: Dict[str, Set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        here = mod.split(".") if is_pkg else mod.split(".")[:-1]  # the package a relative import starts from
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[: len(here) - (node.level - 1)]
                    base_name = ".".join(base + ([node.module] if node.module else []))
                else:
                    base_name = node.module or ""
                targets = [f"{base_name}.{a.name}" for a in node.names] or [base_name]
            for t in targets:
                dest = _resolve(t, mods)
                if dest and dest != mod:
                    graph[mod].add(dest)
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _path(graph: Dict[str, Set[str]], comp: List[str]) -> str:
    """One circle through a component, e.g. 'a -> b -> a', for the failure message."""
    members = set(comp)
    start = comp[0]
    prev = {start: None}
    todo = [start]
    while todo:
        v = todo.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                chain = [v]
                while prev[chain[-1]] is not None:
                    chain.append(prev[chain[-1]])
                return " -> ".join(list(reversed(chain)) + [start])
            if w not in prev:
                prev[w] = v
                todo.append(w)
    return ", ".join(comp)


def test_the_harness_package_has_no_import_circle():
    graph = import_graph()
    assert len(graph) > 30 and "harness.cli" in graph and "harness.grade.cli" in graph
    found = cycles(graph)
    assert not found, "import circles: " + "; ".join(_path(graph, c) for c in found)


def test_the_walker_sees_module_and_function_level_imports(tmp_path):
    """The detector itself: a circle closed by a function-level relative import is found,
    and so is one through ``from .. import``; a one-way chain is not a circle."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import thing\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "sub" / "__init__.py").write_text("from . import d\n")
    (pkg / "sub" / "d.py").write_text("from .. import c\nfrom ..e import x\n")
    (pkg / "e.py").write_text("def g():\n    import pkg.sub.d\n")
    graph = import_graph(pkg, "pkg")
    assert graph["pkg.b"] == {"pkg.a"} and graph["pkg.sub.d"] == {"pkg.c", "pkg.e"}
    assert cycles(graph) == [["pkg.a", "pkg.b"], ["pkg.e", "pkg.sub.d"]]
    (pkg / "b.py").write_text("X = 1\n")
    (pkg / "e.py").write_text("")
    assert cycles(import_graph(pkg, "pkg")) == []
