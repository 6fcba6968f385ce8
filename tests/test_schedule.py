"""The schedule core against an independent, exact-arithmetic statement of the paper's formula."""

from fractions import Fraction

import pytest

from knee_plugins.schedule import PHASES, KneeSchedule, knee_factor, resolve_steps, validate_knee_args


def paper_multiplier(t: int, T: int, W: int, E: int, r: float) -> Fraction:
    """The paper's definition (docs/paper.md) in exact fractions: warmup t/W, explore 1, decay to r at T."""
    r = Fraction(r)
    if W and t < W:
        return Fraction(t, W)
    if t < W + E:
        return Fraction(1)
    if t >= T:
        return r
    return r + (1 - r) * Fraction(T - t, T - W - E)


GRID = [
    (T, W, E, r) for T in (1, 2, 7, 10, 100) for W in (0, 1, 3) for E in (0, 2, 50) for r in (0.0, 0.1) if W + E <= T
]


@pytest.mark.parametrize("T,W,E,r", GRID)
def test_factor_matches_the_papers_formula_on_a_grid(T, W, E, r):
    for t in range(T + 3):
        got = knee_factor(t, total_steps=T, warmup_steps=W, explore_steps=E, min_lr_ratio=r)
        assert got == pytest.approx(float(paper_multiplier(t, T, W, E, r)), rel=1e-12, abs=1e-15), t


def test_hand_checked_values_at_lr_10():
    schedule = KneeSchedule(total_steps=10, warmup_steps=2, explore_steps=5)
    lrs = [round(10 * schedule.factor(t), 4) for t in range(12)]
    assert lrs == [0.0, 5.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 6.6667, 3.3333, 0.0, 0.0]


def test_phases_cover_the_budget_in_order():
    schedule = KneeSchedule(total_steps=10, warmup_steps=2, explore_steps=5)
    assert [schedule.phase(t) for t in range(11)] == ["warmup"] * 2 + ["explore"] * 5 + ["exploit"] * 3 + ["done"]
    assert set(PHASES) == {"warmup", "explore", "exploit", "done"}
    assert schedule.decay_steps == 3


def test_zero_length_phases_are_legal():
    assert [KneeSchedule(4, 0, 0).factor(t) for t in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert [KneeSchedule(4, 0, 4).factor(t) for t in range(5)] == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert [KneeSchedule(4, 4, 0).factor(t) for t in range(5)] == [0.0, 0.25, 0.5, 0.75, 0.0]
    assert [KneeSchedule(4, 0, 4, 0.25).factor(t) for t in range(6)] == [1, 1, 1, 1, 0.25, 0.25]


def test_durations_in_steps_fractions_percent_and_epochs():
    assert resolve_steps(4000, name="x") == 4000
    assert resolve_steps("4000", name="x") == 4000
    assert resolve_steps(0.5, name="x", total_steps=31250) == 15625
    assert resolve_steps("10%", name="x", total_steps=31250) == 3125
    assert resolve_steps("40ep", name="x", steps_per_epoch=125) == 5000
    assert resolve_steps("2.5 epochs", name="x", steps_per_epoch=10) == 25
    assert resolve_steps(None, name="x") is None


def test_the_papers_recipes_resolve_as_documented():
    bert = KneeSchedule.from_durations(31250, warmup=0.1, explore=0.5)
    assert (bert.warmup_steps, bert.explore_steps, bert.decay_steps) == (3125, 15625, 12500)
    iwslt = KneeSchedule.from_durations("50ep", explore="40ep", steps_per_epoch=1100)
    assert (iwslt.total_steps, iwslt.explore_steps, iwslt.decay_start) == (55000, 44000, 44000)
    default = KneeSchedule.from_durations(1000)
    assert default.explore_steps == 500


BAD_INPUTS = [
    (dict(total=0), "total"),
    (dict(total=-5), "total"),
    (dict(total=12.5), "total"),
    (dict(total="50ep"), "steps per epoch"),
    (dict(total=100, warmup=-1), "warmup"),
    (dict(total=100, warmup=1.5), "warmup"),
    (dict(total=100, warmup=True), "warmup"),
    (dict(total=100, explore=-3), "explore"),
    (dict(total=100, explore="40ep"), "steps_per_epoch"),
    (dict(total=100, explore="a while"), "explore"),
    (dict(total=100, explore_ratio=1.2), "explore_ratio"),
    (dict(total=100, explore_ratio=-0.1), "explore_ratio"),
    (dict(total=100, explore_ratio="half"), "explore_ratio"),
    (
        dict(total=100, warmup=60, explore=50),
        r"warmup \(60 steps\) \+ explore \(50 steps\) = 110 steps exceed total = 100",
    ),
    (dict(total=100, warmup=0.6, explore_ratio=0.5), r"warmup \(60 steps\) \+ explore_ratio \(50 steps\)"),
    (dict(total=100, min_lr_ratio=1.0), "min_lr_ratio"),
    (dict(total=100, min_lr_ratio=-0.1), "min_lr_ratio"),
    (dict(total=100, explore="40ep", steps_per_epoch=0), "steps_per_epoch"),
    (dict(total=100, explore="40ep", steps_per_epoch=3), r"explore \(120 steps\) = 120 steps exceed total = 100"),
    (dict(total=100, explore=float("nan")), "explore"),
]


@pytest.mark.parametrize("kwargs,message", BAD_INPUTS)
def test_bad_input_raises_a_value_error_naming_the_argument(kwargs, message):
    kwargs = dict(kwargs)
    total = kwargs.pop("total")
    with pytest.raises(ValueError, match=message):
        KneeSchedule.from_durations(total, **kwargs)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(total_steps=10, warmup_steps=2.5, explore_steps=0), "warmup_steps must be a whole number"),
        (dict(total_steps="10", warmup_steps=0, explore_steps=0), "total_steps"),
        (dict(total_steps=10, warmup_steps=0, explore_steps=11), "exceed total_steps = 10"),
    ],
)
def test_validate_knee_args(kwargs, message):
    with pytest.raises(ValueError, match=message):
        validate_knee_args(**kwargs)


def test_core_imports_no_framework():
    import subprocess
    import sys

    code = "import sys, knee_plugins.schedule, knee_plugins; print(sorted(m for m in ('torch', 'transformers', 'fairseq') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
