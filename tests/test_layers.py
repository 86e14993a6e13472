"""bil's modules import one way: the layer rule and "no import cycles", read from the sources (ast).

Layers, bottom first (a layer may import only the layers listed for it, and itself):

* ``core``     (``bil/core/``: source spans, diagnostics, the typed IR, the version): nothing
* ``stdlib``   (``bil/stdlib/``): core
* ``grammar``  (``bil/grammar/``): core
* ``runtime``  (``bil/runtime/``: solvers, oracles, outer loops, run outputs): core, stdlib.
  The runtime solves a :class:`bil.runtime.lowered.Lowered` problem and knows nothing of
  specs: it imports nothing of the grammar or the compiler.
* ``compiler`` (``bil/compiler/``): core, stdlib, grammar, and the runtime from
  ``bil.compiler.lower`` only (lowering targets the runtime's ``Lowered``; checking a spec
  never loads the runtime)
* ``program``  (``bil/__init__.py``, ``bil/api.py``, ``bil/program.py``, ``bil/diagnosis/``: diagnoses that
  read the spec): everything below
* ``run``      (``bil/run.py``: the ``bil run`` lifecycle): everything below
* ``cli``      (``bil/cli.py``, ``bil/__main__.py``): everything

A function-local import counts like a module-level one: a lazy import speeds start-up (JAX,
sympy, matplotlib, the runtime behind ``bil check``) but hides no dependency, so it may
neither go up a layer nor close a cycle.  Imports under ``if TYPE_CHECKING:`` count too.  A
package's ``__init__`` running before its submodules is Python's mechanics, not an edge
(an ``__init__`` may re-export its own submodules).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1] / "bil"

#: layer -> (module prefixes, the other layers it may import)
LAYERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "core": (("bil.core",), ()),
    "stdlib": (("bil.stdlib",), ("core",)),
    "grammar": (("bil.grammar",), ("core",)),
    "runtime": (("bil.runtime",), ("core", "stdlib")),
    "compiler": (("bil.compiler",), ("core", "stdlib", "grammar", "runtime")),
    "program": (("bil", "bil.api", "bil.program", "bil.diagnosis"), ("core", "stdlib", "grammar", "runtime", "compiler")),
    "run": (("bil.run",), ("core", "stdlib", "grammar", "runtime", "compiler", "program")),
    "cli": (("bil.cli", "bil.__main__"), ("core", "stdlib", "grammar", "runtime", "compiler", "program", "run")),
}
#: the one compiler module that may import the runtime: lowering builds the runtime's problem
LOWERING = "bil.compiler.lower"


def _modules() -> dict[str, Path]:
    """Module name -> file, for every module of the package."""
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The bil modules an import statement names (``from pkg import sub`` names ``pkg.sub``)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module if path.name == "__init__.py" else module.rpartition(".")[0]
            parent = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(parent + ([node.module] if node.module else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    return [n for n in names if n == "bil" or n.startswith("bil.")]


@functools.cache
def imports() -> tuple[tuple[str, str, str], ...]:
    """``(importer, imported, "FILE:LINE")`` for every import of a bil module, at any depth."""
    out = []
    for module, path in sorted(MODULES.items()):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                where = f"{path.relative_to(ROOT.parent)}:{node.lineno}"
                out += [(module, target, where) for target in _targets(module, path, node)]
    return tuple(out)


def layer_of(module: str) -> str | None:
    """The layer whose longest prefix matches ``module`` (``bil`` itself only exactly)."""
    best = None
    for layer, (prefixes, _) in LAYERS.items():
        for p in prefixes:
            if module == p or (p != "bil" and module.startswith(p + ".")):
                if best is None or len(p) > best[1]:
                    best = (layer, len(p))
    return best and best[0]


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in MODULES if layer_of(m) is None)
    assert not unplaced, f"place these modules in a layer of tests/test_layers.py: {unplaced}"


def test_imports_go_down_the_layers():
    bad = []
    for src, dst, where in imports():
        a, b = layer_of(src), layer_of(dst)
        if a != b and b not in LAYERS[a][1]:
            bad.append(f"{where}: {src} ({a}) imports {dst} ({b})")
        elif a == "compiler" and b == "runtime" and src != LOWERING:
            bad.append(f"{where}: {src} imports {dst}: only {LOWERING} may import the runtime")
    assert not bad, "imports against the layer order (tests/test_layers.py docstring):\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = nx.DiGraph()
    where = {}
    for src, dst, at in imports():
        if src != dst:
            graph.add_edge(src, dst)
            where.setdefault((src, dst), at)
    cycles = []
    for component in nx.strongly_connected_components(graph):
        if len(component) > 1:
            cycle = nx.find_cycle(graph.subgraph(component))
            cycles.append(" -> ".join(f"{u} ({where[u, v]})" for u, v in cycle) + f" -> {cycle[0][0]}")
    assert not cycles, "import cycles (function-local imports count):\n" + "\n".join(cycles)


def test_the_checker_sees_imports():
    """The walk finds imports of every kind (so an empty result above means something)."""
    found = {(src, dst) for src, dst, _ in imports()}
    assert ("bil.compiler.lower", "bil.runtime.lowered") in found       # module level, from-import
    assert ("bil.runtime.quadratic", "bil.runtime.solve_result") in found  # relative
    assert ("bil.program", "bil.runtime.engine") in found              # function-local
    assert layer_of("bil") == "program" and layer_of("bil.compiler.passes.shapes") == "compiler"
