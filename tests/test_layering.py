"""The import graph is one-way: core -> host adapters -> recipes, and a recipe imports only what it uses.

Checked twice: statically (what each module's source imports) and for real (what a fresh interpreter
has in ``sys.modules`` after importing a module).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "knee_plugins"
LIBRARY_MODULES = sorted(path for path in PACKAGE.rglob("*.py") if "recipes" not in path.relative_to(PACKAGE).parts)
RECIPE_MODULES = sorted((PACKAGE / "recipes").glob("*.py"))
# Modules the recipes share: they may import each other but no task recipe.
SHARED_RECIPE_MODULES = {"__init__", "results", "embedded_corpus", "hf_data", "prepare", "corpus", "report"}
# A task recipe may build on another task's recipe only where it is that task's variant.
ALLOWED_TASK_IMPORTS = {"mat": {"translation"}}


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[: len(parent) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", LIBRARY_MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_library_never_imports_a_recipe(path):
    assert not any(name.startswith("knee_plugins.recipes") for name in imported_modules(path))


@pytest.mark.parametrize("path", RECIPE_MODULES, ids=lambda p: p.name)
def test_recipes_import_shared_modules_and_no_other_task(path):
    own = path.stem
    recipe_imports = {name.split(".")[2] for name in imported_modules(path) if name.startswith("knee_plugins.recipes.")}
    tasks = recipe_imports - SHARED_RECIPE_MODULES - {own}
    if own in SHARED_RECIPE_MODULES:
        assert not tasks, f"shared module {own} imports the task recipe(s) {sorted(tasks)}"
    else:
        assert tasks <= ALLOWED_TASK_IMPORTS.get(own, set()), f"{own} imports the task recipe(s) {sorted(tasks)}"


def loaded_after_import(module: str) -> set[str]:
    code = f"import sys, json, {module}; print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


@pytest.mark.parametrize(
    "module,must_not_load",
    [
        ("knee_plugins", {"torch", "transformers", "fairseq", "accelerate"}),
        ("knee_plugins.cli", {"torch", "transformers", "fairseq", "matplotlib"}),
        ("knee_plugins.lr_scheduler", {"transformers", "fairseq", "accelerate"}),
        ("knee_plugins.hf", {"fairseq", "sacremoses", "polib"}),
        ("knee_plugins.recipes.results", {"torch", "fairseq", "transformers", "sacremoses", "polib"}),
        ("knee_plugins.recipes.embedded_corpus", {"torch", "polib", "sacremoses"}),
        ("knee_plugins.recipes.prepare", {"polib", "torch", "transformers"}),
        ("knee_plugins.recipes.hf_demo", {"fairseq", "sacremoses", "subword_nmt", "polib", "sacrebleu"}),
        ("knee_plugins.recipes.translation", {"transformers", "polib"}),
    ],
)
def test_importing_a_module_loads_only_what_it_uses(module, must_not_load):
    assert not must_not_load & loaded_after_import(module)
