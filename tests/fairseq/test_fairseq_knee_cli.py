"""fairseq-train --lr-scheduler knee, end to end: the logged LR equals the schedule core's value."""

import re

import pytest
from knee_fairseq_helpers import PEAK_LR, as_logged, logged_lrs, run_cli, train_records, updates_in_epoch

from knee_plugins.schedule import knee_factor


def expected_lr(step, *, total, warmup, explore):
    return PEAK_LR * knee_factor(step, total_steps=total, warmup_steps=warmup, explore_steps=explore)


def assert_knee_trajectory(output, *, total, warmup, explore):
    lrs = logged_lrs(output)
    assert sorted(lrs) == list(range(1, total + 1)), "the run must end exactly at the budget"
    for step, lr in lrs.items():
        want = as_logged(expected_lr(step, total=total, warmup=warmup, explore=explore))
        assert lr == want, f"update {step}: logged lr {lr}, schedule core {want}"


@pytest.mark.slow
def test_update_based_explore_with_warmup(train):
    out = train("--lr-scheduler", "knee", "--max-update", "24",
                "--warmup-updates", "4", "--explore-updates", "10").stdout  # fmt: skip
    assert_knee_trajectory(out, total=24, warmup=4, explore=10)


@pytest.mark.slow
def test_epoch_budget_and_explore_epochs_without_max_update(train):
    """The paper's IWSLT setting in miniature: --max-epoch 4 --explore-epochs 3, no --max-update."""
    out = train("--lr-scheduler", "knee", "--max-epoch", "4", "--explore-epochs", "3").stdout
    per_epoch = updates_in_epoch(out, 1)
    assert per_epoch == 10, "the tiny corpus is 10 batches at --max-tokens 300"
    total = 4 * per_epoch
    assert_knee_trajectory(out, total=total, warmup=0, explore=3 * per_epoch)
    lrs = logged_lrs(out)
    assert all(lrs[s] == PEAK_LR for s in range(1, 3 * per_epoch + 1)), "constant for 3 epochs"
    assert lrs[total] == 0.0, "reaches the floor at the end of the last epoch"


@pytest.mark.slow
def test_ratio_explore_with_warmup(train):
    out = train("--lr-scheduler", "knee", "--max-update", "20",
                "--warmup-updates", "2", "--explore-ratio", "0.25").stdout  # fmt: skip
    assert_knee_trajectory(out, total=20, warmup=2, explore=5)


@pytest.mark.slow
def test_default_ratio_epoch_budget_with_update_freq_2(train):
    """Default explore 50%; with --update-freq 2 an epoch is half as many updates."""
    out = train("--lr-scheduler", "knee", "--max-epoch", "3", "--update-freq", "2").stdout
    per_epoch = updates_in_epoch(out, 1)
    batches = 10  # 400 pairs at --max-tokens 300 (pinned in the --explore-epochs test)
    assert per_epoch == -(-batches // 2)
    total = 3 * per_epoch
    assert_knee_trajectory(out, total=total, warmup=0, explore=round(0.5 * total))


@pytest.mark.slow
def test_explore_zero_equals_polynomial_decay(train, tmp_path):
    """Knee with explore 0 is fairseq's linear decay (polynomial_decay, power 1, end 0)."""
    common = ("--max-update", "18", "--warmup-updates", "3")
    knee = train("--lr-scheduler", "knee", "--explore-updates", "0", *common,
                 save_dir=tmp_path / "knee").stdout  # fmt: skip
    poly = train("--lr-scheduler", "polynomial_decay", "--power", "1",
                 "--end-learning-rate", "0", "--total-num-update", "18", *common,
                 save_dir=tmp_path / "poly").stdout  # fmt: skip
    knee_lrs, poly_lrs = logged_lrs(knee), logged_lrs(poly)
    assert sorted(knee_lrs) == list(range(1, 19))
    assert knee_lrs == poly_lrs


@pytest.mark.slow
def test_knee_options_in_help():
    out = run_cli("fairseq-train", "--lr-scheduler", "knee", "--help").stdout
    for option in ("--warmup-updates", "--warmup-init-lr", "--explore-updates",
                   "--explore-epochs", "--explore-ratio", "--total-num-update",
                   "--end-learning-rate", "--end-lr-ratio"):  # fmt: skip
        assert option in out, option
    assert re.search(r"--lr-scheduler \{[^}]*\bknee\b", out), "knee is not a --lr-scheduler choice"


# The in-process tests (test_fairseq_schedulers.py) check every message; these check that the CLI
# stops before the first update.
BAD_OPTIONS = [
    (("--max-epoch", "2", "--explore-epochs", "3"), "--explore-epochs 3"),
    ((), "--max-update, --max-epoch or --total-num-update"),
    (("--max-update", "10", "--explore-ratio", "0.5", "--explore-updates", "3"), "--explore-updates 3"),
]


@pytest.mark.slow
@pytest.mark.parametrize("args, named", BAD_OPTIONS, ids=lambda v: " ".join(v) if isinstance(v, tuple) else None)
def test_bad_options_fail_before_the_first_update(train, args, named):
    proc = train("--lr-scheduler", "knee", *args, check=False)
    assert proc.returncode != 0
    assert "ValueError" in proc.stdout and named in proc.stdout, proc.stdout[-2000:]
    assert not train_records(proc.stdout), "failed only after training had started"
