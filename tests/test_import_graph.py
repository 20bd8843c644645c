"""No import circles between the package's modules.

Every module of ``ditflow_fast`` (and ``kernels/``, which installs as ``ditflow_fast.kernels``) is
parsed, not imported. An edge ``a -> b`` is an ``import``/``from ... import`` in ``a`` that names
module ``b`` of the package. Two graphs are checked: the imports that run when ``a`` is imported
(module level, class bodies, top-level ``try``/``if``), and all of them, imports inside functions
too: a lazy import still runs ``b`` from inside ``a``, and two modules that need each other are one
module in two files, whichever of them defers its import. A failure lists each circle with the
file and line of every edge.
Imports under ``if TYPE_CHECKING:`` never run and are left out, and so are imports by a computed
name (``importlib.import_module(mod)``, the app's warm-up). ``from pkg import name`` is an
edge to ``pkg.name`` when that is a module, else to ``pkg`` itself (a name its ``__init__``
defines). Importing ``pkg.sub`` also runs ``pkg``'s ``__init__`` first, so it is an edge to ``pkg``
as well, unless ``a`` is inside ``pkg`` itself: a package's ``__init__`` running before its own
submodules is the import system's order, not a circle in the code.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _package_roots() -> dict[str, Path]:
    """Package name -> directory: ``ditflow_fast``, and ``kernels/``, installed as ``ditflow_fast.kernels``
    through the link ``ditflow_fast/kernels``."""
    assert (ROOT / "ditflow_fast" / "kernels").resolve() == (ROOT / "kernels").resolve()
    return {"ditflow_fast": ROOT / "ditflow_fast", "ditflow_fast.kernels": ROOT / "kernels"}


def _modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package ``__init__``)."""
    found: dict[str, tuple[Path, bool]] = {}
    for pkg, base in _package_roots().items():
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base).with_suffix("").parts
            if pkg == "ditflow_fast" and rel[0] == "kernels":
                continue  # the link; read once, from kernels/
            is_pkg = path.name == "__init__.py"
            found[".".join((pkg, *(rel[:-1] if is_pkg else rel)))] = (path, is_pkg)
    return found


def _imports(tree: ast.AST):
    """``(node, in_function)`` for every import statement that runs, skipping ``if TYPE_CHECKING:`` bodies."""
    todo = [(tree, False)]
    while todo:
        node, lazy = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, lazy
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
            if name == "TYPE_CHECKING":
                todo.extend((n, lazy) for n in node.orelse)
                continue
        inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        todo.extend((child, inner) for child in ast.iter_child_nodes(node))


def _edges(name: str, path: Path, is_pkg: bool, modules: dict) -> dict[str, str]:
    """Imported module -> where (``file:line``, and whether inside a function), first occurrence kept."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if is_pkg else name.rpartition(".")[0]
    out: dict[str, tuple[int, bool]] = {}

    def add(target: str, node: ast.stmt, lazy: bool) -> None:
        parts = target.split(".")
        # the packages whose __init__ importing ``target`` runs, except those ``name`` already lives in
        runs = [".".join(parts[:i]) for i in range(2, len(parts))] + [target]
        for t in runs:
            inside = name == t or name.startswith(t + ".")
            if t in modules and not inside and (t not in out or (out[t][1] and not lazy)):
                out[t] = (node.lineno, lazy)

    for node, lazy in sorted(_imports(tree), key=lambda found: found[0].lineno):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    add(alias.name, node, lazy)
            continue
        if node.level:
            parts = package.split(".")
            base = ".".join(parts[:len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        for alias in node.names:
            if f"{base}.{alias.name}" in modules:
                add(f"{base}.{alias.name}", node, lazy)
            elif base in modules:
                add(base, node, lazy)
    rel = path.relative_to(ROOT)
    return {t: f"{rel}:{line}{' (in a function)' if lazy else ''}" for t, (line, lazy) in out.items()}


def import_graph(function_level: bool = True) -> dict[str, dict[str, str]]:
    """Module -> {imported module: where}; ``function_level=False`` keeps only imports run at import time."""
    modules = _modules()
    graph = {name: _edges(name, path, is_pkg, modules) for name, (path, is_pkg) in modules.items()}
    if not function_level:
        graph = {a: {b: w for b, w in e.items() if not w.endswith("(in a function)")} for a, e in graph.items()}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``a -> ... -> a``) per strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan; the graph has a few hundred nodes, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_cycle_in(graph, set(comp), comp[0]) for comp in components]


def _cycle_in(graph: dict[str, set[str]], comp: set[str], start: str) -> list[str]:
    """A shortest path ``start -> ... -> start`` inside the component (breadth first)."""
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(set(graph[v]) & comp):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [*reversed(path), start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in its component")


def _report(graph, cycles) -> str:
    lines = ["import cycles (each edge: importer -> imported, at file:line):"]
    for c in cycles:
        lines.append("  " + " -> ".join(c))
        lines.extend(f"      {a} -> {b}  {graph[a][b]}" for a, b in zip(c, c[1:], strict=False))
    return "\n".join(lines)


def test_the_graph_sees_the_package():
    graph = import_graph()
    assert {"ditflow_fast", "ditflow_fast.api", "ditflow_fast.eager", "ditflow_fast.ops",
            "ditflow_fast.backends", "ditflow_fast.backends.cpu", "ditflow_fast.kernels.amf_fwd"} <= set(graph)
    assert "ditflow_fast.eager" in graph["ditflow_fast.ops"] and "ditflow_fast.eager" in graph["ditflow_fast.api"]
    assert "ditflow_fast._native" in graph["ditflow_fast.backends.cpu"]  # `from .. import _native`
    # an absolute import inside a function: the Triton launchers import the kernels when they launch
    where = graph["ditflow_fast.backends.triton_launch"]["ditflow_fast.kernels.amf_fwd"]
    assert where.endswith("(in a function)")
    eager_only = import_graph(function_level=False)
    assert "ditflow_fast.kernels.amf_fwd" not in eager_only["ditflow_fast.backends.triton_launch"]


def test_find_cycles_reports_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]


def test_no_import_cycles_at_module_level():
    graph = import_graph(function_level=False)
    cycles = find_cycles(graph)
    assert not cycles, _report(graph, cycles)


def test_no_import_cycles_counting_imports_inside_functions():
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, _report(graph, cycles)


# importer package -> packages it must not import (imports inside functions count): the layers of
# docs/architecture.md. The loop knows families only through the registry and the family object it is
# handed; the tools sit on the library (transfer_api), not on the command line or the toy world.
FORBIDDEN = {
    "ditflow_fast.guidance": ("ditflow_fast.families.cogvideox", "ditflow_fast.families.wan"),
    "ditflow_fast.transfer_api": ("ditflow_fast.cli", "ditflow_fast.toyworld", "ditflow_fast.app",
                                  "ditflow_fast.batch"),
    "ditflow_fast.app": ("ditflow_fast.cli", "ditflow_fast.toyworld"),
    "ditflow_fast.batch": ("ditflow_fast.cli", "ditflow_fast.toyworld"),
    "ditflow_fast.viewer": ("ditflow_fast.cli", "ditflow_fast.toyworld"),
}


def _layer_breaches(graph) -> list[str]:
    def within(name: str, pkg: str) -> bool:
        return name == pkg or name.startswith(pkg + ".")

    return [f"{a} -> {b}  {where}" for a, edges in sorted(graph.items()) for b, where in sorted(edges.items())
            for src, banned in FORBIDDEN.items() if within(a, src) and any(within(b, x) for x in banned)]


def test_the_layer_check_sees_a_breach():
    graph = {"ditflow_fast.app.core": {"ditflow_fast.cli.transfer": "x.py:1"},
             "ditflow_fast.guidance.loop": {"ditflow_fast.families": "y.py:2"}}
    assert _layer_breaches(graph) == ["ditflow_fast.app.core -> ditflow_fast.cli.transfer  x.py:1"]


def test_no_import_runs_back_up_the_layers():
    breaches = _layer_breaches(import_graph())
    assert not breaches, "imports across the layers:\n  " + "\n  ".join(breaches)


# the Triton kernels' own developer tool (cubins without a GPU), run by CI beside the kernels it checks
COMPILE_CHECK = "ditflow_fast.kernels.compile_check"


def test_argparse_only_in_the_command_line():
    """Options are parsed in cli/ (and by the toy world's own command); the library takes Python values."""
    users = []
    for name, (path, _) in _modules().items():
        if name.startswith(("ditflow_fast.cli.", "ditflow_fast.toyworld.")) or name == COMPILE_CHECK:
            continue
        for node, _lazy in _imports(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if "argparse" in names:
                users.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not users, f"argparse outside the command line: {users}"
    assert any("argparse" in p.read_text() for p in (ROOT / "ditflow_fast" / "cli").glob("*.py"))
