"""The package's layers: the math core stays plain torch + SciPy (importing it must not import Lightning), no two
modules of ``mgd_lightning`` import each other (directly or around a circle), and no module imports one of a layer
above its own.

Layers, bottom to top (:data:`LAYERS`; :data:`ALLOWED` says which layers each may import):

math (matching, reduction, losses) -> support (metrics, checkpoints, _lightning, plotting) -> blocks (models, data,
distillers, tasks) -> distill -> experiments -> demos -> commands (and the deprecated modules at the package's top,
which re-export commands') -> the package ``__init__``.

Imports are read with :mod:`ast` from every ``.py`` file of the package: those at module level and those inside
functions (lazy ones) alike, relative or absolute, and ``importlib.import_module("mgd_lightning...")`` with a
literal name. Allowed exception, by construction: the package ``__init__`` loads the Lightning layer lazily through
its ``_LAZY`` table (names, not import statements), and it is the top layer, which nothing inside the package
imports.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import mgd_lightning

PACKAGE = "mgd_lightning"
ROOT = Path(mgd_lightning.__file__).resolve().parent.parent

#: (layer, module-name prefixes), bottom to top; a prefix ``p`` holds ``p`` and ``p.*``
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("math", ("mgd_lightning.matching", "mgd_lightning.reduction", "mgd_lightning.losses",
              "mgd_lightning.margin_estimate")),
    ("support", ("mgd_lightning.metrics", "mgd_lightning.checkpoints", "mgd_lightning._lightning",
                 "mgd_lightning.plotting")),
    ("blocks", ("mgd_lightning.models", "mgd_lightning.data", "mgd_lightning.distillers", "mgd_lightning.tasks")),
    ("distill", ("mgd_lightning.distill",)),
    ("experiments", ("mgd_lightning.experiments",)),
    ("demos", ("mgd_lightning.demos",)),
    # the deprecated top-level modules are shims over commands/: they stand with it
    ("commands", ("mgd_lightning.commands", "mgd_lightning.cli", "mgd_lightning.demo", "mgd_lightning.demo_detection",
                  "mgd_lightning.taps_command", "mgd_lightning.export", "mgd_lightning.study",
                  "mgd_lightning.compare")),
    ("package", ("mgd_lightning",)),
)
_ORDER = [name for name, _ in LAYERS]
#: layer -> the layers its modules may import (its own and every one below it)
ALLOWED: dict[str, frozenset[str]] = {name: frozenset(_ORDER[: i + 1]) for i, name in enumerate(_ORDER)}


@dataclass(frozen=True)
class Edge:
    """One import of a package module by another: ``source`` imports ``target`` at ``path:line`` (``code``)."""

    source: str
    target: str
    path: str
    line: int
    code: str

    def where(self) -> str:
        return f"{self.path}:{self.line}: {self.code}"


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name: the longest prefix of :data:`LAYERS` that holds it."""
    best, length = None, -1
    for name, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > length:
                best, length = name, len(prefix)
    return best


def package_modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of the package under ``root`` (the folder that holds ``mgd_lightning/``)."""
    modules = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module name of a ``from ... import`` in ``module`` (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(node: ast.AST, module: str, is_package: bool, modules: dict[str, Path]) -> list[str]:
    """The package modules an import node (or an ``importlib.import_module("...")`` call) brings in."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = _absolute(module, is_package, node)
        # `from pkg import name`: the submodule pkg.name where there is one, else pkg itself
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module":
        if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            return [node.args[0].value]
    return []


def import_edges(root: Path = ROOT) -> list[Edge]:
    """Every import of a package module by a package module under ``root``, module level and inside functions."""
    modules = package_modules(root)
    edges = []
    for module, path in modules.items():
        source = path.read_text()
        tree = ast.parse(source, filename=str(path))
        for node in ast.walk(tree):
            for target in _targets(node, module, path.name == "__init__.py", modules):
                if target == PACKAGE or target.startswith(PACKAGE + "."):
                    code = " ".join((ast.get_source_segment(source, node) or ast.unparse(node)).split())
                    edges.append(Edge(module, target, str(path.relative_to(root)), node.lineno, code))
    return edges


def import_cycles(edges: list[Edge]) -> list[list[Edge]]:
    """The import circles among the modules: for each strongly connected set of modules, one circle through it,
    as its edges (Tarjan's algorithm, then a walk inside the set)."""
    graph: dict[str, dict[str, Edge]] = {}
    for edge in edges:
        if edge.source != edge.target:
            graph.setdefault(edge.source, {}).setdefault(edge.target, edge)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    circles = []
    for component in components:
        members, start = set(component), component[0]
        circle, node, seen = [], start, set()
        while node not in seen:  # every member reaches the others inside the set: walk until a module repeats
            seen.add(node)
            edge = next(e for t, e in sorted(graph[node].items()) if t in members)
            circle.append(edge)
            node = edge.target
        circles.append(circle[[e.source for e in circle].index(node):])
    return circles


def layer_violations(edges: list[Edge]) -> list[str]:
    """One line per import of a module of a layer above the importer's (or of a module in no layer)."""
    problems = []
    for edge in edges:
        source, target = layer_of(edge.source), layer_of(edge.target)
        if source is None or target is None:
            problems.append(f"{edge.where()}: {edge.source if source is None else edge.target} is in no layer of "
                            "LAYERS (tests/test_layering.py): add it")
        elif target not in ALLOWED[source]:
            allowed = ", ".join(n for n in _ORDER if n in ALLOWED[source])
            problems.append(f"{edge.where()}: layer {source} ({edge.source}) imports layer {target} "
                            f"({edge.target}); it may import only {allowed}")
    return problems


@pytest.mark.parametrize(
    "module",
    ["mgd_lightning", "mgd_lightning.matching", "mgd_lightning.reduction", "mgd_lightning.losses",
     "mgd_lightning.plotting"],
)
def test_math_core_does_not_import_lightning(module):
    code = (
        f"import sys, {module}; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pytorch_lightning', 'lightning')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in package_modules(ROOT) if layer_of(m) is None)
    assert not unplaced, f"modules in no layer of LAYERS (tests/test_layering.py): {unplaced}"


def test_imports_are_read():
    """The reader sees the imports it must judge: a lazy one inside a function, a relative one, and a
    ``from package import submodule``."""
    edges = {(e.source, e.target) for e in import_edges()}
    assert ("mgd_lightning.commands.main", "mgd_lightning.commands.cli") in edges  # inside a function
    assert ("mgd_lightning.distill.callback", "mgd_lightning.distill.step_schedule") in edges  # relative
    assert ("mgd_lightning.commands.study", "mgd_lightning.experiments.scratch") in edges  # from pkg import module


def test_no_import_cycles():
    circles = import_cycles(import_edges())
    lines = [" -> ".join([*(e.source for e in c), c[0].source]) + "\n    " + "\n    ".join(e.where() for e in c)
             for c in circles]
    assert not circles, "import circles among mgd_lightning's modules:\n" + "\n".join(lines)


def test_no_import_runs_up_the_layers():
    problems = layer_violations(import_edges())
    assert not problems, "imports from a lower layer up:\n" + "\n".join(problems)


def test_the_package_init_loads_only_lower_layers_lazily():
    """The allowed exception: ``mgd_lightning.__init__``'s ``_LAZY`` names modules (no import statement); they are
    modules of the package, below the package's top."""
    modules = package_modules(ROOT)
    for name, module in mgd_lightning._LAZY.items():
        assert module in modules, f"_LAZY[{name!r}] = {module!r} is no module of the package"
        assert layer_of(module) not in (None, "package"), f"_LAZY[{name!r}] = {module!r}"
