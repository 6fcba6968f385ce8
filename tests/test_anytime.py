"""Anytime Knee: a budget changed on resume, and a decay branched from an explore checkpoint.

While a run explores, the schedule is a pure function of (step, budget): a resumed run under a new budget
continues exactly as a fresh run with that budget, and a branch (explore ending at the checkpoint's step,
budget = that step + D) equals a fresh Knee run of that shape. Once the decay has begun, a new budget is
refused, or, when asked, the decay continues from the LR the run had reached.
"""

from __future__ import annotations

import io

import pytest
import torch

from knee_plugins import KneeLR, KneeSchedule
from knee_plugins.schedule import BudgetChangeError


def test_a_budget_changed_while_exploring_continues_as_a_fresh_run_with_it():
    saved = KneeSchedule(300, warmup_steps=20, explore_steps=130)
    longer = KneeSchedule(600, warmup_steps=20, explore_steps=280)
    assert longer.resumed(saved, 100) == longer
    shorter = KneeSchedule(200, warmup_steps=20, explore_steps=80)
    assert shorter.resumed(saved, 100) == shorter  # its decay starts at 100: nothing in the past changes


def test_a_budget_change_after_the_decay_began_is_refused_naming_update_lr_and_option():
    saved = KneeSchedule(300, warmup_steps=20, explore_steps=130)  # decay from update 150
    with pytest.raises(BudgetChangeError) as refused:
        KneeSchedule(600, 20, 280).resumed(saved, 200, anneal_option="--knee-anneal", seed_lr=1e-3)
    message = str(refused.value)
    assert "update 200" in message and "its decay began at update 150" in message
    assert f"{saved.factor(200):.4g} x the seed LR ({saved.factor(200) * 1e-3:.4g})" in message
    assert "--knee-anneal" in message


def test_a_new_budget_whose_decay_would_already_have_begun_is_refused():
    saved = KneeSchedule(600, 0, 300)
    with pytest.raises(BudgetChangeError, match="the new budget's decay would have begun at update 150"):
        KneeSchedule(300, 0, 150).resumed(saved, 200)


def test_anneal_decays_from_the_reached_lr_to_the_floor_at_the_new_end():
    saved = KneeSchedule(300, 0, 150, min_lr_ratio=0.1)
    new = KneeSchedule(600, 0, 300, min_lr_ratio=0.1)
    annealed = new.resumed(saved, 200, anneal=True)
    reached = saved.factor(200)
    assert annealed.factor(200) == reached
    assert annealed.factor(400) == pytest.approx(0.1 + (reached - 0.1) * 0.5)
    assert annealed.factor(600) == 0.1 and annealed.phase(250) == "exploit"
    factors = [annealed.factor(t) for t in range(200, 601)]
    assert all(a >= b for a, b in zip(factors, factors[1:], strict=False))


def test_a_branch_is_accepted_where_the_parent_explored_and_refused_inside_its_decay():
    parent = KneeSchedule(10_000, warmup_steps=50, explore_steps=9_950)
    branch = KneeSchedule(600, 50, 350, decay_type="1-sqrt")  # explore until 400, decay over 200 updates
    assert branch.resumed(parent, 400) == branch
    with pytest.raises(BudgetChangeError, match="the new budget's decay would have begun at update 400"):
        branch.resumed(parent, 450)


# --- KneeLR, a plain torch loop --------------------------------------------------------------


MAX_STEPS = 200


def train(scheduler_factory, steps, *, state=None, start=0, seed=0):
    """A deterministic regression on CPU: returns (lr per update, loss per update, saved state at `steps`)."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(8, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    scheduler = scheduler_factory(optimizer)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    data = torch.Generator().manual_seed(1)
    inputs, targets = torch.randn(MAX_STEPS, 16, 8, generator=data), torch.randn(MAX_STEPS, 16, 1, generator=data)
    lrs, losses = {}, {}
    for step in range(start, steps):
        lrs[step] = optimizer.param_groups[0]["lr"]
        loss = torch.nn.functional.mse_loss(model(inputs[step]), targets[step])
        losses[step] = loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    buffer = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer
    )
    buffer.seek(0)
    return lrs, losses, torch.load(buffer, weights_only=True)


def knee(total, explore, **kwargs):
    return lambda optimizer: KneeLR(optimizer, total_steps=total, warmup_steps=10, explore_steps=explore, **kwargs)


def test_kneelr_resumed_with_a_longer_budget_while_exploring_equals_a_fresh_run():
    _, _, at_40 = train(knee(100, 50), 40)
    lrs, _, _ = train(knee(200, 100), 200, state=at_40, start=40)
    fresh, _, _ = train(knee(200, 100), 200)
    assert lrs == {step: lr for step, lr in fresh.items() if step >= 40}


def test_kneelr_branch_is_bit_identical_to_a_fresh_run_with_that_explore_and_budget():
    branch_at, decay = 60, 30
    _, parent_losses, at_branch = train(knee(1000, 990), branch_at)
    lrs, losses, _ = train(
        knee(branch_at + decay, branch_at - 10, decay_type="cosine"),
        branch_at + decay,
        state=at_branch,
        start=branch_at,
    )
    fresh_lrs, fresh_losses, _ = train(knee(branch_at + decay, branch_at - 10, decay_type="cosine"), branch_at + decay)
    assert {**parent_losses, **losses} == fresh_losses  # bit-identical, not approximately equal
    assert lrs == {step: lr for step, lr in fresh_lrs.items() if step >= branch_at}
    assert lrs[branch_at + decay - 1] < lrs[branch_at] == 0.05


def test_kneelr_refuses_a_new_budget_after_the_decay_began_or_anneals_when_asked():
    _, _, at_70 = train(knee(100, 40), 70)  # decay from update 50
    with pytest.raises(BudgetChangeError, match=r"update 70 .*KneeLR\(\.\.\., anneal_on_budget_change=True\)"):
        train(knee(200, 90), 200, state=at_70, start=70)
    lrs, _, _ = train(knee(200, 90, anneal_on_budget_change=True), 200, state=at_70, start=70)
    reached = 0.05 * KneeSchedule(100, 10, 40).factor(70)
    assert lrs[70] == pytest.approx(reached, rel=1e-12)
    assert lrs[135] == pytest.approx(reached * (200 - 135) / 130, rel=1e-12)
    assert lrs[199] < lrs[198] and lrs[199] > 0


def test_kneelr_state_keeps_the_schedule_it_ran_under_even_when_loaded_into_an_old_shape():
    """torch's LRScheduler.load_state_dict restores __dict__: KneeLR keeps its constructor's budget."""
    _, _, at_20 = train(knee(100, 50), 20)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = KneeLR(optimizer, total_steps=400, warmup_steps=10, explore_steps=200)
    scheduler.load_state_dict(at_20["scheduler"])
    assert (scheduler.total_steps, scheduler.explore_steps, scheduler.last_epoch) == (400, 200, 20)
    assert scheduler.state_dict()["total_steps"] == 400
