"""The plugin is found without --user-dir (start-up hook), with --user-dir, and costs nothing at start-up."""

import re
import subprocess
import sys

import pytest

from knee_fairseq_helpers import clean_env, logged_lrs, run_cli

NO_HOOK = {"KNEE_PLUGINS_NO_AUTOREGISTER": "1"}


def python(code: str, **env: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, text=True,
                          stdout=subprocess.PIPE, env=clean_env(**env)).stdout  # fmt: skip


def choices(help_text: str, option: str) -> set[str]:
    match = re.search(rf"{option} \{{([^}}]*)\}}", help_text)
    assert match, f"{option} not in the help"
    return set(match.group(1).split(","))


def test_startup_loads_only_the_stdlib_hook():
    out = python(
        "import sys; print(sorted(m for m in sys.modules if ('knee' in m or 'fairseq' in m or "
        "m == 'torch') and not m.startswith('__editable__'))); "
        "print([type(f).__name__ for f in sys.meta_path])"
    )
    modules, finders = out.splitlines()
    assert modules == "['_knee_plugins_fairseq_hook']"
    assert "FairseqImportHook" in finders


def test_importing_fairseq_registers_the_plugin():
    out = python(
        "import fairseq, sys\n"
        "from fairseq.optim import OPTIMIZER_REGISTRY\n"
        "from fairseq.optim.lr_scheduler import LR_SCHEDULER_REGISTRY\n"
        "print(sorted({'knee', 'one_cycle'} & set(LR_SCHEDULER_REGISTRY)), 'radam' in OPTIMIZER_REGISTRY)\n"
        "print([type(f).__name__ for f in sys.meta_path if 'Fairseq' in type(f).__name__])"
    )
    assert out.splitlines() == ["['knee', 'one_cycle'] True", "[]"]


@pytest.mark.slow
def test_plain_fairseq_train_finds_knee_radam_one_cycle():
    out = run_cli("fairseq-train", "--help").stdout
    assert {"knee", "one_cycle"} <= choices(out, "--lr-scheduler")
    assert "radam" in choices(out, "--optimizer")


@pytest.mark.slow
def test_without_the_hook_fairseq_does_not_know_knee():
    out = run_cli("fairseq-train", "--help", env=clean_env(**NO_HOOK)).stdout
    assert "knee" not in choices(out, "--lr-scheduler")


@pytest.mark.slow
@pytest.mark.parametrize("hook", ["off", "on"])
def test_user_dir_is_the_installed_package(train, knee_plugins_dir, hook):
    env = clean_env(**NO_HOOK) if hook == "off" else None
    out = train("--user-dir", knee_plugins_dir, "--lr-scheduler", "knee", "--optimizer", "radam",
                "--max-update", "4", env=env).stdout  # fmt: skip
    assert sorted(logged_lrs(out)) == [1, 2, 3, 4]


@pytest.mark.slow
def test_user_dir_may_point_at_the_plugin_folder(knee_plugins_dir):
    out = run_cli("fairseq-train", "--user-dir", knee_plugins_dir / "fairseq_plugin", "--help",
                  env=clean_env(**NO_HOOK)).stdout  # fmt: skip
    assert "knee" in choices(out, "--lr-scheduler")
