"""The modules of ``asrd`` import one another in one direction only: no import cycles.

Every import counts — module level, under ``TYPE_CHECKING`` and inside functions — since each
is a dependency a reader has to follow; relative imports are resolved, and a package's
``__init__`` is a module of its own. The test fails naming each cycle, as a chain of imports.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "daemon"
PACKAGE = "asrd"


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _targets(node: ast.AST, module: str, is_package: bool, known: set[str]) -> Iterator[str]:
    """The asrd modules one import statement names."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
        return
    if not isinstance(node, ast.ImportFrom):
        return
    if node.level:
        # ``from . import x`` in a package's __init__ is relative to the package itself.
        base = module.split(".")
        if not is_package:
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join([*base, *([node.module] if node.module else [])])
    else:
        source = node.module or ""
    for alias in node.names:
        # ``from pkg import sub`` imports the submodule when there is one.
        sub = f"{source}.{alias.name}"
        yield sub if sub in known else source


def _owner(name: str, known: set[str]) -> str | None:
    """The asrd module an imported name lives in (``asrd.a.b`` may be a name in ``asrd.a``)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            for target in _targets(node, name, is_package, known):
                owner = _owner(target, known)
                if owner is not None and owner != name:
                    graph[name].add(owner)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively (the graph is small, recursion would do, but needn't)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                components.append(sorted(component))
    return components


def _cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One chain of imports through the component that comes back to where it started."""
    members = set(component)
    start = component[0]
    # Breadth-first from start's neighbours back to start, inside the component.
    paths: dict[str, list[str]] = {start: [start]}
    frontier = [start]
    while frontier:
        nxt: list[str] = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    return [*paths[node], start]
                if child not in paths:
                    paths[child] = [*paths[node], child]
                    nxt.append(child)
        frontier = nxt
    return component


def test_the_graph_is_read() -> None:
    graph = import_graph()
    assert "asrd.worker" in graph
    assert "asrd.settle" in graph["asrd.worker"]  # the parser sees ordinary imports


def test_no_import_cycles() -> None:
    graph = import_graph()
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    text = "\n".join(" -> ".join(_cycle(graph, c)) + f"  ({len(c)} modules)" for c in cycles)
    assert not cycles, f"import cycles:\n{text}"


def test_the_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    assert cycles == [["a", "b", "c"]]
    assert _cycle(graph, cycles[0]) == ["a", "b", "c", "a"]


def test_the_vocabulary_is_the_bottom_and_the_hooks_stand_on_it_alone() -> None:
    graph = import_graph()
    assert graph["asrd.vocabulary"] == set()
    assert graph["asrd.observers"] == {"asrd.vocabulary"}


def test_the_emulator_shares_no_code_with_the_client_side() -> None:
    """``asrd emulator`` is an independent implementation of the services asrd talks to: a
    shared module would let one bug hide in both."""
    graph = import_graph()
    emulator = {m for m in graph if m == "asrd.emulator" or m.startswith("asrd.emulator.")}
    outside = {(m, t) for m in emulator for t in graph[m] if t not in emulator}
    assert not outside, f"the emulator imports the client side: {sorted(outside)}"
