"""KneeLR follows torch's LRScheduler conventions and resumes exactly."""

import io
import pickle

import pytest
import torch

from knee_plugins import KneeLR, knee_factor


def make_optimizer(lrs=(10.0,)):
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def trace(scheduler, optimizer, steps):
    lrs = []
    for _ in range(steps):
        lrs.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return lrs


def test_hand_checked_values_at_lr_10():
    optimizer = make_optimizer()
    scheduler = KneeLR(optimizer, total_steps=10, warmup_steps=2, explore_ratio=0.5)
    lrs = [round(lr[0], 4) for lr in trace(scheduler, optimizer, 12)]
    assert lrs == [0.0, 5.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 6.6667, 3.3333, 0.0, 0.0]
    assert scheduler.get_last_lr() == [0.0]


def test_each_param_group_keeps_its_own_base_lr():
    optimizer = make_optimizer((1e-3, 5e-4, 0.0))
    scheduler = KneeLR(optimizer, total_steps=20, warmup_steps=4, explore_steps=6, min_lr_ratio=0.1)
    for step, lrs in enumerate(trace(scheduler, optimizer, 22)):
        factor = knee_factor(step, total_steps=20, warmup_steps=4, explore_steps=6, min_lr_ratio=0.1)
        assert lrs == pytest.approx([1e-3 * factor, 5e-4 * factor, 0.0], rel=1e-12, abs=0)


def test_durations_in_epochs():
    optimizer = make_optimizer()
    scheduler = KneeLR(optimizer, total_steps="5ep", explore_steps="4ep", steps_per_epoch=3)
    assert (scheduler.total_steps, scheduler.explore_steps) == (15, 12)
    assert [round(lr[0], 6) for lr in trace(scheduler, optimizer, 16)][11:] == [10.0, 10.0, 6.666667, 3.333333, 0.0]


@pytest.mark.parametrize("optimizer_state_first", [True, False])
@pytest.mark.parametrize("stop_at", [0, 1, 3, 7, 9, 12])
def test_state_dict_resume_gives_the_uninterrupted_trajectory(stop_at, optimizer_state_first):
    kwargs = dict(total_steps=12, warmup_steps=3, explore_steps=4, min_lr_ratio=0.05)
    optimizer = make_optimizer((10.0, 2.0))
    scheduler = KneeLR(optimizer, **kwargs)
    uninterrupted = trace(scheduler, optimizer, 14)

    optimizer = make_optimizer((10.0, 2.0))
    scheduler = KneeLR(optimizer, **kwargs)
    first = trace(scheduler, optimizer, stop_at)
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed_optimizer = make_optimizer((10.0, 2.0))
    if optimizer_state_first:
        resumed_optimizer.load_state_dict(saved["optimizer"])
    resumed = KneeLR(resumed_optimizer, **kwargs)
    if not optimizer_state_first:
        resumed_optimizer.load_state_dict(saved["optimizer"])
    resumed.load_state_dict(saved["scheduler"])
    second = trace(resumed, resumed_optimizer, 14 - stop_at)
    assert first + second == uninterrupted


def test_closed_form_step_with_epoch_and_last_epoch_resume():
    optimizer = make_optimizer()
    scheduler = KneeLR(optimizer, total_steps=10, explore_steps=4)
    with pytest.warns(UserWarning):
        scheduler.step(7)
    assert scheduler.get_last_lr() == [pytest.approx(5.0)]
    optimizer = make_optimizer()
    optimizer.param_groups[0]["initial_lr"] = 10.0
    scheduler = KneeLR(optimizer, total_steps=10, explore_steps=4, last_epoch=7)
    assert scheduler.last_epoch == 8
    assert optimizer.param_groups[0]["lr"] == pytest.approx(10.0 * 2 / 6)


def test_is_picklable_and_state_dict_holds_only_numbers():
    optimizer = make_optimizer()
    scheduler = KneeLR(optimizer, total_steps=10, warmup_steps=2)
    clone = pickle.loads(pickle.dumps(scheduler))
    assert clone.schedule == scheduler.schedule
    state = scheduler.state_dict()
    assert {"total_steps", "warmup_steps", "explore_steps", "min_lr_ratio", "last_epoch"} <= set(state)
    assert "optimizer" not in state


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(total_steps=0), r"^total_steps must be > 0"),
        (dict(total_steps=-3), r"^total_steps must be >= 0"),
        (dict(total_steps=10, warmup_steps=-1), r"^warmup_steps must be >= 0"),
        (
            dict(total_steps=10, warmup_steps=6, explore_steps=6),
            r"^warmup_steps \(6 steps\) \+ explore_steps \(6 steps\) = 12 steps exceed total_steps = 10",
        ),
        (dict(total_steps=10, warmup_steps=6), r"^warmup_steps \(6 steps\) \+ explore_ratio \(5 steps\)"),
        (dict(total_steps=10, explore_ratio=2.0), r"^explore_ratio=2.0"),
        (dict(total_steps=10, explore_steps=-2), r"^explore_steps must be >= 0"),
        (dict(total_steps=10, min_lr_ratio=1.5), r"^min_lr_ratio must be in \[0, 1\)"),
        (dict(total_steps=10, explore_steps="3ep"), r"^explore_steps is given in epochs.*pass steps_per_epoch"),
        (dict(total_steps=10, explore_steps="3ep", steps_per_epoch=0), r"^steps_per_epoch must be > 0"),
    ],
)
def test_bad_input_fails_before_touching_the_optimizer(kwargs, message):
    optimizer = make_optimizer()
    with pytest.raises(ValueError, match=message):
        KneeLR(optimizer, **kwargs)
    assert optimizer.param_groups[0]["lr"] == 10.0
    assert "initial_lr" not in optimizer.param_groups[0]
