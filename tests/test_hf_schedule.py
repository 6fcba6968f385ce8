"""get_knee_schedule_with_warmup against transformers' own get_wsd_schedule, HF test-harness style."""

import io
import pickle

import pytest
import torch
from transformers import get_wsd_schedule

from knee_plugins import KneeLR, get_knee_schedule_with_warmup, knee_factor
from knee_plugins.schedule import DECAY_TYPES


def make_optimizer(lr=10.0, groups=1):
    return torch.optim.AdamW(
        [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr * (g + 1)} for g in range(groups)]
    )


def lr_trace(scheduler, steps):
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.get_last_lr())
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


# WSD warms up from min_lr_ratio, Knee from 0 (test_warmup_starts_from_zero_with_a_floor): with a floor,
# compare without warmup.
WSD_CASES = [
    (total, warmup, ratio, floor)
    for total in (1, 5, 10, 37, 200)
    for warmup in (0, 1, 4)
    for ratio in (0.0, 0.3, 0.5, 0.8)
    for floor in (0.0, 0.2)
    if warmup + round(ratio * total) <= total and not (floor and warmup)
]


@pytest.mark.parametrize("decay_type", DECAY_TYPES)
@pytest.mark.parametrize("total,warmup,explore_ratio,min_lr_ratio", WSD_CASES)
def test_equals_get_wsd_schedule_at_every_step(total, warmup, explore_ratio, min_lr_ratio, decay_type):
    explore = round(explore_ratio * total)
    knee = get_knee_schedule_with_warmup(
        make_optimizer(groups=2),
        warmup,
        total,
        explore_ratio=explore_ratio,
        min_lr_ratio=min_lr_ratio,
        decay_type=decay_type,
    )
    torch_adapter = KneeLR(
        make_optimizer(groups=2),
        total_steps=total,
        warmup_steps=warmup,
        explore_ratio=explore_ratio,
        min_lr_ratio=min_lr_ratio,
        decay_type=decay_type,
    )
    wsd = get_wsd_schedule(
        make_optimizer(groups=2),
        num_warmup_steps=warmup,
        num_decay_steps=total - warmup - explore,
        num_training_steps=total,
        warmup_type="linear",
        decay_type=decay_type,
        min_lr_ratio=min_lr_ratio,
    )
    expected = lr_trace(wsd, total + 3)
    assert lr_trace(knee, total + 3) == expected
    assert lr_trace(torch_adapter, total + 3) == expected


def test_decay_shapes_by_hand():
    lrs = {
        decay_type: [
            round(lr[0], 4)
            for lr in lr_trace(
                get_knee_schedule_with_warmup(make_optimizer(), 0, 8, num_explore_steps=4, decay_type=decay_type), 9
            )
        ]
        for decay_type in DECAY_TYPES
    }
    assert lrs["linear"] == [10.0] * 4 + [10.0, 7.5, 5.0, 2.5, 0.0]
    assert lrs["cosine"] == [10.0] * 4 + [10.0, 8.5355, 5.0, 1.4645, 0.0]
    assert lrs["1-sqrt"] == [10.0] * 4 + [10.0, 5.0, 2.9289, 1.3397, 0.0]


def test_warmup_starts_from_zero_with_a_floor():
    knee = get_knee_schedule_with_warmup(make_optimizer(), 4, 20, num_explore_steps=6, min_lr_ratio=0.1)
    lrs = [lr[0] for lr in lr_trace(knee, 22)]
    assert lrs[:5] == [0.0, 2.5, 5.0, 7.5, 10.0]
    assert lrs[20:] == [pytest.approx(1.0)] * 2


def test_hand_checked_values_like_transformers_test_schedulers():
    scheduler = get_knee_schedule_with_warmup(make_optimizer(), num_warmup_steps=2, num_training_steps=10)
    assert [round(lr[0], 2) for lr in lr_trace(scheduler, 10)] == [
        0.0,
        5.0,
        10.0,
        10.0,
        10.0,
        10.0,
        10.0,
        10.0,
        6.67,
        3.33,
    ]


def test_num_explore_steps_wins_over_explore_ratio():
    scheduler = get_knee_schedule_with_warmup(make_optimizer(), 0, 10, num_explore_steps=8, explore_ratio=0.1)
    assert [lr[0] for lr in lr_trace(scheduler, 10)] == [10.0] * 9 + [5.0]


def test_agrees_with_the_torch_adapter():
    factory = get_knee_schedule_with_warmup(make_optimizer(groups=3), 3, 30, explore_ratio=0.4, min_lr_ratio=0.05)
    torch_adapter = KneeLR(
        make_optimizer(groups=3), total_steps=30, warmup_steps=3, explore_ratio=0.4, min_lr_ratio=0.05
    )
    assert lr_trace(factory, 33) == lr_trace(torch_adapter, 33)


def test_save_and_reload_at_the_midpoint_continues_the_trace():
    """transformers' unwrap_and_save_reload_schedule: torch.save(state_dict) mid-run, reload, same trace."""
    kwargs = dict(num_warmup_steps=2, num_training_steps=10, explore_ratio=0.5)
    scheduler = get_knee_schedule_with_warmup(make_optimizer(), **kwargs)
    uninterrupted = lr_trace(scheduler, 10)

    scheduler = get_knee_schedule_with_warmup(make_optimizer(), **kwargs)
    first = lr_trace(scheduler, 5)
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    reloaded = get_knee_schedule_with_warmup(scheduler.optimizer, **kwargs)
    reloaded.load_state_dict(torch.load(buffer, weights_only=True))
    assert first + lr_trace(reloaded, 5) == uninterrupted


def test_schedule_is_picklable_and_built_on_partial():
    scheduler = get_knee_schedule_with_warmup(make_optimizer(), 2, 10)
    lr_lambda = scheduler.lr_lambdas[0]
    assert lr_lambda.func is knee_factor
    clone = pickle.loads(pickle.dumps(scheduler))
    assert [clone.lr_lambdas[0](t) for t in range(12)] == [lr_lambda(t) for t in range(12)]


@pytest.mark.parametrize(
    "args,kwargs,message",
    [
        ((-1, 100), {}, r"^num_warmup_steps must be >= 0, got -1"),
        ((2, 0), {}, r"^num_training_steps must be > 0, got 0"),
        ((2, -4), {}, r"^num_training_steps must be >= 0, got -4"),
        (
            (2, 10),
            {"num_explore_steps": 9},
            r"^num_warmup_steps \(2 steps\) \+ num_explore_steps \(9 steps\) = 11 steps exceed num_training_steps = 10",
        ),
        (
            (200, 100),
            {},
            r"^num_warmup_steps \(200 steps\) \+ explore_ratio \(50 steps\) = 250 steps exceed num_training_steps",
        ),
        ((2, 10), {"explore_ratio": 1.5}, r"^explore_ratio=1.5"),
        ((2, 10), {"min_lr_ratio": 1.0}, r"^min_lr_ratio must be in \[0, 1\)"),
        ((2.5, 10), {}, r"^num_warmup_steps=2.5"),
        ((0, 100), {"num_explore_steps": -5}, r"^num_explore_steps must be >= 0, got -5"),
        ((0, 100), {"num_explore_steps": "2ep"}, r"^num_explore_steps is given in epochs"),
        ((0, 100), {"decay_type": "exponential"}, r"^decay_type must be one of linear, cosine, 1-sqrt"),
    ],
)
def test_bad_input(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        get_knee_schedule_with_warmup(make_optimizer(), *args, **kwargs)
