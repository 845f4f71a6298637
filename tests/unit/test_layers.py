"""The package's layers: imports only go down, and no two modules import each other (at any depth)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[2] / "lre_pl"

#: Bottom to top. A module may import its own floor and the floors below it, never one above.
FLOORS = (
    ("lre_pl", "lre_pl.errors", "lre_pl.files", "lre_pl.class_paths"),
    ("lre_pl.dataset",),
    ("lre_pl.protocol",),
    ("lre_pl.lm",),
    ("lre_pl.lre",),
    ("lre_pl.evaluation",),
    ("lre_pl.lightning",),
    ("lre_pl.experiments",),
    ("lre_pl.api",),
    ("lre_pl.cli",),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor_of(module: str) -> int:
    """The floor of a module: the longest matching prefix wins (``lre_pl`` itself is the base)."""
    best, floor = -1, None
    for index, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, floor = len(prefix), index
    return floor


def imports_of(path: Path) -> set[str]:
    """Every lre_pl module that ``path`` imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("lre_pl")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lre_pl"):
            found.add(node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) for path in sorted(PACKAGE.rglob("*.py"))}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{module} (floor {floor_of(module)}) imports {target} (floor {floor_of(target)})"
        for module, targets in graph.items()
        for target in sorted(targets)
        if floor_of(target) > floor_of(module)
    ]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles between distinct modules (a package's ``__init__`` importing its own modules is not
    one: ``lre_pl.x`` importing ``lre_pl.x.y`` is how a package serves its names)."""
    edges = {
        module: {t for t in targets if t in graph and t != module and not t.startswith(module + ".")}
        for module, targets in graph.items()
    }
    found, state = [], {}

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges[module]):
            if state.get(target) == "open":
                found.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target, [*stack, target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    return found


def test_every_module_has_a_floor():
    assert [module for module in import_graph() if floor_of(module) is None] == []


def test_imports_only_go_down():
    assert upward_imports(import_graph()) == []


def test_no_two_modules_import_each_other():
    assert cycles(import_graph()) == []


def test_the_checks_catch_an_upward_import_and_a_cycle():
    graph = {
        "lre_pl.lre.bundle": {"lre_pl.evaluation.metrics"},
        "lre_pl.evaluation.metrics": set(),
        "lre_pl.experiments.sweep.runner": {"lre_pl.experiments.sweep.report"},
        "lre_pl.experiments.sweep.report": {"lre_pl.experiments.sweep.runner"},
    }
    assert upward_imports(graph) == [
        "lre_pl.lre.bundle (floor 4) imports lre_pl.evaluation.metrics (floor 5)"
    ]
    assert cycles(graph) == [
        [
            "lre_pl.experiments.sweep.report",
            "lre_pl.experiments.sweep.runner",
            "lre_pl.experiments.sweep.report",
        ]
    ]


@pytest.mark.parametrize(
    "old, new",
    [("lre_pl.estimators", "lre_pl.lre.estimators"), ("lre_pl.data", "lre_pl.lightning.datamodule")],
)
def test_the_flat_module_paths_of_0_1_import_the_modules_of_today(old, new):
    import importlib

    assert importlib.import_module(old) is importlib.import_module(new)
