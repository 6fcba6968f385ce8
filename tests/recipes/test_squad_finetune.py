"""SQuAD fine-tuning end to end on a tiny BERT: accelerate (1 and 2 gloo processes, SIGKILL + resume) and
both Trainer routes write EM/F1, and the LR of every optimizer update is Knee's."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from accelerate_launch import CPU_ENV, accelerate_launcher
from squad_fixtures import write_squad_files
from tiny_bert import save_tiny_bert

from knee_plugins import KneeSchedule

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FINETUNE = "scripts.squad.finetune"
LEARNING_RATE = 1e-3
# 25 questions -> 64 windows of 64 tokens (stride 16); global batch 4 -> 16 updates per epoch, 2 epochs.
# Dev: 11 questions -> 22 windows; 2 processes x eval batch 4 pad the last batch.
COMMON = [
    "--max-seq-length",
    "64",
    "--doc-stride",
    "16",
    "--global-batch-size",
    "4",
    "--learning-rate",
    str(LEARNING_RATE),
    "--eval-batch-size",
    "4",
    "--schedule",
    "knee",
]
TOTAL, EXPLORE = 32, 16
SHORT = ("--max-train-steps", "6", "--explore", "0.5")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 1-layer BERT QA model with the real MiniLM tokenizer, and SQuAD-format train/dev files."""
    from transformers import BertForQuestionAnswering

    root = tmp_path_factory.mktemp("squad-e2e")
    save_tiny_bert(root / "model", BertForQuestionAnswering)
    train, dev = write_squad_files(root / "data")
    return {
        "root": root,
        "args": ["--model", str(root / "model"), "--train-file", str(train), "--validation-file", str(dev), *COMMON],
    }


def launch_command(num_processes: int, output_dir: Path, *args: str) -> list[str]:
    launcher = accelerate_launcher(num_processes)
    return [*launcher, "-m", FINETUNE, "--output-dir", str(output_dir), "--no-save-model", *args]


ENV = CPU_ENV


def launch(num_processes: int, output_dir: Path, *args: str) -> dict:
    result = subprocess.run(
        launch_command(num_processes, output_dir, *args), env=ENV, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((output_dir / "results.json").read_text())


def steps_log(output_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (output_dir / "log.jsonl").read_text().splitlines())}


def knee_lrs() -> list[float]:
    schedule = KneeSchedule(total_steps=TOTAL, warmup_steps=0, explore_steps=EXPLORE)
    return [LEARNING_RATE * schedule.factor(step) for step in range(TOTAL)]


def dev_windows(setup) -> int:
    from transformers import AutoTokenizer

    from scripts.squad import squad_utils as squad

    tokenizer = AutoTokenizer.from_pretrained(setup["root"] / "model")
    dev = squad.read_squad_json(setup["root"] / "data" / "dev.json")
    return len(squad.prepare_validation_features(dev[:], tokenizer, 64, 16)["input_ids"])


@pytest.fixture(scope="module")
def one_process(setup):
    output_dir = setup["root"] / "one"
    return launch(1, output_dir, *setup["args"], "--checkpointing-steps", "4", "--keep-checkpoints", "0"), output_dir


def test_one_process_follows_knee_per_update_and_writes_em_f1(one_process, setup):
    results, output_dir = one_process
    assert (results["total_steps"], results["steps_per_epoch"], results["explore_steps"]) == (TOTAL, 16, EXPLORE)
    assert [s["lr"] for s in results["steps"]] == pytest.approx(knee_lrs(), rel=1e-12, abs=1e-15)
    assert [e["step"] for e in results["evaluations"]] == [16, 32]
    final = results["final"]
    assert 0 <= final["exact_match"] <= 100 and 0 <= final["f1"] <= 100 and final["f1"] >= final["exact_match"]
    assert (final["num_examples"], final["num_windows"]) == (11, dev_windows(setup))
    assert (output_dir / "curves.png").stat().st_size > 10_000
    assert sorted(p.name for p in output_dir.glob("step_*")) == sorted(f"step_{s}" for s in range(4, 33, 4))


def test_two_processes_match_one_per_update_and_score_each_dev_window_once(one_process, setup):
    results, _ = one_process
    # Global batch 4 = 2 processes x 1 example x 2 accumulation steps (the README's 1-GPU command accumulates too).
    two = launch(2, setup["root"] / "two", *setup["args"], "--per-device-batch-size", "1")
    assert (two["num_processes"], two["per_device_batch_size"], two["gradient_accumulation_steps"]) == (2, 1, 2)
    assert two["total_steps"] == TOTAL and two["steps_per_epoch"] == results["steps_per_epoch"]
    assert [s["lr"] for s in two["steps"]] == [s["lr"] for s in results["steps"]]
    assert dev_windows(setup) % (2 * 4) != 0
    for evaluation in two["evaluations"]:
        assert (evaluation["num_examples"], evaluation["num_windows"]) == (11, dev_windows(setup))


def test_accelerate_route_clips_the_global_gradient_norm_as_the_trainer_route_does(one_process, setup):
    """Default --max-grad-norm 1.0: every update logs its pre-clip norm; a tight bound changes the
    trajectory (same LRs), no bound logs none. The Trainer route gets the same value (max_grad_norm)."""
    results, _ = one_process
    assert all(s["grad_norm"] > 0 for s in results["steps"])
    tight = launch(1, setup["root"] / "clip-tight", *setup["args"], "--max-grad-norm", "0.01", *SHORT)
    loose = launch(1, setup["root"] / "clip-off", *setup["args"], "--max-grad-norm", "0", *SHORT)
    assert [s["lr"] for s in tight["steps"]] == [s["lr"] for s in loose["steps"]]
    assert all(s["grad_norm"] is None for s in loose["steps"])
    assert min(s["grad_norm"] for s in tight["steps"]) > 0.01  # the bound bites at every update
    assert [s["loss"] for s in tight["steps"]][2:] != pytest.approx([s["loss"] for s in loose["steps"]][2:], rel=1e-6)
    from scripts.squad import squad_utils, train_trainer

    trainer_args = train_trainer.parse_args([*setup["args"], "--dry-run"])
    assert "gradient clipping 1, precision no" in "\n".join(squad_utils.plan_lines(trainer_args, 1, 4, 1))


def test_resume_after_sigkill_continues_the_lr_trajectory_and_the_data_order(one_process, setup):
    _, reference_dir = one_process
    output_dir = setup["root"] / "killed"
    command = launch_command(1, output_dir, *setup["args"], "--checkpointing-steps", "4")
    process = subprocess.Popen(
        command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    log, deadline = output_dir / "log.jsonl", time.time() + 300
    try:
        while time.time() < deadline and process.poll() is None:
            if (
                log.is_file()
                and max((json.loads(line)["step"] for line in log.read_text().splitlines()), default=0) >= 21
            ):
                os.killpg(process.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read()[-3000:]
    killed_at = max(steps_log(output_dir))
    assert 21 <= killed_at < TOTAL and not (output_dir / "results.json").exists()

    # What a kill in the middle of a save leaves: a half-written step_N.partial, newer than the last save.
    newest = max(output_dir.glob("step_*[0-9]"), key=lambda path: int(path.name.split("_")[1]))
    half_written = output_dir / f"step_{killed_at + 1}.partial"
    shutil.copytree(newest, half_written)
    next(path for path in sorted(half_written.rglob("*")) if path.is_file()).unlink()
    resumed = launch(1, output_dir, *setup["args"], "--checkpointing-steps", "4", "--resume-from-checkpoint", "latest")
    assert not list(output_dir.glob("*.partial"))
    reference = steps_log(reference_dir)
    after = steps_log(output_dir)
    assert sorted(after) == list(range(1, TOTAL + 1))
    assert [after[s]["lr"] for s in after] == [reference[s]["lr"] for s in after]
    assert [after[s]["features"] for s in after] == [reference[s]["features"] for s in after]
    assert [after[s]["loss"] for s in range(22, TOTAL + 1)] == pytest.approx(
        [reference[s]["loss"] for s in range(22, TOTAL + 1)], rel=1e-4
    )
    assert resumed["final"]["f1"] == pytest.approx(
        json.loads((reference_dir / "results.json").read_text())["final"]["f1"], abs=1e-3
    )


def test_both_trainer_routes_follow_knee_and_agree_and_linear_is_the_trainers_own(setup, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    from scripts.squad import train_trainer as trainer_script

    runs = {}
    for route in ("callback", "optimizers"):
        runs[route] = trainer_script.main(
            [
                *setup["args"],
                "--route",
                route,
                "--logging-steps",
                "1",
                "--output-dir",
                str(setup["root"] / f"trainer-{route}"),
            ]
        )
        results = runs[route]
        assert results["route"] == f"trainer-{route}" and results["total_steps"] == TOTAL
        assert [s["lr"] for s in results["steps"]] == pytest.approx(knee_lrs(), rel=1e-12, abs=1e-15)
        assert [e["step"] for e in results["evaluations"]] == [16, 32]
        assert (results["final"]["num_examples"], results["final"]["num_windows"]) == (11, dev_windows(setup))
        assert (setup["root"] / f"trainer-{route}" / "curves.png").is_file()
    assert [s["loss"] for s in runs["callback"]["steps"]] == pytest.approx(
        [s["loss"] for s in runs["optimizers"]["steps"]], rel=1e-5
    )
    assert runs["callback"]["final"]["f1"] == pytest.approx(runs["optimizers"]["final"]["f1"], abs=1e-3)

    args = [a if a != "knee" else "linear" for a in setup["args"]]
    linear = trainer_script.main(
        [*args, "--max-train-steps", "8", "--warmup", "2", "--output-dir", str(setup["root"] / "trainer-linear")]
    )
    expected = [LEARNING_RATE * (s / 2 if s < 2 else (8 - s) / 6) for s in range(8)]
    assert [s["lr"] for s in linear["steps"]] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert 0 <= linear["final"]["f1"] <= 100


def test_seeds_train_one_run_per_seed_and_compare_reports_their_mean_and_std(setup, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    from scripts.squad import compare, train_trainer

    output_dir = setup["root"] / "seeds"
    argv = [
        *setup["args"],
        "--seeds",
        "2",
        "--seed",
        "7",
        *SHORT,
        "--logging-steps",
        "1",
        "--output-dir",
        str(output_dir),
    ]
    runs = train_trainer.main(argv)["runs"]
    assert [run["args"]["seed"] for run in runs] == [7, 8]
    assert sorted(p.parent.name for p in output_dir.glob("seed*/results.json")) == ["seed7", "seed8"]
    assert runs[0]["steps"] != runs[1]["steps"]  # another head init and data order
    capsys.readouterr()
    compare.main([str(output_dir)])
    row = capsys.readouterr().out.splitlines()[2]
    assert "| 7, 8 |" in row and row.count("±") == 2
