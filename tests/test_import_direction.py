"""The package's layers import one way, bottom to top, and no two subpackages import each other.

Every module under ``src/underbudget`` is parsed (nothing is imported) and mapped to a layer
by the longest matching prefix in :data:`LAYERS`. A module-level import may go to the same
layer or below, never above; over all imports (those inside functions too), the subpackages
form no cycle. An internal import inside a function is made only for an optional dependency
(:data:`FUNCTION_ALLOWED`). :data:`ALLOWED` and :data:`CYCLE_ALLOWED` would name edges that
still break the rules, each with its reason; they are empty.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "underbudget"

#: layer of each module prefix (the longest matching prefix wins); see docs/architecture.md
LAYERS: dict[str, int] = {
    # 0: no torch-level ideas, usable by everything
    "underbudget.errors": 0,
    "underbudget.utils": 0,
    "underbudget.version": 0,
    "underbudget.callbacks": 0,
    "underbudget.sections": 0,
    "underbudget.config": 0,
    "underbudget.config_sources": 0,
    "underbudget.schedule_registry": 0,
    # 1: libraries on any nn.Module, the training loop, the run directory
    "underbudget.data": 1,
    "underbudget.models": 1,
    "underbudget.metrics": 1,
    "underbudget.quant": 1,
    "underbudget.sparsity": 1,
    "underbudget.transfer": 1,
    "underbudget.deploy": 1,
    "underbudget.train": 1,
    "underbudget.track": 1,
    "underbudget.runs": 1,  # the run store, checkpoint trees, environment records, locks,
    # failure records, what a run deployed (runs.deployed)
    # 2: reading runs back (aggregation, tables, plots) and checking a config before it runs
    "underbudget.report": 2,
    "underbudget.runs.preflight": 2,
    "underbudget.runs.architecture": 2,  # reads the data description from preflight
    # 3: what an experiment does: methods, their stages, exported models
    "underbudget.methods": 3,
    "underbudget.stages": 3,
    "underbudget.export": 3,
    # 4: a config compiled into a graph of tasks and run by an executor
    "underbudget.experiment": 4,
    # 5: entry points (the package itself imports the methods so that they register)
    "underbudget": 5,
    "underbudget.cli": 5,
    "underbudget.__main__": 5,
}

#: (importing module, imported module): the module-level imports still going up, and why
ALLOWED: dict[tuple[str, str], str] = {
}

#: subpackage edges left out of the cycle check (imports inside functions included there)
CYCLE_ALLOWED: dict[tuple[str, str], str] = {
}


#: (importing module, imported module): internal imports made inside a function, and why
#: (only for optional dependencies)
FUNCTION_ALLOWED: dict[tuple[str, str], str] = {
    ("underbudget.experiment.executors.slurm", "underbudget.experiment.executors.slurm_job"):
        "slurm_job imports submitit, an optional dependency, once it is known present",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


def layer_of(name: str) -> int:
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise AssertionError(f"{name} has no layer: add its prefix to LAYERS")


def subpackage(name: str) -> str:
    return ".".join(name.split(".")[:2])


def imports(path: Path) -> list[tuple[str, bool]]:
    """``(imported module, inside a function)`` for each internal import of the file."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            inside.update(id(n) for n in ast.walk(node) if n is not node)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "underbudget"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == "underbudget":
                module = node.module
            else:
                continue
            # ``from pkg import sub`` imports the submodule, not the package
            names = [f"{module}.{a.name}" if is_module(f"{module}.{a.name}") else module
                     for a in node.names]
        else:
            continue
        out += [(name, id(node) in inside) for name in names]
    return out


FILES = sorted(PACKAGE.rglob("*.py"))
EDGES = {module_name(p): imports(p) for p in FILES}


def upward_imports() -> list[str]:
    found = []
    for me, targets in EDGES.items():
        for target, in_function in targets:
            if in_function or (me, target) in ALLOWED:
                continue
            if layer_of(target) > layer_of(me):
                found.append(f"{me} (layer {layer_of(me)}) imports {target} "
                             f"(layer {layer_of(target)})")
    return sorted(set(found))


def subpackage_cycles() -> list[tuple[str, str]]:
    graph: dict[str, set[str]] = {}
    for me, targets in EDGES.items():
        for target, _ in targets:
            a, b = subpackage(me), subpackage(target)
            if a != b and (a, b) not in CYCLE_ALLOWED:
                graph.setdefault(a, set()).add(b)

    def reach(start: str) -> set[str]:
        seen, stack = set(), [start]
        while stack:
            for nxt in graph.get(stack.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return seen

    return sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if a in reach(b)})


def test_every_module_has_a_layer():
    for name in EDGES:
        layer_of(name)


def test_module_level_imports_never_go_up():
    assert upward_imports() == []


def test_no_two_subpackages_import_each_other():
    assert subpackage_cycles() == []


def test_imports_inside_functions_only_for_optional_dependencies():
    inside = sorted({(me, t) for me, ts in EDGES.items() for t, within in ts if within})
    assert [e for e in inside if e not in FUNCTION_ALLOWED] == []


def test_allowed_edges_still_exist():
    """An allowance whose import is gone is removed from the lists (an allowance for a module
    not in this tree is left alone)."""
    module_edges = {(me, t) for me, ts in EDGES.items() for t, inside in ts if not inside}
    package_edges = {(subpackage(me), subpackage(t)) for me, ts in EDGES.items() for t, _ in ts}
    assert [e for e in ALLOWED if e[0] in EDGES and e not in module_edges] == []
    assert [e for e in CYCLE_ALLOWED if e not in package_edges] == []
    function_edges = {(me, t) for me, ts in EDGES.items() for t, inside in ts if inside}
    assert [e for e in FUNCTION_ALLOWED if e not in function_edges] == []


@pytest.mark.parametrize("bad", [
    ("underbudget.sparsity.mask", "underbudget.methods.registry"),
    ("underbudget.config", "underbudget.methods.registry"),
])
def test_an_upward_import_is_caught(bad):
    me, target = bad
    EDGES.setdefault(me, []).append((target, False))
    try:
        assert any(line.startswith(f"{me} ") and target in line for line in upward_imports())
    finally:
        EDGES[me].remove((target, False))
