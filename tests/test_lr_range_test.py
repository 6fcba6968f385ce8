"""knee_plugins.lr_range_test: the ramp, the smoothing, the stop, the suggestion rule, the restore;
through a real HF Trainer and a 1-process `accelerate launch`."""

import json
import math
import subprocess

import pytest
import torch
from tiny_bert import save_tiny_bert
from torch import nn

from knee_plugins.lr_range_test import (
    LRRangeTestResult,
    lr_range_test,
    smooth,
    suggest_lr,
    trainer_lr_range_test,
)


def test_smoothing_is_torch_lr_finders_moving_average():
    assert smooth([4.0, 2.0, 2.0], 0.5) == [4.0, 3.0, 2.5]
    assert smooth([4.0, 2.0], 0.0) == [4.0, 2.0]
    with pytest.raises(ValueError, match="smoothing"):
        smooth([1.0], 1.0)


def test_suggestion_is_the_steepest_descent_after_the_skipped_ends():
    lrs = [10 ** (-7 + i / 4) for i in range(40)]
    losses = [5.0 - 4.0 / (1 + math.exp(-(i - 22))) for i in range(40)]  # falls fastest at point 22
    assert suggest_lr(lrs, losses) == lrs[22]
    # a steeper drop inside the skipped start is ignored
    losses[1] = -100.0
    assert suggest_lr(lrs, losses, skip_start=10) == lrs[22]
    assert suggest_lr(lrs[:16], losses[:16]) is None  # fewer than skip_start + skip_end + 2 points
    result = LRRangeTestResult(
        lrs=lrs, losses=losses, start_lr=1e-7, end_lr=1.0, num_iter=40, smoothing=0.05, diverge_threshold=5
    )
    assert "steepest" in result.rule and "first 10" in result.rule and "last 5" in result.rule
    assert result.min_loss_lr == lrs[1]


def regression_problem():
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = x @ torch.randn(8, 1) + 0.1 * torch.randn(256, 1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True)
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.1), nn.Linear(16, 1))
    return model, loader


def mse(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def test_range_test_ramps_exponentially_stops_on_divergence_and_restores_everything():
    model, loader = regression_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3)  # an attached scheduler is fine
    mse(model, next(iter(loader))).backward()
    optimizer.step()  # momentum buffers to restore
    model.eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer_state = {k: v["momentum_buffer"].clone() for k, v in optimizer.state_dict()["state"].items()}
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    rng = torch.get_rng_state()

    result = lr_range_test(model, optimizer, loader, mse, start_lr=1e-5, end_lr=10.0, num_iter=80)

    assert result.diverged and 20 < len(result.lrs) < 80  # SGD on a quadratic blows up well before lr 10
    assert result.losses[-1] > 5 * min(result.losses)
    for i, lr in enumerate(result.lrs):
        assert lr == pytest.approx(1e-5 * (10.0 / 1e-5) ** (i / 79), rel=1e-9)
    assert result.suggestion is not None and result.lrs[10] <= result.suggestion <= result.lrs[-6]
    assert not model.training
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    restored = optimizer.state_dict()["state"]
    assert all(torch.equal(optimizer_state[k], restored[k]["momentum_buffer"]) for k in optimizer_state)
    assert [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups] == groups
    assert torch.equal(torch.get_rng_state(), rng)
    scheduler.step()  # still drives the optimizer
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)


def test_range_test_rejects_bad_arguments():
    model, loader = regression_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for kwargs, name in [
        (dict(start_lr=1.0, end_lr=0.1), "start_lr"),
        (dict(num_iter=1), "num_iter"),
        (dict(diverge_threshold=1.0), "diverge_threshold"),
        (dict(smoothing=1.5), "smoothing"),
    ]:
        with pytest.raises(ValueError, match=name):
            lr_range_test(model, optimizer, loader, mse, **kwargs)


@pytest.fixture(scope="module")
def tiny_mlm_dir(tmp_path_factory):
    """A 1-layer BERT masked LM with the real MiniLM tokenizer."""
    from transformers import BertForMaskedLM

    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert-mlm"), BertForMaskedLM)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    from scripts.common.hf_data import kjv_verses

    path = tmp_path_factory.mktemp("text") / "train.txt"
    path.write_text("\n".join(verse.text for verse in kjv_verses()[:256]) + "\n")
    return path


@pytest.mark.slow
def test_trainer_range_test_leaves_the_trainer_ready_to_train(tmp_path, tiny_mlm_dir, text_file):
    from transformers import Trainer, TrainingArguments

    from knee_plugins.sharpness import hf_text_model_and_data

    model, features, collate = hf_text_model_and_data(tiny_mlm_dir, text_file, max_length=32)
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        max_steps=3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
    )
    trainer = Trainer(model=model, args=args, train_dataset=features, data_collator=collate)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    result = trainer_lr_range_test(trainer, start_lr=1e-6, end_lr=10.0, num_iter=40)

    assert len(result.lrs) >= 20 and result.lrs[0] == pytest.approx(1e-6)
    assert result.suggestion is not None and "steepest" in result.rule
    assert trainer.optimizer is None  # train() builds its own optimizer and scheduler
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    path = result.save(tmp_path / "range")
    assert json.loads(path.read_text())["suggestion"] == result.suggestion
    assert (tmp_path / "range" / "lr_range_test.png").stat().st_size > 0
    trainer.train()
    assert trainer.state.global_step == 3
    assert trainer.optimizer.param_groups[0]["initial_lr"] == pytest.approx(1e-3)


@pytest.mark.slow
def test_accelerate_launch_runs_the_range_test_in_an_accelerate_loop(tmp_path, tiny_mlm_dir, text_file):
    from accelerate_launch import CPU_ENV, accelerate_launcher

    out = tmp_path / "range"
    command = [*accelerate_launcher(1), "-m", "knee_plugins.lr_range_test", "--hf-model", str(tiny_mlm_dir)]
    command += ["--data", str(text_file), "--batch-size", "8", "--max-length", "32", "--num-iter", "40"]
    command += ["--start-lr", "1e-6", "--end-lr", "10", "--output-dir", str(out)]
    proc = subprocess.run(command, env=CPU_ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    record = json.loads((out / "lr_range_test.json").read_text())
    assert record["extra"]["num_processes"] == 1
    assert summary["suggestion"] == record["suggestion"] and record["suggestion"] in record["lrs"]
    assert record["lrs"][0] == pytest.approx(1e-6)
    ratios = [b / a for a, b in zip(record["lrs"], record["lrs"][1:], strict=False)]
    assert ratios == pytest.approx([(10 / 1e-6) ** (1 / 39)] * len(ratios), rel=1e-9)
    assert (out / "lr_range_test.png").stat().st_size > 0
