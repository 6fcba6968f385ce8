"""The plugin is found without --user-dir (start-up hook), with --user-dir, and costs nothing at start-up."""

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
