"""The translation recipe sizes the linear/cosine baselines' budgets with the epoch length that the Knee
scheduler uses (one function, ``knee_plugins.schedule.updates_per_epoch``), so a baseline can never run a
different budget than Knee: checked against real one-epoch ``fairseq-train`` runs."""

import dataclasses

import pytest
from knee_fairseq_helpers import logged_lrs, run_cli, updates_in_epoch

from knee_plugins.fairseq_plugin.epoch_budget import fairseq_updates_per_epoch
from knee_plugins.schedule import updates_per_epoch
from scripts.common import fairseq_recipe

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("skip_remainder", [False, True], ids=["keep-remainder", "skip-remainder"])
def test_recipe_epoch_length_equals_the_updates_of_a_real_epoch(data_bin, tmp_path, skip_remainder):
    extra = ["--skip-remainder-batch"] if skip_remainder else []
    # the demo's settings with a budget in epochs, as the paper's tasks have it
    recipe = dataclasses.replace(
        fairseq_recipe.DEMO, budget_unit="epochs", budget={"full": 1}, explore={"full": 0.5}, warmup_ratio=0.0
    )
    run = fairseq_recipe.RunConfig(
        recipe, "knee", "full", 1, data_bin, tmp_path / "ckpt",
        fairseq_recipe.BatchPlan(world_size=1, max_tokens=300, update_freq=3), cpu=True,
        extra=[*extra, "--disable-validation", "--encoder-layers", "1", "--decoder-layers", "1",
               "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
               "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32", "--log-interval", "1"],
    )  # fmt: skip
    measured = fairseq_recipe.count_updates_per_epoch(run)
    command = fairseq_recipe.train_command(run)
    output = run_cli(command[0].rsplit("/", 1)[-1], *command[1:], "--max-update", "0", "--max-epoch", "1").stdout
    assert updates_in_epoch(output) == measured > 0


def test_knee_epoch_budget_ends_with_the_real_epoch_when_the_remainder_is_skipped(train):
    output = train(
        "--lr-scheduler",
        "knee",
        "--max-epoch",
        "2",
        "--explore-epochs",
        "1",
        "--update-freq",
        "3",
        "--skip-remainder-batch",
    ).stdout
    lrs = logged_lrs(output)
    per_epoch = updates_in_epoch(output)
    assert max(lrs) == 2 * per_epoch
    assert lrs[2 * per_epoch] == 0.0
    assert lrs[2 * per_epoch - 1] > 0.0


def test_updates_per_epoch_counts_the_short_last_group_unless_it_is_dropped():
    assert [updates_per_epoch(n, 3) for n in (0, 1, 3, 4, 6, 7)] == [0, 1, 1, 2, 2, 3]
    assert [updates_per_epoch(n, 3, drop_remainder=True) for n in (0, 1, 3, 4, 6, 7)] == [0, 0, 1, 1, 2, 2]
    # fairseq's --skip-remainder-batch drops the last batch first, even a full one
    assert [fairseq_updates_per_epoch(n, 3, True) for n in (0, 1, 3, 4, 6, 7)] == [0, 0, 0, 1, 1, 2]
    with pytest.raises(ValueError, match="accumulation_steps must be > 0"):
        updates_per_epoch(10, 0)
