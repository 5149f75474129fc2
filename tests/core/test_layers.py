"""mixcore's import structure: no cycles anywhere, and import-linter's contracts cover every module.

`make lint` runs the contracts themselves (`lint-imports`); these tests check what they cannot:
that no module imports itself back through others (at module level, not only between sibling
packages), that the contract package imports nothing of mixcore outside it (the top package
included), and that the contracts' hand-written lists name every top-level module, so a new one
has to be placed.
"""

from __future__ import annotations

import pkgutil
import tomllib
from pathlib import Path

import grimp
import pytest

import mixcore

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    # Imports inside functions and under TYPE_CHECKING are in the graph too.
    return grimp.build_graph("mixcore", cache_dir=None)


@pytest.fixture(scope="module")
def contracts() -> dict[str, dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def top_level_modules() -> set[str]:
    return {f"mixcore.{m.name}" for m in pkgutil.iter_modules(mixcore.__path__)}


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan), and self-imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1 or module in graph.find_modules_directly_imported_by(module):
                groups.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return groups


def test_mixcore_has_no_import_cycle(graph):
    cycles = import_cycles(graph)
    details = [
        [
            f"{a} -> {b}"
            for a in group
            for b in sorted(graph.find_modules_directly_imported_by(a))
            if b in group
        ]
        for group in cycles
    ]
    assert cycles == [], details


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for module in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(module)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.c")
    assert import_cycles(graph) == []
    graph.add_import(importer="p.c", imported="p.a")
    assert import_cycles(graph) == [["p.a", "p.b", "p.c"]]


def test_the_contract_package_imports_only_itself(graph):
    outside = {
        (module, imported)
        for module in graph.find_descendants("mixcore.api") | {"mixcore.api"}
        for imported in graph.find_modules_directly_imported_by(module)
        if imported != "mixcore.api" and not imported.startswith("mixcore.api.")
    }
    assert outside == set()


def test_the_layers_contract_places_every_module(contracts):
    layers = contracts["layers"]
    assert layers["containers"] == ["mixcore"] and layers["exhaustive"] is True
    placed = {
        f"mixcore.{name.strip()}"
        for layer in layers["layers"]
        for name in layer.replace(":", "|").split("|")
    }
    assert placed == top_level_modules()
    assert layers["layers"][-2:] == ["kit", "api"]


def test_the_forbidden_lists_name_every_other_module(contracts):
    public = {"mixcore.api", "mixcore.kit", "mixcore.testing"}
    assert set(contracts["plugins"]["forbidden_modules"]) == top_level_modules() - public
    assert set(contracts["api"]["forbidden_modules"]) == top_level_modules() - {"mixcore.api"}


def test_every_first_party_plugin_is_held_to_the_plugin_contract(contracts):
    sources = set(contracts["plugins"]["source_modules"])
    packages = {
        path.parent.name
        for path in [*ROOT.glob("plugins/*/*/plugin.py"), *ROOT.glob("examples/*/*/plugin.py")]
    }
    assert packages and packages == sources
