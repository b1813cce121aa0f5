"""The package's import graph: no cycles (function-level imports included), adapter I/O free of model
code, one module that builds models, and a top level of a few loose modules."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "casa_adapter"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
NEEDS = {"casa_adapter.eval.lmms.model": "lmms_eval"}
"""Modules that import an optional extra's package at import time (`pip install 'casa-adapter[lmms]'`)."""


def _resolve(target: str, name: str | None) -> str | None:
    """The package module that `from target import name` (or `import target`) reaches."""
    if name is not None and f"{target}.{name}" in MODULES:
        return f"{target}.{name}"
    return target if target in MODULES else None


def imports_of(module: str) -> set[str]:
    """Package modules that `module` imports anywhere in its code, lazy imports and `import_module("...")` included."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(filter(None, (_resolve(a.name, None) for a in node.names)))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.update(filter(None, (_resolve(base, a.name) for a in node.names)))
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.update(filter(None, [_resolve(node.args[0].value, None)]))
    found.discard(module)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_walker_sees_lazy_imports_and_cycles():
    assert "casa_adapter.training.module" in GRAPH["casa_adapter"]  # imported inside __getattr__
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_adapter_io_imports_no_model_code():
    model_code = {"casa_adapter.fusion", "casa_adapter.casa", "casa_adapter.vision", "casa_adapter.training"}
    for module in (m for m in MODULES if m.startswith("casa_adapter.adapters")):
        reached = {m for m in reachable(module) if any(m == p or m.startswith(p + ".") for p in model_code)}
        assert not reached, f"{module} reaches model code: {sorted(reached)}"


def test_one_module_builds_models():
    builders = {
        m
        for m in MODULES
        if m != "casa_adapter.fusion.build"
        and {"casa_adapter.fusion.casa_model", "casa_adapter.fusion.insertion"} & GRAPH[m]
        and m.startswith(("casa_adapter.training", "casa_adapter.eval", "casa_adapter.bench", "casa_adapter.adapters"))
    }
    assert not builders, f"build models through casa_adapter.fusion.build, not in {sorted(builders)}"


def test_top_level_has_few_loose_modules():
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(loose) <= 8, loose


def test_every_module_opens_with_a_docstring():
    missing = [m for m, p in MODULES.items() if ast.get_docstring(ast.parse(p.read_text())) is None]
    assert not missing, missing


def test_docstring_examples_run():
    """Every `>>>` example in the package's docstrings runs and shows what it says (offline, tiny models)."""
    import doctest
    import importlib
    import importlib.util

    failures, attempted = [], 0
    for name in sorted(MODULES):
        if name in NEEDS and importlib.util.find_spec(NEEDS[name]) is None:
            continue  # an optional extra's module, without the extra installed
        result = doctest.testmod(
            importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False, report=False
        )
        attempted += result.attempted
        if result.failed:
            failures.append(name)
    assert not failures, failures
    assert attempted > 50  # the examples were found, not skipped
