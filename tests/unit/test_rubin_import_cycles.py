"""The Rubin modules import one another without a cycle (imports inside functions count too: a cycle hidden in a
function is still two modules that cannot be read, or tested, one without the other)."""

from __future__ import annotations

import ast
from pathlib import Path

import facility_data.rubin

PACKAGE = "facility_data.rubin"
ROOT = Path(facility_data.rubin.__file__).parent


def _imports(path: Path) -> set[str]:
    """The facility_data.rubin modules that ``path`` imports, anywhere in the file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            if node.module == PACKAGE:  # from facility_data.rubin import steps, report
                out |= {f"{PACKAGE}.{a.name}" for a in node.names}
    return {m for m in out if m.startswith(PACKAGE + ".")}


def _graph() -> dict[str, set[str]]:
    modules = {f"{PACKAGE}.{p.stem}": p for p in ROOT.glob("*.py") if p.stem != "__init__"}
    return {name: (_imports(path) & modules.keys()) - {name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            if found := visit(nxt, path + [node]):
                return found
        done.add(node)
        return None

    return next((c for start in sorted(graph) if (c := visit(start, []))), None)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_rubin_modules_have_no_import_cycle():
    graph = _graph()
    assert f"{PACKAGE}.report" in graph and f"{PACKAGE}.reconcile" in graph  # the walk sees the modules
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)
