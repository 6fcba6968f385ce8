"""A fairseq recipe run (translation, MAT) killed mid-run (SIGKILL, as a scheduler does after its grace
period) and rerun with the same command continues from its last save: same update, same LR per update,
same best valid loss as a run that was never interrupted; finished runs are not trained again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from scripts.common.fairseq_cli import clean_env, parse_log

REPO = Path(__file__).resolve().parents[2]
UPDATES = 24
SAVE_EVERY = 8
TINY_KNEE = [
    "--task", "demo", "--schedule", "knee", "--max-updates", str(UPDATES), "--train-pairs", "2000",
    "--heldout-pairs", "32", "--bpe-symbols", "500", "--cpu", "--skip-generate",
    "--fairseq-args", f"--log-interval 1 --save-interval-updates {SAVE_EVERY}",
]  # fmt: skip


TINY_MAT = [
    "--task", "demo", "--schedule", "knee", "--max-updates", "16", "--train-pairs", "2000",
    "--heldout-pairs", "16", "--bpe-symbols", "300", "--cpu", "--skip-generate",
    "--fairseq-args", "--log-interval 1 --save-interval-updates 4",
]  # fmt: skip


def recipe(work_dir: Path, program: str = "scripts.translation.run", arguments: list[str] = TINY_KNEE) -> list[str]:
    return [sys.executable, "-m", program, *arguments, "--work-dir", str(work_dir)]


def run_recipe(work_dir: Path, *how: Any) -> str:
    done = subprocess.run(
        recipe(work_dir, *how), cwd=REPO, env=clean_env(PYTHONPATH=str(REPO)), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def kill_after_first_save(work_dir: Path, save_dir: Path, *how: Any) -> None:
    """Start the recipe and SIGKILL it (the runner and its fairseq-train) once fairseq saved in ``save_dir``."""
    process = subprocess.Popen(
        recipe(work_dir, *how),
        cwd=REPO,
        env=clean_env(PYTHONPATH=str(REPO)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while not (save_dir / "checkpoint_last.pt").exists():
        assert process.poll() is None, "the recipe ended before its first save"
        assert time.monotonic() < deadline, "no save within 10 minutes"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def results(work_dir: Path) -> dict:
    (result,) = json.loads((work_dir / "results.json").read_text(encoding="utf-8"))
    return result


@pytest.mark.slow
def test_a_killed_run_rerun_with_the_same_command_continues_from_its_last_save(tmp_path):
    whole = tmp_path / "whole"
    run_recipe(whole)
    killed = tmp_path / "killed"
    save_dir = killed / "checkpoints" / "knee-full-seed1"
    kill_after_first_save(killed, save_dir)
    assert not (save_dir / "result.json").exists()
    log_before = (save_dir / "train.log").read_text(encoding="utf-8")
    updates_before = [int(r["num_updates"]) for r in parse_log(log_before.splitlines())["train_inner"]]
    assert SAVE_EVERY <= max(updates_before) < UPDATES, "killed after its first save, before the end"

    output = run_recipe(killed)
    assert "continuing from" in output
    log = (save_dir / "train.log").read_text(encoding="utf-8")
    assert log.startswith(log_before), "the log of the first attempt is kept"
    loaded = [line for line in log.splitlines() if "Loaded checkpoint" in line]
    assert len(loaded) == 1 and str(save_dir / "checkpoint_last.pt") in loaded[0], loaded
    resumed_at = int(loaded[0].split(" @ ")[1].split()[0])
    assert resumed_at % SAVE_EVERY == 0 and SAVE_EVERY <= resumed_at <= max(updates_before)

    expected, got = results(whole), results(killed)
    assert [u for u, _ in got["lr_curve"]] == list(range(1, UPDATES + 1))
    assert got["lr_curve"] == expected["lr_curve"], "the same LR at every update"
    assert got["valid_curve"] == expected["valid_curve"]
    assert got["best_valid_loss"] == expected["best_valid_loss"]
    assert sorted(p.name for p in save_dir.glob("*.pt")) == [
        f"checkpoint_1_{UPDATES}.pt",
        "checkpoint_best.pt",
        "checkpoint_last.pt",
    ], "bounded: the last save, the best and fairseq's latest interval save"

    mtime = (save_dir / "checkpoint_last.pt").stat().st_mtime_ns
    again = run_recipe(killed)
    assert "already trained" in again and (save_dir / "checkpoint_last.pt").stat().st_mtime_ns == mtime
    assert results(killed) == got


@pytest.mark.slow
def test_a_rerun_with_other_settings_over_a_run_stops_before_training(tmp_path):
    save_dir = tmp_path / "checkpoints" / "knee-full-seed1"
    save_dir.mkdir(parents=True)
    (save_dir / "command.json").write_text(json.dumps({"train_command": ["fairseq-train", "other"]}))
    done = subprocess.run(
        recipe(tmp_path), cwd=REPO, env=clean_env(PYTHONPATH=str(REPO)), capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "holds a run of other settings" in done.stderr and "--work-dir" in done.stderr
    assert not (save_dir / "train.log").exists()


@pytest.mark.slow
def test_mat_killed_in_phase_2_continues_phase_2_without_a_new_initialisation(tmp_path):
    """MAT's phase 2 starts from knee-mat-init's checkpoint (--finetune-from-model): cut short, it must
    continue from its own last save, not start phase 2 again from the initialisation."""
    mat = ("scripts.mat.run", TINY_MAT)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_recipe(whole, *mat)
    phase2 = killed / "checkpoints" / "knee-seed1" / "phase2"
    kill_after_first_save(killed, phase2, *mat)
    init_stamp = (phase2 / "checkpoint_init.pt").stat().st_mtime_ns
    output = run_recipe(killed, *mat)
    assert "knee phase 1 seed 1: already trained" in output and "knee-mat-init" not in output
    assert (phase2 / "checkpoint_init.pt").stat().st_mtime_ns == init_stamp
    loaded = [line for line in (phase2 / "train.log").read_text().splitlines() if "Loaded checkpoint" in line]
    assert "checkpoint_init.pt (epoch 1 @ 0 updates)" in loaded[0], "the first launch started from the init"
    assert len(loaded) == 2 and str(phase2 / "checkpoint_last.pt") in loaded[1], loaded
    expected = {(r["label"], r["seed"]): r for r in json.loads((whole / "results.json").read_text())}
    for got in json.loads((killed / "results.json").read_text()):
        reference = expected[got["label"], got["seed"]]
        assert got["lr_curve"] == reference["lr_curve"] and got["valid_curve"] == reference["valid_curve"]
        assert got["best_valid_loss"] == reference["best_valid_loss"]
