"""The layers of the code (DESIGN.md): imports only point down, no module-level import cycle, and the CLI imports
no heavy library until a verb needs it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src"
FAMILIES = {"tickets", "experts", "pooling", "boosting", "exits", "supernets"}
TOP = {"runs", "cli"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module_level_only: bool) -> set[str]:
    """The ``subnets`` modules ``path`` imports (``from a import b`` counts as ``a.b`` when that is a module); with
    ``module_level_only`` the imports inside functions and ``if TYPE_CHECKING:`` blocks are left out."""
    tree = ast.parse(path.read_text())
    nodes = list(tree.body) if module_level_only else list(ast.walk(tree))
    if module_level_only:  # statements at module level, inside try/if but not inside TYPE_CHECKING or a def
        stack, nodes = list(tree.body), []
        while stack:
            node = stack.pop()
            nodes.append(node)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.If | ast.Try):
                stack += node.body + node.orelse + getattr(node, "finalbody", [])
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("subnets")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("subnets"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                exists = (SRC / Path(*candidate.split("."))).with_suffix(".py").exists() or \
                    (SRC / Path(*candidate.split("."))).is_dir()
                found.add(candidate if exists else node.module)
    return found


MODULES = {_module(p): p for p in sorted(SRC.rglob("*.py"))}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "subnets"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_point_down(module: str) -> None:
    """Core modules import no family and nothing above; a family imports no other family and nothing above;
    in ``runs`` only the kind records (``runs.kinds.*``) import families."""
    layer = _layer(module)
    for target in _imports(MODULES[module], module_level_only=False):
        to = _layer(target)
        if layer in FAMILIES:
            assert to not in TOP and (to not in FAMILIES or to == layer), f"{module} imports {target}"
        elif layer == "runs":
            assert to != "cli", f"{module} imports {target}"
            if to in FAMILIES:
                assert module.startswith("subnets.runs.kinds."), f"{module} imports the family module {target}"
        elif layer not in TOP | {"subnets", "__main__"}:
            assert to not in FAMILIES | TOP, f"core module {module} imports {target}"


def test_no_module_level_import_cycle() -> None:
    graph = {m: {t for t in _imports(p, module_level_only=True) if t in MODULES and t != m}
             for m, p in MODULES.items()}
    # A package's __init__ runs before its modules; importing a submodule imports its package first.
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycle.extend(path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt])
                return True
            if nxt not in state and visit(nxt, path + [node]):
                return True
        state[node] = 2
        return False

    for module in graph:
        if module not in state and visit(module, []):
            break
    assert not cycle, " -> ".join(cycle)


HEAVY = ("torch", "sklearn", "scipy", "matplotlib", "transformers", "pandas")


@pytest.mark.parametrize("code", [
    "import subnets.cli",
    "from subnets.runs.runner import show, table; from subnets.runs.kinds import get_kind; get_kind('lottery')",
    "import subnets.stats, subnets.runs.report",
])
def test_the_cli_imports_no_heavy_library_until_a_verb_needs_it(code: str) -> None:
    """Nor pydantic (0.2 s): ``show`` and ``list`` validate no recipe."""
    check = f"{code}; import sys; print(','.join(m for m in {HEAVY + ('pydantic',)!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "", f"{code!r} imported {loaded}"


def test_validating_every_shipped_recipe_imports_no_heavy_library() -> None:
    """A recipe's fields are checked before torch loads, so that a wrong field is a usage error at once."""
    recipes = sorted(str(p) for p in (SRC.parent / "recipes").glob("*.toml"))
    assert len(recipes) >= 10
    code = ("import sys\nfrom subnets.runs.kinds import KindUnavailable\nfrom subnets.runs.recipe import load_recipe\n"
            f"for path in {recipes!r}:\n    try:\n        load_recipe(path)\n"
            "    except KindUnavailable:  # a base install without the kind's extra: nothing to validate with\n"
            "        pass\n"
            f"print(','.join(m for m in {HEAVY + ('numpy',)!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "", f"validating the shipped recipes imported {loaded}"
