"""The import graph stays layered: no module imports from a layer above its own, and no
two modules import each other, directly or round a loop (lazy imports inside functions
count too: a loop there is a loop for whoever reads the code)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "qfleet"

LAYERS = [
    # the vocabulary: config, errors, the env and network makers, what crosses processes
    {"errors", "presets", "config", "configref", "devices", "transitions", "stats",
     "atari_scores", "video", "envs", "networks"},
    {"runs"},  # what a run writes and reads back
    {"learner"},  # the core, each with its Ray worker: the learner, then the actors
    {"actors"},  # (their worker sends chunks to the learner's and reads its reply)
    {"evaluation"},
    {"driver"},  # one run: placement, supervision, the record, reporting
    {"api", "sweep", "bench", "cli", "clidoc"},  # what people call
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every qfleet module `path` imports, wherever in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("qfleet.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.startswith("qfleet"):
            for alias in node.names:  # `from qfleet.x import y`: y may be a module
                sub = f"{node.module}.{alias.name}"
                found.add(sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists()
                          or (PACKAGE.parent / sub.replace(".", "/")).is_dir() else node.module)
    return found - {"qfleet"}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    # qfleet/__init__.py is the lazy facade onto qfleet.api: the top, importing nothing else.
    return {name: imports(path) & modules.keys()
            for name, path in modules.items() if name != "qfleet"}


def layer(module: str) -> int:
    top = module.split(".")[1]
    assert top in RANK, f"{module}: in no layer of tests/test_layers.py; place it there"
    return RANK[top]


def test_no_module_imports_from_a_layer_above_its_own():
    upward = sorted(f"{a} -> {b}" for a, deps in graph().items() for b in deps
                    if layer(b) > layer(a))
    assert not upward


def test_the_import_graph_has_no_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*path[path.index(dep):], dep]))
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles


def test_the_checker_sees_an_upward_import(tmp_path):
    """The checks above can fail: a module of the first layer importing the driver is one."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from qfleet.driver.fleet import Fleet\n")
    assert "qfleet.driver.fleet" in imports(bad)
    assert layer("qfleet.driver.fleet") > layer("qfleet.config")
