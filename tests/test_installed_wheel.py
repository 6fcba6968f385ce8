"""The built wheel works outside the checkout: installed into fresh environments, run from another folder.

Two environments get the wheel (``pip --python ENV install --no-deps``):
- ``bare``: nothing else. ``import knee_plugins`` and the schedule core work without torch, and so does
  ``knee-plan``.
- ``hosts``: the wheel, plus this test environment's packages (torch, fairseq) made visible after the
  wheel by a path file, so nothing of the checkout is importable. fairseq finds the plugin (schedulers,
  RAdam, ``transformer_mb``) by itself, and ``knee-mat-init`` runs.

The wheel is the library only: the recipes (``scripts/``), their corpus, tests and benchmarks stay in
the checkout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(command: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KNEE_PLUGINS_NO_AUTOREGISTER")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kwargs
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def site_packages(env: Path) -> Path:
    return env / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", REPO, "-w", out], cwd=out)
    (path,) = out.glob("knee_plugins-*.whl")
    return path


def make_env(root: Path, wheel: Path, extra_paths: list[str] = ()) -> Path:
    env = root / "env"
    run([sys.executable, "-m", "venv", "--without-pip", env], cwd=root)
    if extra_paths:
        (site_packages(env) / "zz_test_host_packages.pth").write_text("".join(p + "\n" for p in extra_paths))
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            env / "bin" / "python",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            wheel,
        ],
        cwd=root,
    )
    return env


def test_the_wheel_ships_the_library_and_nothing_of_the_checkout(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "knee_plugins/schedule.py",
        "knee_plugins/fairseq_plugin/__init__.py",
        "knee_plugins/fairseq_plugin/models/transformer_mb.py",
        "knee_plugins/fairseq_plugin/mat_init.py",
        "knee_plugins_fairseq.pth",
        "_knee_plugins_fairseq_hook.py",
    } <= names
    assert not any(name.startswith(("tests/", "scripts/", "benchmarks/", "docs/")) for name in names)
    assert not any(name.endswith(".gz") for name in names)


def test_bare_install_imports_without_torch_and_plans(wheel, tmp_path):
    env = make_env(tmp_path, wheel)
    code = (
        "import sys, knee_plugins; s = knee_plugins.KneeSchedule.from_durations(100, warmup=10); "
        "print(knee_plugins.__file__, s.explore_steps, 'torch' in sys.modules)"
    )
    path, explore, torch_loaded = run([env / "bin" / "python", "-c", code], cwd=tmp_path).stdout.split()
    assert Path(path).is_relative_to(env) and explore == "50" and torch_loaded == "False"
    missing = subprocess.run([env / "bin" / "python", "-c", "import torch"], capture_output=True, text=True)
    assert missing.returncode != 0 and "No module named 'torch'" in missing.stderr
    table = run([env / "bin" / "knee-plan", "--total-steps", "100", "--warmup", "10"], cwd=tmp_path).stdout
    assert table.splitlines()[2].split()[:4] == ["explore", "10", "60", "50"]


def test_installed_wheel_registers_with_fairseq_and_mat_init_runs(wheel, tmp_path):
    env = make_env(tmp_path, wheel, [sysconfig.get_paths()["purelib"]])
    python = env / "bin" / "python"
    code = (
        "import json, fairseq, knee_plugins; from fairseq.optim.lr_scheduler import LR_SCHEDULER_REGISTRY; "
        "from fairseq.optim import OPTIMIZER_REGISTRY; from fairseq.models import ARCH_MODEL_REGISTRY; "
        "print(json.dumps([knee_plugins.__file__, 'knee' in LR_SCHEDULER_REGISTRY, "
        "'one_cycle' in LR_SCHEDULER_REGISTRY, 'radam' in OPTIMIZER_REGISTRY, "
        "'transformer_mb' in ARCH_MODEL_REGISTRY]))"
    )
    path, *registered = json.loads(run([python, "-c", code], cwd=tmp_path).stdout.splitlines()[-1])
    assert Path(path).is_relative_to(env), path
    assert registered == [True, True, True, True]
    usage = run([env / "bin" / "knee-mat-init", "--help"], cwd=tmp_path).stdout
    assert "--branches" in usage
