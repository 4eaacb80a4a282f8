"""The package's layers point one way, with no import circles (imports inside functions count too).

    config, errors, atomic, device, cache, cpu   (foundation)
    data                             stores, readers, batching
    nn                               tensor-level pieces: losses, precision, optimizers, recurrent runners
    models                           built from nn
    measure, memory (the planner)    memory never imports the engine or the CLI
    engine                           the training loop and the tasks
    api (seqfit.plan/estimate/train), cli
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "seqfit"

# What each layer may import (besides itself and the foundation).
ALLOWED = {
    "data": set(),
    "nn": set(),
    "models": {"data", "nn"},
    "measure": {"data", "nn", "models"},
    "memory": {"data", "nn", "models", "measure"},
    "engine": {"data", "nn", "models", "measure", "memory"},
    "api": {"data", "nn", "models", "measure", "memory", "engine"},
    "cli": {"data", "nn", "models", "measure", "memory", "engine", "api"},
}
FOUNDATION = {"config", "errors", "atomic", "device", "version", "cache", "cpu"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    return imports_in(path.read_text(), package)


def imports_in(source: str, package: str) -> set[str]:
    """Every seqfit module a file of ``package`` imports, at any depth of the file."""
    tree = ast.parse(source)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("seqfit")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.startswith("seqfit"):
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}  # `from seqfit.x import module`
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return "root"  # the package's face (lazy public API) and `python -m seqfit`
    return parts[1] if parts[1] not in FOUNDATION else "foundation"


def test_layers_point_one_way():
    wrong = []
    for module, targets in graph().items():
        here = layer(module)
        if here in ("root", "foundation"):
            continue
        for target in targets:
            there = layer(target)
            if there not in ("foundation", here) and there not in ALLOWED.get(here, set()):
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_foundation_imports_no_layer():
    wrong = [f"{m} -> {t}" for m, ts in graph().items() if layer(m) == "foundation"
             for t in ts if layer(t) not in ("foundation",)]
    assert not wrong, wrong


def test_no_import_circles():
    edges = graph()
    # a package's __init__ re-exporting its own modules is no circle of meaning: leave those edges out
    edges = {m: {t for t in ts if not (t.startswith(m + ".") and (SRC.parent / m.replace(".", "/")).is_dir())}
             for m, ts in edges.items()}
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    assert not cycles, f"import circles: {cycles}"


@pytest.mark.parametrize("source, expected", [
    ("from seqfit.engine.loop import train\n", {"seqfit.engine.loop", "seqfit.engine.loop.train"}),
    ("def f():\n    from seqfit.cli import main\n", {"seqfit.cli", "seqfit.cli.main"}),
    ("from .plan import x\n", {"seqfit.memory.plan", "seqfit.memory.plan.x"}),
])
def test_the_import_reader_sees_imports_inside_functions(source, expected):
    assert imports_in(source, "seqfit.memory") == expected
