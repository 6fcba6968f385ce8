"""In-process checks of the plugin's schedulers and optimizer with fairseq's real registries."""

import math

import pytest
import torch
from fairseq.optim import build_optimizer
from knee_fairseq_helpers import LR, make, trace
from omegaconf import OmegaConf

from knee_plugins.schedule import knee_factor


def test_knee_equals_the_core_exactly():
    sched, _ = make("knee", max_update=20, warmup_updates=3, explore_updates=7)
    want = [LR * knee_factor(t, total_steps=20, warmup_steps=3, explore_steps=7) for t in range(25)]
    assert trace(sched, range(25)) == want


@pytest.mark.parametrize("decay_type", ["linear", "cosine", "1-sqrt"])
def test_knee_decay_types_equal_the_core(decay_type):
    sched, _ = make("knee", max_update=20, warmup_updates=3, explore_updates=7, end_lr_ratio=0.1,
                    decay_type=decay_type)  # fmt: skip
    want = [LR * knee_factor(t, total_steps=20, warmup_steps=3, explore_steps=7, min_lr_ratio=0.1,
                             decay_type=decay_type) for t in range(25)]  # fmt: skip
    assert trace(sched, range(25)) == want
    assert sched.schedule.decay_type == decay_type


def test_knee_hand_checked_table():
    sched, _ = make("knee", max_update=10, warmup_updates=2, explore_updates=4)
    assert trace(sched, range(11)) == [0, 5, 10, 10, 10, 10, 10, 7.5, 5, 2.5, 0]


def test_knee_warmup_init_lr_and_floor():
    sched, _ = make("knee", max_update=10, warmup_updates=2, explore_updates=4,
                    warmup_init_lr=2.0, end_learning_rate=2.0)  # fmt: skip
    assert trace(sched, [0, 1, 2, 6, 8, 10, 12]) == pytest.approx([2, 6, 10, 10, 6, 2, 2], rel=1e-12)


def test_knee_default_explore_is_half_the_budget():
    sched, _ = make("knee", max_update=8)
    assert trace(sched, range(9)) == [10, 10, 10, 10, 10, 7.5, 5, 2.5, 0]


def test_epoch_budget_waits_for_the_epoch_length_and_survives_state_dict():
    sched, _ = make("knee", max_epoch=5, explore_epochs=4, update_freq=(2,))
    assert sched.schedule is None
    with pytest.raises(ValueError, match="updates per epoch is unknown"):
        sched.step_begin_epoch(1)
    sched.set_epoch_length(1, 7)  # 7 batches at --update-freq 2: 4 updates per epoch
    assert (sched.schedule.total_steps, sched.schedule.explore_steps) == (20, 16)
    resumed, _ = make("knee", max_epoch=5, explore_epochs=4, update_freq=(2,))
    resumed.load_state_dict(sched.state_dict())
    resumed.set_epoch_length(3, 9)  # a different length later keeps the stored schedule
    assert trace(resumed, range(21)) == trace(sched, range(21))


def test_both_budgets_use_the_first_to_end():
    sched, _ = make("knee", max_update=100, max_epoch=3, explore_ratio=0.0)
    sched.set_epoch_length(1, 10)
    assert sched.schedule.total_steps == 30


@pytest.mark.parametrize("three_phase, anneal", [(False, "cos"), (True, "linear")])
def test_one_cycle_equals_torch_one_cycle_lr(three_phase, anneal):
    total, peak = 50, 2.5e-4
    sched, _ = make("one_cycle", lr=peak, max_update=total, pct_start=0.3, div_factor=10.0,
                    final_div_factor=100.0, three_phase=three_phase, anneal_strategy=anneal)  # fmt: skip
    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    ref = torch.optim.lr_scheduler.OneCycleLR(
        ref_opt, max_lr=peak, total_steps=total, pct_start=0.3, div_factor=10.0,
        final_div_factor=100.0, three_phase=three_phase, anneal_strategy=anneal,
        cycle_momentum=False,
    )  # fmt: skip
    want = []
    for _ in range(total):
        want.append(ref.get_last_lr()[0])
        ref_opt.step()
        ref.step() if len(want) < total else None
    got = trace(sched, range(total))
    assert got == pytest.approx(want, rel=1e-12, abs=0)
    assert sched.step_update(total + 5) == pytest.approx(peak / 10.0 / 100.0)


def test_polynomial_decay_is_the_papers_linear_baseline():
    """fairseq's polynomial_decay, power 1, end 0: linear from the seed LR to 0 = Knee, explore 0."""
    poly, _ = make("polynomial_decay", max_update=20, power=1.0, end_learning_rate=0.0,
                   warmup_updates=0, total_num_update=20, force_anneal=None)  # fmt: skip
    knee, _ = make("knee", max_update=20, explore_updates=0)
    assert trace(poly, range(21)) == pytest.approx(trace(knee, range(21)), rel=1e-12)
    assert poly.step_update(0) == LR and poly.step_update(20) == 0.0


def test_cosine_is_the_papers_cosine_baseline():
    """fairseq's cosine with its defaults: from the seed LR to --min-lr 0 over --max-update."""
    cos, _ = make("cosine", max_update=20, warmup_updates=0, warmup_init_lr=-1, min_lr=0.0,
                  t_mult=1.0, lr_period_updates=-1, lr_shrink=0.1)  # fmt: skip
    got = trace(cos, range(20))
    want = [LR * 0.5 * (1 + math.cos(math.pi * t / 20)) for t in range(20)]
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("mode, decoupled", [("decoupled", True), ("l2", False)])
def test_radam_wraps_torch_radam(mode, decoupled):
    param = torch.nn.Parameter(torch.ones(3))
    cfg = OmegaConf.create({"_name": "radam", "lr": [3e-4], "weight_decay": 1e-4,
                            "radam_weight_decay_mode": mode})  # fmt: skip
    opt = build_optimizer(cfg, [param])
    assert isinstance(opt.optimizer, torch.optim.RAdam)
    group = opt.optimizer.param_groups[0]
    assert group["betas"] == (0.9, 0.999) and group["weight_decay"] == 1e-4
    assert group["decoupled_weight_decay"] is decoupled
