"""The package's import layout: no import cycles, product code never imports the demo, each room imports only the
rooms it may (docs/architecture.md describes the same rooms and rules).

Static: every import statement of every module is read with ``ast``, at module level and inside functions (the lazy
imports that run only when a task executes), so a deferred import cannot hide a cycle or a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "facility_data"

# The rooms a room may import (besides itself). A room is a subpackage of facility_data; "core" is the top-level
# modules (safety, masking, notify, metrics, reports, charts, ...). "demo" may import anything; no product room (nor
# dags/, plugins/) imports demo or localsite. docs/architecture.md explains each rule.
BASE = frozenset({"core", "config"})
ALLOWED: dict[str, frozenset[str] | None] = {
    "config": frozenset(),
    "core": frozenset({"config"}),
    "transfer": BASE,
    "hooks": BASE | {"transfer"},
    "hpc": BASE | {"hooks"},
    "triggers": BASE | {"hooks"},  # a trigger never imports the sensor or operator that defers to it
    "sensors": BASE | {"hooks", "triggers"},
    "operators": BASE | {"hooks", "triggers", "transfer", "hpc", "rubin"},
    "rubin": BASE | {"hooks"},
    "als": BASE | {"hooks", "transfer", "hpc", "operators", "sensors"},
    "ui": BASE | {"als", "rubin", "hooks"},
    "localsite": BASE,
    "demo": None,
}

# The one cycle left, allowed until that branch merges; the cycle test fails once it is gone, so remove it then.
KNOWN_CYCLES: set[frozenset[str]] = set()


def package_modules(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package __init__) for every module of ``package`` under ``root``."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_init = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_init else parts)] = (path, is_init)
    return modules


def imported_names(tree: ast.AST, module: str, is_init: bool) -> set[str]:
    """Every dotted name an import statement anywhere in ``tree`` asks for, relative imports made absolute
    (``from X import Y`` gives X.Y: Y is a submodule or a name defined in X)."""
    names = set()
    here = module.split(".") if is_init else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            names.update(f"{source}.{alias.name}" for alias in node.names)
    return names


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports; a name is counted as the nearest module that defines it (the
    parent packages a submodule import also loads are not counted, as in import-linter)."""
    modules = package_modules(root, package)

    def owner(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for module, (path, is_init) in modules.items():
        names = imported_names(ast.parse(path.read_text(), str(path)), module, is_init)
        graph[module] = {owner(n) for n in names if n.split(".")[0] == package} - {module}
    return graph


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.add(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


SUBPACKAGES = {p.parent.name for p in (REPO / "operators" / PACKAGE).glob("*/__init__.py")}


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in SUBPACKAGES else "core"


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(REPO / "operators", PACKAGE)


def test_the_walk_sees_function_level_imports(graph):
    # sanity, so the rules below cannot pass on an empty graph: these are imports inside functions
    assert "facility_data.hooks.sfapi" in graph["facility_data.triggers.sfapi"]
    assert "facility_data.demo.rubin_synthetic" in graph["facility_data.demo.run"]


def test_no_import_cycle_between_modules(graph):
    found = cycles(graph)
    new = sorted(sorted(c) for c in found - KNOWN_CYCLES)
    assert not new, f"import cycles: {new}"
    gone = sorted(sorted(c) for c in KNOWN_CYCLES - found)
    assert not gone, f"known cycles no longer present, remove them from KNOWN_CYCLES: {gone}"


def test_product_code_never_imports_the_demo_or_the_local_site(graph):
    bad = sorted(f"{m} -> {t}" for m, targets in graph.items() if room(m) not in ("demo", "localsite")
                 for t in targets if room(t) in ("demo", "localsite"))
    # the DAG bundle (dags/, plugins/) is product code too
    for path in sorted([*(REPO / "dags").rglob("*.py"), *(REPO / "plugins").rglob("*.py")]):
        for name in imported_names(ast.parse(path.read_text(), str(path)), path.stem, False):
            if name.split(".")[:2] in (["facility_data", "demo"], ["facility_data", "localsite"]):
                bad.append(f"{path.relative_to(REPO)} -> {name}")
    assert not bad, bad


def test_each_room_imports_only_the_rooms_it_may(graph):
    rooms = {room(m) for m in graph}
    assert rooms == set(ALLOWED), f"rooms without a rule, or rules without a room: {rooms ^ set(ALLOWED)}"
    bad = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                 if room(t) != room(m) and ALLOWED[room(m)] is not None and room(t) not in ALLOWED[room(m)])
    assert not bad, bad


def test_the_chart_drawer_is_core_and_imports_no_room(graph):
    # the Rubin and ALS reports and the dashboard all draw with it: any import of a room would tie them together
    assert room("facility_data.charts") == "core" and graph["facility_data.charts"] == set()
    users = ("facility_data.rubin.report", "facility_data.als.reconcile", "facility_data.ui.dashboard")
    assert all("facility_data.charts" in graph[m] for m in users)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_a_cycle_through_function_level_and_relative_imports_is_found(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "def f():\n    from pkg.sub import b\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/b.py": "from . import c\n",
        "pkg/sub/c.py": "import pkg.a as a\n",
        "pkg/d.py": "from pkg.a import f\n",
    })
    graph = import_graph(tmp_path, "pkg")
    assert cycles(graph) == {frozenset({"pkg.a", "pkg.sub.b", "pkg.sub.c"})}
    assert graph["pkg.d"] == {"pkg.a"}


def test_an_import_chain_without_a_cycle_passes(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "from pkg import a\n",
        "pkg/a.py": "from pkg import b\n",
        "pkg/b.py": "import os\nfrom os import path\n",
    })
    assert cycles(import_graph(tmp_path, "pkg")) == set()
