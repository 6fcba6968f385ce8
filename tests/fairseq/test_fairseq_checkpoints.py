"""Resume after a real SIGKILL, and fairseq checkpoints under torch's weights_only loading."""

import fractions
import os
import signal
import subprocess

import pytest
import torch
from knee_fairseq_helpers import (
    BIN,
    PEAK_LR,
    TINY_MODEL,
    as_logged,
    clean_env,
    logged_lrs,
    run_cli,
)

from knee_plugins.schedule import knee_factor

KILL_AFTER = 17
SAVE_EVERY = 5
EPOCHS, EXPLORE_EPOCHS, WARMUP, PER_EPOCH = 4, 2, 3, 10
TOTAL = EPOCHS * PER_EPOCH
KNEE = ("--lr-scheduler", "knee", "--max-epoch", str(EPOCHS), "--explore-epochs",
        str(EXPLORE_EPOCHS), "--warmup-updates", str(WARMUP),
        "--save-interval-updates", str(SAVE_EVERY))  # fmt: skip


def expected(step: int) -> float:
    explore = EXPLORE_EPOCHS * PER_EPOCH - WARMUP
    return as_logged(PEAK_LR * knee_factor(step, total_steps=TOTAL, warmup_steps=WARMUP, explore_steps=explore))


@pytest.fixture(scope="module")
def killed_and_resumed(data_bin, tmp_path_factory):
    """Train, SIGKILL after KILL_AFTER updates, rerun the same command; return both logs."""
    save_dir = tmp_path_factory.mktemp("resume")
    command = [str(BIN / "fairseq-train"), str(data_bin), *TINY_MODEL, "--save-dir",
               str(save_dir), *KNEE]  # fmt: skip
    env = clean_env(PYTHONUNBUFFERED="1")
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=env)  # fmt: skip
    lines = []
    for line in first.stdout:
        lines.append(line)
        if max(logged_lrs(line), default=0) >= KILL_AFTER:
            os.kill(first.pid, signal.SIGKILL)
            break
    first.wait(timeout=60)
    first.stdout.close()
    assert first.returncode == -signal.SIGKILL, "".join(lines)[-3000:]
    second = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, timeout=300)  # fmt: skip
    assert second.returncode == 0, second.stdout[-3000:]
    return logged_lrs("".join(lines)), logged_lrs(second.stdout), save_dir


@pytest.mark.slow
def test_lr_continues_exactly_after_sigkill(killed_and_resumed):
    before, after, _ = killed_and_resumed
    last_saved = KILL_AFTER // SAVE_EVERY * SAVE_EVERY
    assert sorted(before) == list(range(1, KILL_AFTER + 1))
    assert min(after) == last_saved + 1, "resumed from the last checkpoint (loaded weights_only)"
    assert max(after) == TOTAL, "the resumed run ends at the same final update"
    for step, lr in {**before, **after}.items():
        assert lr == expected(step), f"update {step}: {lr} != {expected(step)}"


@pytest.mark.slow
def test_generate_loads_checkpoint_with_weights_only(killed_and_resumed, data_bin):
    _, _, save_dir = killed_and_resumed
    out = run_cli(
        "fairseq-generate",
        data_bin,
        "--path",
        save_dir / "checkpoint_last.pt",
        "--gen-subset",
        "test",
        "--beam",
        "2",
        "--max-tokens",
        "500",
        "--cpu",
    ).stdout
    assert "Generate test with beam=2" in out, out[-2000:]


@pytest.mark.slow
def test_without_the_plugin_weights_only_refuses_fairseq_checkpoints(killed_and_resumed, data_bin):
    """Proves weights_only is on in these runs and that the allow-list is what makes them load."""
    _, _, save_dir = killed_and_resumed
    proc = run_cli("fairseq-generate", data_bin, "--path", save_dir / "checkpoint_last.pt",
                   "--gen-subset", "test", "--cpu", "--max-tokens", "500",
                   env=clean_env(KNEE_PLUGINS_NO_AUTOREGISTER="1"), check=False)  # fmt: skip
    assert proc.returncode != 0
    assert "argparse.Namespace" in proc.stdout and "weights_only" in proc.stdout.lower()


@pytest.mark.slow
def test_checkpoint_with_a_disallowed_global_is_refused(killed_and_resumed, data_bin, tmp_path):
    _, _, save_dir = killed_and_resumed
    state = torch.load(save_dir / "checkpoint_last.pt", weights_only=False)
    state["extra_state"]["smuggled"] = fractions.Fraction(1, 3)
    doctored = tmp_path / "doctored.pt"
    torch.save(state, doctored)
    proc = run_cli("fairseq-generate", data_bin, "--path", doctored, "--gen-subset", "test",
                   "--cpu", "--max-tokens", "500", check=False)  # fmt: skip
    assert proc.returncode != 0
    assert "fractions.Fraction" in proc.stdout, proc.stdout[-2000:]
