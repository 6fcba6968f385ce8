"""BERT pretraining under accelerate: the two-phase plan, LAMB, the LR per optimizer step in 1 and 2
processes, phase 2 from phase 1's weights, resuming after SIGKILL / SIGTERM, and bad input."""

import importlib
import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from accelerate_launch import CPU_ENV, accelerate_launcher

from knee_plugins import KneeSchedule
from scripts.bert import pretraining_utils as bp

ROOT = Path(__file__).resolve().parents[2]
PRETRAIN = "scripts.bert.pretrain"
PREPARE = "scripts.bert.prepare_data"
STEPS = (8, 6)
LRS = (6e-3, 4e-3)
# Global batch 16 = 1 process x 4 x 4 accumulation = 2 processes x 4 x 2 accumulation.
TINY = [
    "--phase1-steps",
    str(STEPS[0]),
    "--phase2-steps",
    str(STEPS[1]),
    "--global-batch-size",
    "16",
    "--per-device-batch-size",
    "4",
    "--logging-steps",
    "1",
    "--checkpointing-steps",
    "3",
    "--eval-batches",
    "2",
]


def tiny_config(data_dir):
    """A 2-layer BERT with hidden size 32 (a config file, the way users pass their own shape)."""
    path = Path(data_dir) / "tiny-bert.json"
    if not path.is_file():
        config = bp.bert_config("tiny", 30522)
        config.update({"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64})
        config.to_json_file(str(path))
    return str(path)


def command(data_dir, output_dir, num_processes=1, *extra):
    launcher = accelerate_launcher(num_processes)
    return [
        *launcher,
        "-m",
        PRETRAIN,
        "--data-dir",
        str(data_dir),
        "--output-dir",
        str(output_dir),
        "--model-config",
        tiny_config(data_dir),
        *TINY,
        *extra,
    ]


ENV = CPU_ENV


def run(cmd):
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def metrics(output_dir):
    return bp.read_metrics(Path(output_dir) / "metrics.jsonl")


# ----------------------------------------------------------------------------------------------
# The plan (no training)


def test_the_paper_budgets_split_90_10_with_knee_warmup_10_and_explore_50_per_phase():
    full = bp.plan_phases(budget="full", per_device_batch_size=(64, 16), num_processes=8)
    assert [p.steps for p in full] == [28125, 3125] and sum(p.steps for p in full) == 31250
    assert [(p.warmup_steps, p.explore_steps) for p in full] == [(2812, 14062), (312, 1562)]
    assert [(p.seq_length, p.max_predictions, p.learning_rate) for p in full] == [(128, 20, 6e-3), (512, 80, 4e-3)]
    assert [(p.global_batch_size, p.gradient_accumulation_steps) for p in full] == [(16384, 32), (16384, 128)]
    short = bp.plan_phases(budget="short")
    assert [p.steps for p in short] == [18769, 2085] and sum(p.steps for p in short) == 20854
    knee = full[0]
    assert knee.factor(0) == 0 and knee.factor(2812) == 1 and knee.factor(2812 + 14062 - 1) == 1
    assert knee.factor(2812 + 14062) == 1 and knee.factor(28125) == 0
    assert knee.learning_rate_at(20000) == pytest.approx(6e-3 * (28125 - 20000) / (28125 - 2812 - 14062))


def test_baselines_linear_and_nvidia_polywarmup():
    linear = bp.plan_phases(budget=1000, schedule="linear")[0]
    assert (linear.steps, linear.warmup_steps, linear.explore_steps) == (900, 90, 0)
    assert linear.factor(45) == 0.5 and linear.factor(90) == 1 and linear.factor(495) == pytest.approx(0.5)
    poly = bp.plan_phases(phase_steps_override=bp.NVIDIA_PHASE_STEPS, schedule="poly")
    assert [(p.steps, p.poly_warmup) for p in poly] == [(7038, 0.2843), (1563, 0.128)]
    # NVIDIA's PolyWarmUpScheduler: progress p = t / T; p / warmup, then (1 - p) ** 0.5
    assert poly[0].factor(1000) == pytest.approx((1000 / 7038) / 0.2843)
    assert poly[0].factor(3000) == pytest.approx((1 - 3000 / 7038) ** 0.5)
    assert poly[1].factor(1563) == 0


def test_plan_errors_name_the_option():
    with pytest.raises(ValueError, match="--warmup \\+ --explore"):
        bp.plan_phases(budget=100, warmup=[0.6], explore=[0.5])
    with pytest.raises(ValueError, match="--global-batch-size 16384 .* --per-device-batch-size 48"):
        bp.plan_phases(per_device_batch_size=(48, 16), num_processes=8)
    with pytest.raises(ValueError, match="--budget"):
        bp.plan_phases(budget="huge")
    with pytest.raises(ValueError, match="--learning-rate takes one value"):
        bp.plan_phases(learning_rates=[1, 2, 3])


def test_dry_run_prints_steps_warmup_explore_batch_and_lr_at_the_boundaries(capsys):
    pretrain = importlib.import_module(PRETRAIN)
    assert pretrain.main(["--budget", "short", "--per-device-batch-size", "32", "8", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "phase 1: 18769 optimizer steps at seq 128" in out and "phase 2: 2085 optimizer steps at seq 512" in out
    assert "warmup 1877 + explore 9384 + linear decay 7508 steps" in out
    assert "global batch 16384 = 1 processes x 32 per device x 512 accumulation steps" in out
    assert "end of explore (step 11261): 0.006" in out and "start (step 0): 0" in out


def test_lamb_step_equals_fusedlamb_where_the_semantics_coincide():
    """With betas (0, 0) FusedLAMB's bias corrections are 1: one step must match it to rounding.
    Checks: global-norm pre-scaling, decay added before the trust ratio, no trust ratio and no decay
    on bias/LayerNorm, no clamp of the weight norm (the weight's norm is > 10)."""

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = torch.nn.Linear(4, 3)
            self.LayerNorm = torch.nn.LayerNorm(3)

    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():
        model.dense.weight.mul_(40)
    grads = {name: torch.randn_like(p) * 3 for name, p in model.named_parameters()}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for name, p in model.named_parameters():
        p.grad = grads[name].clone()
    lr, wd, eps = 0.01, 0.01, 1e-6
    optimizer = bp.build_lamb(model, lr, weight_decay=wd, max_grad_norm=1.0, betas=(0.0, 0.0))
    optimizer.step()

    global_norm = torch.sqrt(sum((g**2).sum() for g in grads.values()))
    scale = max(global_norm.item() / 1.0, 1.0)
    assert before["dense.weight"].norm() > 10 and scale > 1
    for name, p in model.named_parameters():
        g = grads[name] / scale
        update = g / (g.abs() + eps)  # m / (sqrt(v) + eps) with m = g, v = g^2
        decayed = name == "dense.weight"
        if decayed:
            update = update + wd * before[name]
            ratio = before[name].norm() / update.norm()
        else:
            ratio = 1.0
        expected = before[name] - lr * ratio * update
        assert torch.allclose(p.detach(), expected, rtol=1e-5, atol=1e-7), name


def test_lamb_groups_no_decay_on_bias_and_layernorm():
    from transformers import BertConfig, BertForPreTraining

    model = BertForPreTraining(bp.bert_config("tiny", 30522))
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (128, 2)  # Google's BERT-Tiny
    decay, no_decay = bp.lamb_parameter_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.01 and not decay["adam"] and no_decay["weight_decay"] == 0 and no_decay["adam"]
    assert all(names[id(p)].endswith("bias") or "LayerNorm" in names[id(p)] for p in no_decay["params"])
    assert any("attention.self.query.weight" in names[id(p)] for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    large = bp.bert_config("large", 30522)
    assert (large.hidden_size, large.num_hidden_layers, large.num_attention_heads, large.intermediate_size) == (
        1024,
        24,
        16,
        4096,
    )
    assert isinstance(large, BertConfig)


# ----------------------------------------------------------------------------------------------
# Training runs (tiny BERT, real prose)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bert-pretrain-data")
    prepare = importlib.import_module(PREPARE)
    assert (
        prepare.main(
            [
                "--output-dir",
                str(out),
                "--source",
                "kjv",
                "--max-documents",
                "40",
                "--seq-length",
                "32",
                "64",
                "--max-predictions",
                "5",
                "10",
                "--validation-fraction",
                "0.1",
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("bert-reference")
    result = run(command(data_dir, out))
    return out, result


def expected_lrs(phase):
    plan = bp.plan_phases(phase_steps_override=STEPS, global_batch_size=[16], per_device_batch_size=[4])[phase - 1]
    schedule = KneeSchedule(plan.steps, plan.warmup_steps, plan.explore_steps)
    return [LRS[phase - 1] * schedule.factor(step) for step in range(plan.steps)]


@pytest.mark.slow
def test_two_phase_run_end_to_end(reference):
    out, result = reference
    records = metrics(out)
    assert [(r["phase"], r["step"]) for r in records] == [(1, s) for s in range(1, 9)] + [(2, s) for s in range(1, 7)]
    assert [r["global_step"] for r in records] == list(range(1, 15))
    for phase in (1, 2):
        done = json.loads((out / f"phase{phase}" / "final" / "phase_done.json").read_text())
        assert (
            done["steps"] == STEPS[phase - 1] and math.isfinite(done["eval_mlm_loss"]) and done["steps_per_second"] > 0
        )
        assert not (out / f"phase{phase}" / "checkpoints").exists()
    phase1 = [r["mlm_loss"] for r in records if r["phase"] == 1]
    assert phase1[-1] < phase1[0] - 0.2, phase1  # MLM loss falls (starts at ln 30522 = 10.3)
    assert (out / "loss_lr.png").stat().st_size > 10_000
    assert "phase 1:" in result.stderr  # the progress bar


@pytest.mark.slow
def test_lr_at_every_optimizer_step_is_knee_times_base_lr_in_1_and_2_processes(reference, data_dir, tmp_path):
    one = metrics(reference[0])
    run(command(data_dir, tmp_path, 2))
    two = metrics(tmp_path)
    for records in (one, two):
        for phase in (1, 2):
            lrs = [r["lr"] for r in records if r["phase"] == phase]
            assert lrs == pytest.approx(expected_lrs(phase), rel=1e-12, abs=1e-15)
        assert {r["global_batch"] for r in records} == {16}
    assert [r["lr"] for r in two] == [r["lr"] for r in one]
    assert [(r["phase"], r["step"]) for r in two] == [(r["phase"], r["step"]) for r in one]


@pytest.mark.slow
def test_phase_2_starts_from_phase_1_weights_with_a_fresh_optimizer(reference, data_dir, tmp_path):
    from safetensors.torch import load_file

    phase1 = reference[0] / "phase1" / "final"
    # One phase-2 step at LR 0 (its warmup starts at 0) leaves the weights where phase 2 started.
    run(
        command(
            data_dir,
            tmp_path,
            1,
            "--phase",
            "2",
            "--init-checkpoint",
            str(phase1),
            "--phase2-steps",
            "1",
            "--warmup",
            "1",
        )
    )
    start = load_file(str(phase1 / "model.safetensors"))
    after = load_file(str(tmp_path / "phase2" / "final" / "model.safetensors"))
    assert start.keys() == after.keys()
    assert all(torch.equal(start[k], after[k]) for k in start)
    fresh = load_file(str(reference[0] / "phase2" / "final" / "model.safetensors"))
    assert not all(torch.equal(start[k], fresh[k]) for k in start)  # the real phase 2 then trains
    # Phase 2 run alone from phase 1's weights logs exactly what the two-phase run logged in phase 2:
    # it depended on nothing of phase 1 but the weights (fresh LAMB state and schedule).
    alone = tmp_path / "alone"
    run(command(data_dir, alone, 1, "--phase", "2", "--init-checkpoint", str(phase1)))
    assert metrics(alone) == [r for r in metrics(reference[0]) if r["phase"] == 2]


def launch_and_stop(cmd, output_dir, phase, step, sig):
    process = subprocess.Popen(
        cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    path = Path(output_dir) / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if (phase, step) in _logged_steps(path):
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be stopped"
    if sig == signal.SIGKILL:
        os.killpg(process.pid, signal.SIGKILL)  # the launcher and the training process, as a preempted node
    else:
        for child in _children(process.pid):
            os.kill(child, sig)  # a scheduler's SIGTERM reaches the training process
    _, stderr = process.communicate(timeout=300)
    return process.returncode, stderr


def _logged_steps(path):
    try:
        return {(r["phase"], r["step"]) for r in bp.read_metrics(path)}
    except json.JSONDecodeError:  # a line being written
        return set()


def _children(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


@pytest.mark.slow
@pytest.mark.parametrize("phase", [1, 2])
def test_sigkill_then_the_same_command_resumes_with_identical_lr_and_loss(reference, data_dir, tmp_path, phase):
    cmd = command(data_dir, tmp_path)
    launch_and_stop(cmd, tmp_path, phase, 5, signal.SIGKILL)
    stopped = metrics(tmp_path)
    assert (phase, 5) in [(r["phase"], r["step"]) for r in stopped]
    resumed = run(cmd)
    assert f"phase {phase} resumes at optimizer step 3" in resumed.stderr
    assert metrics(tmp_path) == metrics(reference[0])  # same LR and loss at every step, none repeated or skipped


@pytest.mark.slow
def test_sigterm_saves_the_state_at_once_and_the_same_command_resumes(reference, data_dir, tmp_path):
    cmd = command(data_dir, tmp_path)
    returncode, stderr = launch_and_stop(cmd, tmp_path, 1, 4, signal.SIGTERM)
    assert returncode != 0  # stopped, not finished
    stopped_at = max(r["step"] for r in metrics(tmp_path))
    assert f"SIGTERM: saved the state at phase 1 step {stopped_at}" in stderr
    assert (tmp_path / "phase1" / "checkpoints" / f"step_{stopped_at:08d}").is_dir()
    other_split = [
        *cmd[: cmd.index("--per-device-batch-size") + 1],
        "2",
        *cmd[cmd.index("--per-device-batch-size") + 2 :],
    ]
    refused = subprocess.run(other_split, env=ENV, capture_output=True, text=True, timeout=600, check=False)
    assert refused.returncode != 0 and "was saved under another plan" in refused.stderr
    resumed = run(cmd)
    assert f"phase 1 resumes at optimizer step {stopped_at}" in resumed.stderr
    assert metrics(tmp_path) == metrics(reference[0])


# ----------------------------------------------------------------------------------------------
# Bad input stops before the first step, naming the option


def bad(argv, capsys):
    pretrain = importlib.import_module(PRETRAIN)
    with pytest.raises(SystemExit) as stop:
        pretrain.main(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err


def test_bad_input_names_the_option(data_dir, tmp_path, capsys):
    base = ["--data-dir", str(data_dir), "--output-dir", str(tmp_path / "run"), "--model-config", tiny_config(data_dir)]
    assert "--warmup + --explore = 5 + 5 steps exceeds phase 1's 8 steps" in bad(
        [*base, "--phase1-steps", "8", "--warmup", "0.6", "--explore", "0.6"], capsys
    )
    assert "--global-batch-size 10 (phase 1) is not a multiple of 1 processes x --per-device-batch-size 4" in bad(
        [*base, "--global-batch-size", "10", "--per-device-batch-size", "4"], capsys
    )
    (tmp_path / "novocab").mkdir()
    assert "--data-dir" in bad(["--data-dir", str(tmp_path / "novocab"), "--output-dir", str(tmp_path / "run")], capsys)
    assert "--phase 2 needs phase 1's weights" in bad([*base, "--phase", "2"], capsys)
    assert "--model-config" in bad([*base[:-1], "nonexistent.json"], capsys)
    assert "--dry-run" in bad(["--budget", "short"], capsys)
    assert not (tmp_path / "run").exists()
    prepare = importlib.import_module(PREPARE)
    with pytest.raises(SystemExit):
        prepare.main(["--output-dir", str(tmp_path / "data"), "--vocab-file", str(tmp_path / "missing-vocab.txt")])
    assert "--vocab-file" in capsys.readouterr().err
