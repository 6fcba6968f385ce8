"""Anytime Knee through fairseq-train: a new budget on restore, refused once the decay has begun (or
annealed from the LR reached), and a decay branched from an explore checkpoint into a new save dir.

The tiny data has 10 updates per epoch; a checkpoint every 5 updates is kept (fairseq names those
inside an epoch checkpoint_<epoch>_<update>.pt).
"""

import pytest
import torch
from knee_fairseq_helpers import PEAK_LR, as_logged, logged_lrs, train_records

from knee_plugins.schedule import KneeSchedule

pytestmark = pytest.mark.slow

KNEE = ("--lr-scheduler", "knee", "--save-interval-updates", "5", "--keep-interval-updates", "-1")


def losses(output: str) -> dict[int, str]:
    return {int(r["num_updates"]): r["loss"] for r in train_records(output)}


def checkpoint_at(save_dir, update):
    (path,) = save_dir.glob(f"checkpoint_*_{update}.pt")
    return path


def test_a_longer_budget_while_exploring_continues_as_a_fresh_run_with_it(train, tmp_path):
    parent = tmp_path / "parent"
    train(*KNEE, "--max-update", "20", "--explore-updates", "15", save_dir=parent)
    budget = ("--max-update", "40", "--explore-updates", "30")
    resumed = train(*KNEE, *budget, "--continue-once", checkpoint_at(parent, 15), save_dir=tmp_path / "longer").stdout
    fresh = train(*KNEE, *budget, save_dir=tmp_path / "fresh").stdout
    assert "Knee schedule changed on resume at update 15" in resumed  # the last update its decay had not begun
    assert logged_lrs(resumed) == {update: lr for update, lr in logged_lrs(fresh).items() if update > 15}


def test_a_new_budget_after_the_decay_began_is_refused_or_annealed_from_the_lr_reached(train, tmp_path):
    parent = tmp_path / "parent"
    train(*KNEE, "--max-update", "30", "--explore-updates", "15", save_dir=parent)  # decay from update 15
    restore = ("--max-update", "40", "--explore-updates", "20", "--continue-once", str(checkpoint_at(parent, 25)))
    refused = train(*KNEE, *restore, save_dir=tmp_path / "refused", check=False)
    assert refused.returncode != 0
    assert "the run resumes at update 25" in refused.stdout and "--anneal-on-budget-change" in refused.stdout
    assert not train_records(refused.stdout)  # not one update under the changed budget

    annealed = train(*KNEE, *restore, "--anneal-on-budget-change", save_dir=tmp_path / "annealed").stdout
    reached = KneeSchedule(30, 0, 15).factor(25)
    lrs = logged_lrs(annealed)
    assert min(lrs) == 26 and max(lrs) == 40
    for update, lr in lrs.items():  # logged after update u: the LR of the next one, m(u)
        assert lr == as_logged(PEAK_LR * reached * (40 - update) / (40 - 25)), update


def test_a_branched_decay_is_bit_identical_to_a_knee_run_of_that_shape_restored_at_the_branch(train, tmp_path):
    """Parent: a far budget (--total-num-update 1000, explore to its end) stopped at update 20 (--max-update
    20). Branch at 20, 1-sqrt decay over 10 updates, into its own save dir. Reference: a Knee run of the
    branch's shape (explore 20, budget 30) stopped at 20 and restarted. LR and loss of every update and the
    final weights are identical, and the LRs equal an uninterrupted run's. (fairseq's own restore is
    deterministic but does not reproduce the uninterrupted run's batches after it, even with one command:
    the losses after any restore differ from an uninterrupted run's, plugin or not.)"""
    parent = tmp_path / "parent"
    train(*KNEE, "--total-num-update", "1000", "--explore-updates", "1000", "--max-update", "20", save_dir=parent)
    shape = ("--explore-updates", "20", "--decay-type", "1-sqrt")
    branch = train(
        *KNEE,
        *shape,
        "--max-update",
        "30",
        "--continue-once",
        parent / "checkpoint_last.pt",
        save_dir=tmp_path / "branch",
    ).stdout
    reference_dir = tmp_path / "reference"
    train(*KNEE, *shape, "--total-num-update", "30", "--max-update", "20", save_dir=reference_dir)
    reference = train(*KNEE, *shape, "--total-num-update", "30", "--max-update", "30", save_dir=reference_dir).stdout
    uninterrupted = train(*KNEE, *shape, "--max-update", "30", save_dir=tmp_path / "uninterrupted").stdout
    assert sorted(logged_lrs(branch)) == list(range(21, 31))
    assert logged_lrs(branch) == logged_lrs(reference)
    assert logged_lrs(branch) == {u: lr for u, lr in logged_lrs(uninterrupted).items() if u > 20}
    assert losses(branch) == losses(reference)
    weights = torch.load(tmp_path / "branch" / "checkpoint_last.pt", weights_only=True)["model"]
    reference_weights = torch.load(reference_dir / "checkpoint_last.pt", weights_only=True)["model"]
    assert weights.keys() == reference_weights.keys()
    assert all(torch.equal(weights[name], reference_weights[name]) for name in weights)
    assert torch.load(parent / "checkpoint_last.pt", weights_only=True)["optimizer_history"][-1]["num_updates"] == 20
