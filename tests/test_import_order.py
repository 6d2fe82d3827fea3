"""Imports only go down the data path: a module never imports from a layer above its own, and no
packages import each other in a cycle. Every import counts, at the top of a module or inside a function.

The order, lowest first (a layer may import from the layers before it, never after):

    utilities (errors, fileio, inputs, log, options, progress, registry, version)  what every layer shares
    ops                                    the registry: one class per op, all its facets
    ir                                     LayerGraph, weights, cost, the .cnn printer
    frontend                               .cnn text (or an ONNX model) to a LayerGraph
    analysis                               summary, receptive fields, lint advice
    passes                                 the manager, the -O3 search (measurement passed in), rules
    emit                                   ONNX, PyTorch source, DOT
    run                                    reference interpreter, the runtime registry and sessions, timing
    verification                           compare, tolerances, the harness
    precision                              the precision registry: fp32, fp16, int8 (converts emitted models)
    deployment                             the target registry: ONNX files, TensorRT engines, Triton repositories
    pipeline                               the job description (job) and the whole job as functions
    api                                    the public face (cnncomp.load, compile, verify, deploy, serve, ...)
    cli                                    argument parsing and printing, one module per command
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parents[1] / "cnncomp"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("utilities", ("cnncomp.errors", "cnncomp.fileio", "cnncomp.inputs", "cnncomp.log", "cnncomp.options",
                   "cnncomp.progress", "cnncomp.registry", "cnncomp.version")),
    ("ops", ("cnncomp.ops",)),
    ("ir", ("cnncomp.ir",)),
    ("frontend", ("cnncomp.frontend",)),
    ("analysis", ("cnncomp.analysis",)),
    ("passes", ("cnncomp.passes",)),
    ("emit", ("cnncomp.emit",)),
    ("run", ("cnncomp.run",)),
    ("verification", ("cnncomp.verification",)),
    ("precision", ("cnncomp.precision",)),
    ("deployment", ("cnncomp.deployment",)),
    ("pipeline", ("cnncomp.pipeline", "cnncomp.job")),
    ("api", ("cnncomp.api", "cnncomp")),  # the package itself re-exports the API
    ("cli", ("cnncomp.cli", "cnncomp.__main__")),
]

# (importing module, imported module) pairs allowed to go uphill for now, each with its owner and why.
# Remove an entry when its import is gone; the test fails on an entry that no longer matches anything.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def unit_of(module: str) -> str:
    """The layer member (package or top-level module) that holds `module`: the longest matching prefix."""
    members = [m for _, ms in LAYERS for m in ms if module == m or module.startswith(m + ".")]
    assert members, f"{module} belongs to no layer: add it to LAYERS in {__file__}"
    return max(members, key=len)


RANK = {member: rank for rank, (_, members) in enumerate(LAYERS) for member in members}
LAYER_NAME = {member: name for name, members in LAYERS for member in members}


def imports_of(module: str) -> list[tuple[str, int]]:
    """(imported cnncomp module, line) for every import in the module, wherever it stands."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "cnncomp"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "cnncomp":
                continue
            # `from cnncomp.x import y` imports the module cnncomp.x.y when there is one
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in MODULES else base, node.lineno))
    return found


def edges() -> list[tuple[str, str, int]]:
    return [(module, target, line) for module in MODULES for target, line in imports_of(module)]


def test_every_module_belongs_to_a_layer():
    for module in MODULES:
        unit_of(module)


def test_no_import_goes_uphill():
    uphill, used = [], set()
    for module, target, line in edges():
        src, dst = unit_of(module), unit_of(target)
        if RANK[dst] <= RANK[src]:
            continue
        if (module, target) in KNOWN_EXCEPTIONS:
            used.add((module, target))
            continue
        uphill.append(f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}: {module} ({LAYER_NAME[src]}) "
                      f"imports {target} ({LAYER_NAME[dst]})")
    assert not uphill, "imports from a lower layer to a higher one:\n  " + "\n  ".join(uphill)
    stale = set(KNOWN_EXCEPTIONS) - used
    assert not stale, f"known exceptions that no longer occur (remove them): {sorted(stale)}"


def test_no_cycle_between_packages():
    graph = nx.DiGraph()
    for module, target, _ in edges():
        src, dst = unit_of(module), unit_of(target)
        if src != dst and (module, target) not in KNOWN_EXCEPTIONS:
            graph.add_edge(src, dst)
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, "packages that import each other: " + "; ".join(" -> ".join(c + c[:1]) for c in cycles)


# (importing module, imported module): private names imported across packages, to be removed by their owner.
KNOWN_PRIVATE_IMPORTS: dict[tuple[str, str], str] = {}


def test_no_private_name_is_imported_across_packages():
    """`from cnncomp.x import _y` (or from a module `_y`) only inside x's own package."""
    found = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("cnncomp"):
                continue
            names = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
            if any(part.startswith("_") and not part.startswith("__") for part in node.module.split(".")):
                names.append(node.module)
            if not names or unit_of(module) == unit_of(node.module):
                continue
            if (module, node.module) not in KNOWN_PRIVATE_IMPORTS:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {module} imports "
                             f"{', '.join(names)} from {node.module}")
    assert not found, "private names imported across packages:\n  " + "\n  ".join(found)


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    """The walk finds an import inside a function, so a lazy uphill import cannot hide."""
    found = dict(imports_of("cnncomp.pipeline"))
    assert "cnncomp.passes.search" in found  # imported inside optimize()
    assert unit_of("cnncomp.emit.onnx.lower") == "cnncomp.emit" and unit_of("cnncomp") == "cnncomp"
    assert RANK["cnncomp.passes"] < RANK["cnncomp.run"] < RANK["cnncomp.verification"]
