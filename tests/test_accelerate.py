"""`accelerate launch` with 1 and 2 CPU processes (gloo): Knee's LR per optimizer update is the same."""

import json
import subprocess

import pytest
from accelerate_launch import CPU_ENV, accelerate_launcher
from tiny_bert import save_tiny_bert

from knee_plugins import KneeSchedule

pytestmark = pytest.mark.slow

SCRIPT = "scripts.accelerate.train_classifier_knee"
LEARNING_RATE = 1e-3


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A 1-layer BERT classifier with the real MiniLM tokenizer: fast enough for multi-process runs on 2 cores."""
    from transformers import BertForSequenceClassification

    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), BertForSequenceClassification, num_labels=6)


def launch(tmp_path, model_dir, num_processes, *extra):
    tmp_path.mkdir(parents=True, exist_ok=True)
    lr_log = tmp_path / f"lr-{num_processes}.jsonl"
    env = CPU_ENV
    launcher = accelerate_launcher(num_processes)
    command = [
        *launcher,
        "-m",
        SCRIPT,
        "--model_name_or_path",
        str(model_dir),
        "--train_examples",
        "96",
        "--max_length",
        "16",
        "--per_device_train_batch_size",
        "4",
        "--learning_rate",
        str(LEARNING_RATE),
        "--lr_log",
        str(lr_log),
        *extra,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    records = [json.loads(line) for line in lr_log.read_text().splitlines()]
    assert {record["num_processes"] for record in records} == {num_processes}
    return [record["lr"] for record in records]


def test_two_processes_follow_the_same_lr_per_update_as_one(tmp_path, tiny_model_dir):
    args = (
        "--max_train_steps",
        "10",
        "--num_warmup_steps",
        "2",
        "--explore_ratio",
        "0.5",
        "--gradient_accumulation_steps",
        "2",
    )
    one = launch(tmp_path, tiny_model_dir, 1, *args)
    two = launch(tmp_path, tiny_model_dir, 2, *args)
    schedule = KneeSchedule(total_steps=10, warmup_steps=2, explore_steps=5)
    assert one == pytest.approx([LEARNING_RATE * schedule.factor(step) for step in range(10)], rel=1e-12, abs=1e-15)
    assert two == one


def test_an_epoch_budget_on_two_processes_decays_to_the_end_not_before(tmp_path, tiny_model_dir):
    # 96 examples / (2 processes x batch 4) = 12 updates per epoch, 2 epochs -> 24 updates
    lrs = launch(tmp_path, tiny_model_dir, 2, "--num_train_epochs", "2", "--explore", "1ep")
    schedule = KneeSchedule(total_steps=24, warmup_steps=0, explore_steps=12)
    assert lrs == pytest.approx([LEARNING_RATE * schedule.factor(step) for step in range(24)], rel=1e-12)
    assert lrs[-1] == pytest.approx(LEARNING_RATE / 12) and min(lrs) > 0


def test_resume_from_saved_state_continues_the_schedule(tmp_path, tiny_model_dir):
    args = ("--max_train_steps", "10", "--num_warmup_steps", "2", "--explore", "4")
    full = launch(
        tmp_path / "full",
        tiny_model_dir,
        1,
        *args,
        "--output_dir",
        str(tmp_path / "full"),
        "--checkpointing_steps",
        "4",
    )
    resumed = launch(
        tmp_path / "resumed",
        tiny_model_dir,
        1,
        *args,
        "--output_dir",
        str(tmp_path / "resumed"),
        "--resume_from_checkpoint",
        str(tmp_path / "full" / "step_4"),
    )
    assert resumed == full[4:]


def test_resume_under_a_new_budget_while_exploring_equals_a_fresh_run_and_is_refused_after_the_decay(
    tmp_path, tiny_model_dir
):
    """Anytime Knee in an accelerate loop: load_state into a KneeLR built for the new --max_train_steps."""
    saved = ("--num_warmup_steps", "2", "--max_train_steps", "10", "--explore", "4")  # decay from update 6
    parent = tmp_path / "parent"
    launch(parent, tiny_model_dir, 1, *saved, "--output_dir", str(parent), "--checkpointing_steps", "4")
    longer = ("--num_warmup_steps", "2", "--max_train_steps", "20", "--explore", "14")
    resumed = launch(
        tmp_path / "longer",
        tiny_model_dir,
        1,
        *longer,
        "--output_dir",
        str(tmp_path / "longer"),
        "--resume_from_checkpoint",
        str(parent / "step_4"),
    )
    fresh = launch(tmp_path / "fresh", tiny_model_dir, 1, *longer)
    assert resumed == fresh[4:]

    refused = subprocess.run(
        [
            *accelerate_launcher(1),
            "-m",
            SCRIPT,
            "--model_name_or_path",
            str(tiny_model_dir),
            "--train_examples",
            "96",
            "--max_length",
            "16",
            "--per_device_train_batch_size",
            "4",
            *longer,
            "--resume_from_checkpoint",
            str(parent / "step_8"),
        ],
        env=CPU_ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert refused.returncode != 0
    assert "the run resumes at update 8" in refused.stderr and "--anneal_on_budget_change" in refused.stderr
