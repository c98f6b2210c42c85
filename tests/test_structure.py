"""The package's plan, read from its imports: shared layers below the stages, one package per
stage named as its rule file, stages that meet only through each other's package, and no import
cycle, so every module can be read, and changed, on its own terms, below the modules that use it.
docs/architecture.md draws the same plan."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
RULES = Path(__file__).resolve().parents[1] / "workflow" / "rules"
# The shared layers, each with the layers it may import (core imports none of nadir's).
LAYERS = {
    "core": set(),
    "raster": {"core"},
    "storage": {"core"},
    "datasets": {"core"},
    "protocols": {"core", "datasets"},
    "config": {"core", "raster"},
}
STAGES = {"fetch", "index", "chip", "coco", "train", "evaluate", "predict", "compare", "report"}
KUBERNETES = "snakemake_executor_plugin_kubernetes_pods"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The modules of `modules` that `path` imports, at the top or inside a function.

    `from package import name` counts as importing `package.name` when that is a module, and
    the package itself.
    """
    own = module_name(path)
    package = (own if path.name == "__init__.py" else own.rpartition(".")[0]).split(".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from . import x` is the package itself
                parent = package[:len(package) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    found.discard(own)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    modules = set(files)
    return {name: imported_modules(path, modules) for name, path in files.items()}


GRAPH = import_graph()


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def part_of(module: str) -> str | None:
    """The layer or stage a module of nadir belongs to (`nadir.train.loop` -> `train`); None
    for the package itself and its command line."""
    parts = module.split(".")
    return parts[1] if parts[0] == "nadir" and len(parts) > 1 and parts[1] in {
        *LAYERS, *STAGES} else None


def test_the_walk_sees_imports_at_the_top_and_inside_functions():
    assert "nadir.raster.windows" in GRAPH["nadir.chip.shard"]  # at the top
    assert "nadir.train.loop" in GRAPH["nadir.train"]  # inside a function
    assert "nadir.config.reference" in GRAPH["nadir.__main__"]
    every_part = {part_of(m) for m in GRAPH} - {None}
    assert every_part == {*LAYERS, *STAGES}


def test_src_has_no_import_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def wrong_imports(graph: dict[str, set[str]], allowed) -> list[str]:
    """`module -> imported` for every import of nadir's that `allowed(part, imported)` refuses,
    `part` being the importing module's layer or stage."""
    return sorted(f"{module} -> {imported}" for module, imports in graph.items()
                  for imported in imports
                  if part_of(module) and not allowed(part_of(module), imported))


def layer_allows(part: str, imported: str) -> bool:
    """core imports nothing of nadir's; no layer imports a stage, or a layer beside or above
    it. (`nadir` itself holds only the version.)"""
    return part not in LAYERS or not imported.startswith("nadir.") or \
        part_of(imported) in {part, *LAYERS[part]}


def stage_allows(part: str, imported: str) -> bool:
    """A stage may call another stage's public names (its package's __init__), never reach
    into its modules."""
    other = part_of(imported)
    return part not in STAGES or imported == "nadir" or other in LAYERS or other == part \
        or imported == f"nadir.{other}"


def test_shared_layers_import_only_the_layers_below_them():
    assert wrong_imports(GRAPH, layer_allows) == []


def test_stages_use_another_stage_only_through_its_package():
    assert wrong_imports(GRAPH, stage_allows) == []


def test_stages_meet_without_a_cycle():
    """Stage to stage, through the packages, the arrows run one way."""
    stages = {stage: {part_of(imported) for module, imports in GRAPH.items()
                      if part_of(module) == stage for imported in imports} & STAGES - {stage}
              for stage in STAGES}
    assert find_cycle(stages) is None


def test_the_kubernetes_package_imports_nothing_of_the_stages():
    imported = {m for module, imports in GRAPH.items() if module.startswith(KUBERNETES)
                for m in imports if m.startswith("nadir")}
    assert imported and {part_of(m) for m in imported} <= set(LAYERS)


def test_each_stage_package_is_named_as_its_rule_file():
    """workflow/rules/<stage>.smk and src/nadir/<stage>/, one to one (common.smk is shared)."""
    rule_files = {p.stem for p in RULES.glob("*.smk")} - {"common"}
    packages = {p.parent.name for p in (SRC / "nadir").glob("*/__init__.py")} - set(LAYERS)
    assert rule_files == packages == STAGES


@pytest.mark.parametrize("graph, allowed, found", [
    ({"nadir.core.a": {"nadir.raster.b"}}, layer_allows, "nadir.core.a -> nadir.raster.b"),
    ({"nadir.raster.a": {"nadir.chip"}}, layer_allows, "nadir.raster.a -> nadir.chip"),
    ({"nadir.datasets.a": {"nadir.protocols.b"}}, layer_allows,
     "nadir.datasets.a -> nadir.protocols.b"),
    ({"nadir.report.a": {"nadir.compare.b"}}, stage_allows, "nadir.report.a -> nadir.compare.b"),
])
def test_the_rules_find_an_import_that_breaks_them(graph, allowed, found):
    assert wrong_imports(graph, allowed) == [found]
    assert wrong_imports({"nadir.report.a": {"nadir.compare", "nadir.core.b"}}, allowed) == []
