"""The plugin is found without --user-dir (start-up hook) and with it, through one import of one package;
it costs nothing at start-up, and ``import knee_plugins`` alone leaves fairseq alone."""

import re
import subprocess
import sys

import pytest
from knee_fairseq_helpers import as_logged, clean_env, logged_lrs, run_cli, updates_in_epoch

from knee_plugins.schedule import knee_factor

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


def test_importing_knee_plugins_changes_nothing_in_fairseq():
    out = python(
        "import fairseq, knee_plugins, sys\n"
        "from fairseq.optim.lr_scheduler import LR_SCHEDULER_REGISTRY\n"
        "print('knee' in LR_SCHEDULER_REGISTRY, [m for m in sys.modules if 'fairseq_plugin' in m])",
        **NO_HOOK,
    )
    assert out.splitlines() == ["False []"]


USER_DIR_LOADS = """\
import argparse, fairseq, sys
from fairseq import utils
from fairseq.models import ARCH_MODEL_REGISTRY
from fairseq.optim import OPTIMIZER_REGISTRY
from fairseq.optim.lr_scheduler import LR_SCHEDULER_REGISTRY
hooked = 'knee' in LR_SCHEDULER_REGISTRY
utils.import_user_module(argparse.Namespace(user_dir=sys.argv[1]))
utils.import_user_module(argparse.Namespace(user_dir=sys.argv[1]))
classes = [LR_SCHEDULER_REGISTRY['knee'], LR_SCHEDULER_REGISTRY['one_cycle'], OPTIMIZER_REGISTRY['radam'],
           ARCH_MODEL_REGISTRY['transformer_mb']]
print(hooked, sorted({c.__module__.rsplit('.', 1)[0] for c in classes}))
print(sys.modules['fairseq_plugin.models.transformer_mb'] is sys.modules['knee_plugins.fairseq_plugin.models.transformer_mb'])
from knee_plugins.fairseq_plugin import patches, register
print(register() == patches.status() == dict.fromkeys(patches.patch_names(), 'applied'))
"""


@pytest.mark.parametrize("hook", ["off", "on"])
def test_user_dir_registers_the_one_package_once(user_dir, hook):
    """fairseq imports the folder as ``fairseq_plugin``, then its ``models/*`` (as in every worker)."""
    out = subprocess.run([sys.executable, "-c", USER_DIR_LOADS, str(user_dir)], check=True, text=True,
                         stdout=subprocess.PIPE, env=clean_env(**(NO_HOOK if hook == "off" else {}))).stdout  # fmt: skip
    assert out.splitlines() == [
        f"{hook == 'on'} ['knee_plugins.fairseq_plugin', 'knee_plugins.fairseq_plugin.models']",
        "True",
        "True",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("hook", ["off", "on"])
def test_fairseq_train_with_user_dir(train, user_dir, hook):
    env = clean_env(**NO_HOOK) if hook == "off" else None
    out = train("--user-dir", user_dir, "--lr-scheduler", "knee", "--optimizer", "radam",
                "--max-update", "4", env=env).stdout  # fmt: skip
    assert sorted(logged_lrs(out)) == [1, 2, 3, 4]


HYDRA_CONFIG = """\
# @package _group_
common: {{cpu: true, log_format: json, log_interval: 1, seed: 1}}
task: {{_name: translation, data: {data}}}
model:
  _name: transformer
  encoder: {{embed_dim: 16, ffn_embed_dim: 32, layers: 1, attention_heads: 2}}
  decoder: {{embed_dim: 16, ffn_embed_dim: 32, layers: 1, attention_heads: 2}}
  share_all_embeddings: true
criterion: {{_name: cross_entropy}}
optimizer: {{_name: radam, weight_decay: 0.0001}}
lr_scheduler: {{_name: knee, explore_epochs: 1, warmup_updates: 2}}
optimization: {{max_epoch: 2, lr: [0.001]}}
dataset: {{max_tokens: 300, num_workers: 0, disable_validation: true}}
checkpoint: {{save_dir: {save_dir}, no_epoch_checkpoints: true}}
"""


@pytest.mark.slow
def test_fairseq_hydra_train_with_a_knee_yaml(data_bin, tmp_path):
    (tmp_path / "knee.yaml").write_text(HYDRA_CONFIG.format(data=data_bin, save_dir=tmp_path / "ckpt"))
    out = run_cli("fairseq-hydra-train", "--config-dir", tmp_path, "--config-name", "knee",
                  f"hydra.run.dir={tmp_path / 'hydra'}").stdout  # fmt: skip
    per_epoch = updates_in_epoch(out, 1)
    lrs = logged_lrs(out)
    assert sorted(lrs) == list(range(1, 2 * per_epoch + 1))
    for step, lr in lrs.items():
        factor = knee_factor(step, total_steps=2 * per_epoch, warmup_steps=2,
                             explore_steps=per_epoch - 2)  # fmt: skip
        assert lr == as_logged(1e-3 * factor)
