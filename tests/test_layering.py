"""The import graph is one-way: core -> host adapters; recipes -> their shared code -> the library.

The rule for recipes: every task's entry programs live in ``scripts/<task>/`` and run as
``python -m scripts.<task>.<program>``; what several tasks reuse is in ``scripts/common/``, which
imports no task; a task imports no other task, and a benchmark imports only ``scripts/common/``. The
library (``knee_plugins``) imports no recipe and no benchmark.

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

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "knee_plugins"
LIBRARY_MODULES = sorted(PACKAGE.rglob("*.py"))
SCRIPTS = ROOT / "scripts"
COMMON_MODULES = sorted((SCRIPTS / "common").glob("*.py"))
TASK_MODULES = sorted(p for p in SCRIPTS.glob("*/*.py") if p.parent.name != "common")
BENCHMARK_MODULES = sorted((ROOT / "benchmarks").glob("*.py"))
# No task builds on another task's entry program: what two tasks share is in scripts/common.
ALLOWED_TASK_IMPORTS: dict[str, set[str]] = {}


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
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


def tasks_imported(path: Path) -> set[str]:
    return {
        name.split(".")[1]
        for name in imported_modules(path)
        if name.startswith("scripts.") and name.split(".")[1] not in ("common", "__init__")
    }


@pytest.mark.parametrize("path", LIBRARY_MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_library_never_imports_a_recipe_a_benchmark_or_a_test(path):
    assert not any(name.split(".")[0] in ("scripts", "benchmarks", "tests") for name in imported_modules(path))


@pytest.mark.parametrize("path", COMMON_MODULES, ids=lambda p: p.name)
def test_the_shared_recipe_code_imports_no_task(path):
    assert not tasks_imported(path), f"scripts/common/{path.name} imports the task(s) {sorted(tasks_imported(path))}"


@pytest.mark.parametrize("path", TASK_MODULES, ids=lambda p: str(p.relative_to(SCRIPTS)))
def test_a_task_imports_the_shared_code_and_no_other_task(path):
    own = path.parent.name
    others = tasks_imported(path) - {own}
    assert others <= ALLOWED_TASK_IMPORTS.get(own, set()), f"{own} imports the task(s) {sorted(others)}"


@pytest.mark.parametrize("path", BENCHMARK_MODULES, ids=lambda p: p.name)
def test_a_benchmark_imports_the_shared_code_and_no_task(path):
    assert not tasks_imported(path), f"benchmarks/{path.name} imports the task(s) {sorted(tasks_imported(path))}"


@pytest.mark.parametrize(
    "path", [*TASK_MODULES, *COMMON_MODULES, *BENCHMARK_MODULES], ids=lambda p: str(p.relative_to(ROOT))
)
def test_no_recipe_or_benchmark_imports_from_the_tests(path):
    assert not any(name.split(".")[0] == "tests" for name in imported_modules(path))
    assert "sys.path" not in path.read_text(encoding="utf-8")


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
        ("scripts.common.results", {"torch", "fairseq", "transformers", "sacremoses", "polib"}),
        ("scripts.common.embedded_corpus", {"torch", "polib", "sacremoses"}),
        ("scripts.common.prepare", {"polib", "torch", "transformers"}),
        ("scripts.common.fairseq_cli", {"torch", "fairseq", "sacremoses"}),
        ("scripts.common.sweep", {"torch", "fairseq", "transformers", "sacremoses"}),
        ("scripts.common.runner", {"torch", "fairseq", "transformers", "polib"}),
        ("scripts.mat.run", {"torch", "fairseq", "transformers", "polib"}),
        ("scripts.hf_demo.compare", {"fairseq", "sacremoses", "subword_nmt", "polib", "sacrebleu"}),
        ("scripts.translation.run", {"transformers", "polib"}),
    ],
)
def test_importing_a_module_loads_only_what_it_uses(module, must_not_load):
    assert not must_not_load & loaded_after_import(module)
