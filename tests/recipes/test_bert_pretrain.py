"""BERT pretraining under accelerate: the two-phase plan, LAMB, the LR per optimizer step in 1 and 2
processes, phase 2 from phase 1's weights, resuming after SIGKILL / SIGTERM, and bad input."""

import importlib
import json
import math
import os
import shutil
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
    # NVIDIA's PolyWarmUpScheduler, stepped before the optimizer: update k uses p = (k + 1) / T
    assert poly[0].factor(999) == pytest.approx((1000 / 7038) / 0.2843)
    assert poly[0].factor(2999) == pytest.approx((1 - 3000 / 7038) ** 0.5)
    assert poly[1].factor(1562) == 0 and poly[1].factor(0) > 0


def nvidia_poly_warmup_lrs(base_lr, total_steps, warmup, degree=0.5):
    """The LR of each update as NVIDIA's run_pretraining.py sets it: before optimizer step k (0-based)
    it calls ``PolyWarmUpScheduler.step()``, which sets ``last_epoch = param_group["step"] + 1 = k + 1``
    (FusedLAMB's count of completed steps, plus one) and then ``lr = base * get_lr()`` with progress
    ``last_epoch / total_steps``."""
    lrs = []
    for completed in range(total_steps):
        last_epoch = completed + 1
        progress = last_epoch / total_steps
        factor = progress / warmup if progress < warmup else (1.0 - progress) ** degree
        lrs.append(base_lr * factor)
    return lrs


@pytest.mark.parametrize("steps,warmup", [(20, 0.2843), (13, 0.128), (7, 0.0)])
def test_poly_schedule_sets_the_lr_of_every_update_as_nvidias_run_pretraining(steps, warmup):
    plan = bp.plan_phases(budget=100, phase_steps_override=(steps, None), schedule="poly", warmup=[warmup])[0]
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=plan.learning_rate)
    scheduler = plan.build_scheduler(optimizer)
    applied = []
    for _ in range(plan.steps):
        applied.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = nvidia_poly_warmup_lrs(plan.learning_rate, steps, warmup)
    assert applied == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert applied[0] > 0 and applied[-1] == 0
    assert [plan.learning_rate_at(k) for k in range(steps)] == pytest.approx(expected, rel=1e-12, abs=1e-15)


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


def reference_lamb_steps(params, grads_per_step, *, lr, wd, betas, eps, max_grad_norm, decayed, clip=True):
    """LAMB as the recipe documents it, step by step in plain tensor arithmetic: gradients scaled by
    ``min(max_grad_norm / (global norm + eps), 1)``, Adam moments without bias correction, decay added
    to the update, trust ratio ``||w|| / (||u|| + eps)`` on decayed tensors only."""
    beta1, beta2 = betas
    weights = {name: w.clone() for name, w in params.items()}
    m = {name: torch.zeros_like(w) for name, w in weights.items()}
    v = {name: torch.zeros_like(w) for name, w in weights.items()}
    for grads in grads_per_step:
        norm = torch.sqrt(sum((g**2).sum() for g in grads.values()))
        scale = min(max_grad_norm / (norm.item() + eps), 1.0) if clip else 1.0
        for name, w in weights.items():
            g = grads[name] * scale
            m[name] = beta1 * m[name] + (1 - beta1) * g
            v[name] = beta2 * v[name] + (1 - beta2) * g * g
            update = m[name] / (v[name].sqrt() + eps)
            ratio = 1.0
            if name in decayed:
                update = update + wd * w
                ratio = (w.norm() / (update.norm() + eps)).item()
            weights[name] = w - lr * ratio * update
    return weights


def test_lamb_with_real_betas_clips_by_the_global_norm_of_each_step():
    """Real betas (0.9, 0.999) over 3 steps whose global gradient norms are 6, 0.25 and 3: the moments
    mix differently scaled gradients, so the update depends on the pre-normalisation (a step skipped or
    clipped per tensor would change it; the test checks that it would)."""

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = torch.nn.Linear(4, 3)
            self.LayerNorm = torch.nn.LayerNorm(3)

    torch.manual_seed(1)
    model = Tiny()
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    grads_per_step = []
    for target_norm in (6.0, 0.25, 3.0):
        grads = {name: torch.randn_like(p) for name, p in params.items()}
        norm = torch.sqrt(sum((g**2).sum() for g in grads.values()))
        grads_per_step.append({name: g * (target_norm / norm) for name, g in grads.items()})
    lr, wd, eps, betas = 0.01, 0.01, 1e-6, (0.9, 0.999)
    optimizer = bp.build_lamb(model, lr, weight_decay=wd, max_grad_norm=1.0, betas=betas, eps=eps)
    for grads in grads_per_step:
        for name, p in model.named_parameters():
            p.grad = grads[name].clone()
        optimizer.step()

    settings = dict(lr=lr, wd=wd, betas=betas, eps=eps, max_grad_norm=1.0, decayed={"dense.weight"})
    expected = reference_lamb_steps(params, grads_per_step, **settings)
    unclipped = reference_lamb_steps(params, grads_per_step, **settings, clip=False)
    for name, p in model.named_parameters():
        assert torch.allclose(p.detach(), expected[name], rtol=1e-5, atol=1e-8), name
    moved = {name: (expected[name] - unclipped[name]).abs().max().item() for name in params}
    assert max(moved.values()) > 1e-4, moved  # without the clipping the result is measurably different


def test_phase_two_lamb_starts_from_the_carried_moments_with_its_step_counter_reset():
    torch.manual_seed(2)
    model = torch.nn.Linear(3, 2)
    phase1 = bp.build_lamb(model, 6e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(phase1, lambda step: 0.5)
    for _ in range(3):
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        phase1.step()
        scheduler.step()
    saved = phase1.state_dict()
    moments = {
        id(p): (phase1.state[p]["exp_avg"].clone(), phase1.state[p]["exp_avg_sq"].clone()) for p in model.parameters()
    }
    assert all(group["step"] == 3 for group in saved["param_groups"])

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    grads = {name: torch.randn_like(p) * 0.1 for name, p in model.named_parameters()}
    phase2 = bp.build_lamb(model, 4e-3)
    bp.carry_optimizer_state(phase2, saved, 4e-3)
    assert all(group["lr"] == 4e-3 and group["step"] == 0 for group in phase2.param_groups)
    assert all(torch.equal(phase2.state[p]["exp_avg"], moments[id(p)][0]) for p in model.parameters())
    assert saved["param_groups"][0]["step"] == 3  # the saved state itself is left as it was
    for name, p in model.named_parameters():
        p.grad = grads[name].clone()
    phase2.step()

    # The first phase-2 update from the carried moments, by hand (no bias correction; see build_lamb).
    beta1, beta2, eps, lr = 0.9, 0.999, 1e-6, 4e-3
    norm = torch.sqrt(sum((g**2).sum() for g in grads.values()))
    scale = min(1.0 / (norm.item() + eps), 1.0)
    for name, p in model.named_parameters():
        m_saved, v_saved = moments[id(p)]
        g = grads[name] * scale
        update = (beta1 * m_saved + (1 - beta1) * g) / ((beta2 * v_saved + (1 - beta2) * g * g).sqrt() + eps)
        ratio = 1.0
        if name == "weight":
            update = update + 0.01 * before[name]
            ratio = (before[name].norm() / (update.norm() + eps)).item()
        assert torch.allclose(p.detach(), before[name] - lr * ratio * update, rtol=1e-5, atol=1e-8), name


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
def test_phase_2_starts_from_phase_1_weights_and_lamb_moments(reference, data_dir, tmp_path):
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
    # Phase 2 run alone from phase 1's final folder logs exactly what the two-phase run logged in phase 2:
    # it depended on nothing of phase 1 but the weights and the LAMB moments saved beside them.
    assert (phase1 / "optimizer.pt").is_file()
    alone = tmp_path / "alone"
    run(command(data_dir, alone, 1, "--phase", "2", "--init-checkpoint", str(phase1)))
    assert metrics(alone) == [r for r in metrics(reference[0]) if r["phase"] == 2]
    # With new moments (--phase2-optimizer fresh) the same LRs train another trajectory.
    fresh_moments = tmp_path / "fresh-moments"
    run(
        command(
            data_dir, fresh_moments, 1, "--phase", "2", "--init-checkpoint", str(phase1), "--phase2-optimizer", "fresh"
        )
    )
    assert [r["lr"] for r in metrics(fresh_moments)] == [r["lr"] for r in metrics(alone)]
    assert [r["mlm_loss"] for r in metrics(fresh_moments)][1:] != [r["mlm_loss"] for r in metrics(alone)][1:]
    # A weights-only folder cannot carry moments: refused before training, naming the way out.
    weights_only = tmp_path / "weights-only"
    shutil.copytree(phase1, weights_only, ignore=shutil.ignore_patterns("optimizer.pt"))
    refused = subprocess.run(
        command(data_dir, tmp_path / "refused", 1, "--phase", "2", "--init-checkpoint", str(weights_only)),
        env=ENV, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert refused.returncode != 0 and "--phase2-optimizer fresh" in refused.stderr


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
    assert f"saved the state at phase 1 step {stopped_at}" in stderr
    assert (tmp_path / "phase1" / "checkpoints" / f"step_{stopped_at:08d}").is_dir()
    other_split = [
        *cmd[: cmd.index("--per-device-batch-size") + 1],
        "2",
        *cmd[cmd.index("--per-device-batch-size") + 2 :],
    ]
    refused = subprocess.run(other_split, env=ENV, capture_output=True, text=True, timeout=600, check=False)
    assert refused.returncode != 0 and "was saved under another plan" in refused.stderr
    for option, value, saved in (
        ("--seed", "7", "42"),
        ("--weight-decay", "0.02", "0.01"),
        ("--max-grad-norm", "2", "1.0"),
    ):
        other = subprocess.run([*cmd, option, value], env=ENV, capture_output=True, text=True, timeout=600, check=False)
        assert (
            other.returncode != 0
            and f"{option} {saved} (saved) vs {float(value) if option != '--seed' else value} (now)" in other.stderr
        )
    resumed = run(cmd)
    assert f"phase 1 resumes at optimizer step {stopped_at}" in resumed.stderr
    assert metrics(tmp_path) == metrics(reference[0])


@pytest.fixture(scope="module")
def small_data_dir(tmp_path_factory):
    """Few documents: phase 1 holds a handful of optimizer steps per epoch, so 8 steps cross an epoch."""
    out = tmp_path_factory.mktemp("bert-small-data")
    prepare = importlib.import_module(PREPARE)
    argv = ["--output-dir", str(out), "--source", "kjv", "--max-documents", "5", "--seq-length", "32", "64"]
    assert prepare.main([*argv, "--max-predictions", "5", "10", "--validation-fraction", "0.2"]) == 0
    return out


@pytest.mark.slow
def test_sigterm_mid_accumulation_in_2_processes_resumes_exactly_across_an_epoch_boundary(small_data_dir, tmp_path):
    """2 gloo processes x 1 sequence x 8 accumulation steps: SIGTERM is acted on after the micro-batch that is
    running (not after the whole optimizer step), the state of the last completed step is saved, and the
    same command continues into the next epoch with the uninterrupted run's LR and losses."""
    split = ("--per-device-batch-size", "1")
    steps_per_epoch = len(bp.load_phase_data(small_data_dir, 1)["train"]) // 16
    assert 1 <= steps_per_epoch < STEPS[0] - 1
    reference_dir = tmp_path / "reference"
    run(command(small_data_dir, reference_dir, 2, *split))
    cmd = command(small_data_dir, tmp_path / "stopped", 2, *split)
    returncode, stderr = launch_and_stop(cmd, tmp_path / "stopped", 1, steps_per_epoch + 1, signal.SIGTERM)
    assert returncode != 0
    stopped_at = max(r["step"] for r in metrics(tmp_path / "stopped"))
    assert stopped_at >= steps_per_epoch + 1
    assert f"SIGTERM (mid-accumulation): saved the state at phase 1 step {stopped_at}" in stderr
    resumed = run(cmd)
    assert f"phase 1 resumes at optimizer step {stopped_at}" in resumed.stderr
    assert metrics(tmp_path / "stopped") == metrics(reference_dir)


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


@pytest.mark.slow
def test_squad_fine_tunes_from_what_pretraining_writes(reference, tmp_path):
    """The paper scores pretraining by SQuAD F1: phase 2's final folder (weights + tokenizer) is the
    --model of the SQuAD recipe, as documented in scripts/squad/README.md."""
    from squad_fixtures import write_squad_files

    train, dev = write_squad_files(tmp_path / "squad")
    output_dir = tmp_path / "squad-run"
    pretrained = reference[0] / "phase2" / "final"
    command = [
        *accelerate_launcher(1),
        "-m",
        "scripts.squad.finetune",
        "--model",
        str(pretrained),
        "--train-file",
        str(train),
        "--validation-file",
        str(dev),
        "--max-seq-length",
        "64",
        "--doc-stride",
        "16",
        "--global-batch-size",
        "4",
        "--max-train-steps",
        "4",
        "--explore",
        "0.5",
        "--output-dir",
        str(output_dir),
        "--no-save-model",
    ]
    run(command)
    results = json.loads((output_dir / "results.json").read_text())
    assert results["model"] == str(pretrained) and results["total_steps"] == 4
    documented = (ROOT / "scripts" / "squad" / "README.md").read_text()
    assert f"-m scripts.squad.finetune --model runs/knee-short/{pretrained.relative_to(reference[0])} " in documented
    final = results["final"]
    assert 0 <= final["exact_match"] <= final["f1"] <= 100 and final["num_examples"] > 0


@pytest.mark.slow
def test_a_multi_node_run_stops_before_training_when_its_processes_do_not_share_the_output_dir(data_dir, tmp_path):
    """Each of 2 processes in its own working directory with a relative --output-dir: what nodes without a
    shared file system see. Process 0 alone writes the states every process resumes from, so the run stops
    at once, naming the process that cannot see them."""
    launcher = accelerate_launcher(2)
    cmd = command(data_dir, "run", 2)
    cmd = [*launcher, str(ROOT / "tests" / "rank_directory.py"), str(tmp_path), *cmd[len(launcher) + 1 :]]
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode != 0
    assert "--output-dir run is not shared: process 1 on " in result.stderr
    assert not (tmp_path / "rank0" / "run" / "metrics.jsonl").exists(), "stopped before the first step"
    assert not list((tmp_path / "rank0" / "run").glob(".shared-check-*"))


@pytest.mark.slow
def test_updates_the_loss_scaler_skips_are_not_steps_of_the_plan(reference, data_dir, tmp_path):
    """fp16 overflows (forced: attempts 2 and 3 of phase 1, the 2nd of phase 2) advance neither the schedule
    nor the step count: each phase still makes its planned number of real updates, at the plan's LRs."""
    double = ROOT / "tests" / "loss_scaler_double.py"
    cmd = command(data_dir, tmp_path)
    launcher = accelerate_launcher(1)
    cmd = [*launcher, str(double), "2,3,12", *cmd[len(launcher) + 1 :]]
    result = run(cmd)
    records, expected = metrics(tmp_path), metrics(reference[0])
    assert [(r["phase"], r["step"]) for r in records] == [(r["phase"], r["step"]) for r in expected]
    assert [r["lr"] for r in records] == [r["lr"] for r in expected]
    assert [r["skipped_steps"] for r in records if r["phase"] == 1] == [0] + [2] * (STEPS[0] - 1)
    assert [r["skipped_steps"] for r in records if r["phase"] == 2] == [0] + [1] * (STEPS[1] - 1)
    for phase, skipped in ((1, 2), (2, 1)):
        done = json.loads((tmp_path / f"phase{phase}" / "final" / "phase_done.json").read_text())
        assert done["steps"] == done["steps_this_run"] == STEPS[phase - 1] and done["skipped_steps"] == skipped
    assert "update 2 skipped by the loss scaler (2 skipped so far)" in result.stderr


@pytest.mark.slow
def test_gradient_norm_every_step_and_validation_every_eval_steps_leave_training_unchanged(
    reference, data_dir, tmp_path
):
    run(command(data_dir, tmp_path, 1, "--eval-steps", "4"))
    records = metrics(tmp_path)
    assert records == metrics(reference[0])  # scoring the validation set mid-phase changes no step
    assert all(r["grad_norm"] > 0 and r["loss_scale"] is None for r in records)  # fp32 here: no loss scale
    evaluations = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [(e["phase"], e["step"]) for e in evaluations] == [(1, 4), (2, 4)]
    assert all(math.isfinite(e["eval_mlm_loss"]) and 0 <= e["eval_nsp_accuracy"] <= 1 for e in evaluations)
