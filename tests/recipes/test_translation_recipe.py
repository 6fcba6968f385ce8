"""The recipes' fairseq-train commands carry the paper's settings (docs/paper.md)."""

from __future__ import annotations

import ast
import json
import shlex
from pathlib import Path

import pytest

from knee_plugins.fairseq_command import training_identity
from scripts.common import fairseq_recipe, report, sweep
from scripts.common.runner import pick_example_ids
from scripts.translation import run as translation
from scripts.translation.explore_sweep import main as explore_sweep_main

REPO = Path(__file__).resolve().parents[2]

# task -> budget -> (epochs, explore epochs); shared settings below (the paper's table).
PAPER = {
    "iwslt14": {
        "arch": "transformer_iwslt_de_en",
        "dropout": 0.3,
        "tokens": 4096,
        "epochs": {"full": 50, "short": 35},
        "explore": {"full": 40, "short": 30},
    },
    "wmt14": {
        "arch": "transformer",
        "dropout": 0.1,
        "tokens": 30000,
        "epochs": {"full": 70, "short": 30},
        "explore": {"full": 50, "short": 25},
    },
}
UPDATES_PER_EPOCH = 1234


def dry_run(capsys, *argv: str) -> list[dict[str, list[str]]]:
    assert translation.main(["--dry-run", "--updates-per-epoch", str(UPDATES_PER_EPOCH), *argv]) == 0
    commands = []
    for line in capsys.readouterr().out.splitlines():
        tokens = shlex.split(line)
        assert tokens[0].endswith("fairseq-train")
        options: dict[str, list[str]] = {}
        key = None
        for token in tokens[2:]:
            if token.startswith("--"):
                key = token
                options[key] = []
            else:
                options[key].append(token)
        commands.append(options)
    return commands


def value(options: dict[str, list[str]], flag: str) -> str:
    assert flag in options, f"{flag} missing"
    return options[flag][0]


@pytest.mark.parametrize("task", sorted(PAPER))
@pytest.mark.parametrize("world_size", [1, 8])
def test_shared_settings_and_batch(capsys, task, world_size):
    paper = PAPER[task]
    commands = dry_run(
        capsys,
        "--task",
        task,
        "--schedule",
        *fairseq_recipe.SCHEDULES,
        "--budget",
        "full",
        "short",
        "--world-size",
        str(world_size),
    )
    assert len(commands) == len(fairseq_recipe.SCHEDULES) * 2
    for options in commands:
        assert value(options, "--arch") == paper["arch"]
        assert value(options, "--optimizer") == "radam"
        assert ast.literal_eval(value(options, "--radam-betas")) == (0.9, 0.999)
        assert float(value(options, "--weight-decay")) == 1e-4
        assert float(value(options, "--clip-norm")) == 25
        assert float(value(options, "--dropout")) == paper["dropout"]
        assert value(options, "--criterion") == "label_smoothed_cross_entropy"
        assert float(value(options, "--label-smoothing")) == 0.1
        tokens = int(value(options, "--max-tokens")) * int(value(options, "--update-freq")) * world_size
        assert abs(tokens - paper["tokens"]) <= world_size
        assert value(options, "--best-checkpoint-metric") == "loss"


@pytest.mark.parametrize("task", sorted(PAPER))
@pytest.mark.parametrize("budget", ["full", "short"])
def test_schedules_and_budgets(capsys, task, budget):
    paper = PAPER[task]
    epochs = paper["epochs"][budget]
    commands = dry_run(capsys, "--task", task, "--schedule", *fairseq_recipe.SCHEDULES, "--budget", budget)
    by_schedule = dict(zip(fairseq_recipe.SCHEDULES, commands, strict=False))
    for options in commands:
        assert int(value(options, "--max-epoch")) == epochs
    knee = by_schedule["knee"]
    assert value(knee, "--lr-scheduler") == "knee" and float(value(knee, "--lr")) == 3e-4
    assert int(value(knee, "--warmup-updates")) == 0
    assert float(value(knee, "--explore-epochs")) == paper["explore"][budget]
    linear = by_schedule["linear"]
    assert value(linear, "--lr-scheduler") == "polynomial_decay" and float(value(linear, "--power")) == 1
    assert float(value(linear, "--end-learning-rate")) == 0 and float(value(linear, "--lr")) == 3e-4
    assert int(value(linear, "--total-num-update")) == epochs * UPDATES_PER_EPOCH
    cosine = by_schedule["cosine"]
    assert value(cosine, "--lr-scheduler") == "cosine" and float(value(cosine, "--lr")) == 3e-4
    assert int(value(cosine, "--max-update")) == epochs * UPDATES_PER_EPOCH
    one_cycle = by_schedule["one_cycle"]
    assert value(one_cycle, "--lr-scheduler") == "one_cycle" and float(value(one_cycle, "--lr")) == 2.5e-4
    assert value(by_schedule["inverse_sqrt"], "--lr-scheduler") == "inverse_sqrt"


def test_demo_default_runs_the_comparison_each_schedule_at_its_own_lr(capsys):
    commands = dry_run(capsys, "--task", "demo")
    recipe = translation.TASKS["demo"]
    schedulers = [value(c, "--lr-scheduler") for c in commands]
    assert schedulers == ["knee", "polynomial_decay", "cosine", "inverse_sqrt", "one_cycle", "knee", "knee"]
    budgets = [int(value(c, "--max-update")) for c in commands]
    assert budgets[:6] == [1200] * 6 and budgets[6] == round(0.65 * 1200)
    assert {value(c, "--seed") for c in commands} == {"1"}
    assert {value(c, "--max-tokens") for c in commands} == {"1024"}
    assert {value(c, "--optimizer") for c in commands} == {"adam"}
    assert {value(c, "--adam-betas") for c in commands} == {"(0.9, 0.98)"}
    # ~1.4 epochs of the corpus: dropout would only slow learning
    assert {float(value(c, "--dropout")) for c in commands} == {0.0}
    schedules = ["knee", "linear", "cosine", "inverse_sqrt", "one_cycle", "wsd", "knee"]
    assert [float(value(c, "--lr")) for c in commands] == [recipe.lr_of(s) for s in schedules]
    # the same warmup (6% of the full budget) for all but one-cycle, whose rise is its own --pct-start
    warmups = [value(c, "--warmup-updates") if "--warmup-updates" in c else None for c in commands]
    assert warmups == ["72", "72", "72", "72", None, "72", "72"]
    knee, wsd, knee_short = commands[0], commands[5], commands[6]
    assert int(value(knee, "--explore-updates")) == 600 - 72 and "--decay-type" not in knee
    assert int(value(wsd, "--explore-updates")) == 960 - 72 and value(wsd, "--decay-type") == "1-sqrt"
    assert int(value(knee_short, "--explore-updates")) == 390 - 72


def test_lr_and_sweep_flags(capsys):
    commands = dry_run(capsys, "--task", "demo", "--schedule", "knee", "cosine", "--lr", "5e-4")
    assert [float(value(c, "--lr")) for c in commands] == [5e-4, 5e-4]
    commands = dry_run(capsys, "--task", "demo", "--schedule", "knee", "wsd", "--sweep-lr", "1e-3", "4e-3")
    assert [(value(c, "--lr-scheduler"), float(value(c, "--lr"))) for c in commands] == [
        ("knee", 1e-3), ("knee", 4e-3), ("knee", 1e-3), ("knee", 4e-3)
    ]  # fmt: skip
    assert [Path(value(c, "--save-dir")).name for c in commands] == ["knee-lr0.001", "knee-lr0.004", "wsd-lr0.001",
                                                                     "wsd-lr0.004"]  # fmt: skip
    for argv, message in (
        (["--lr", "0"], "--lr and --sweep-lr take peak learning rates > 0"),
        (["--sweep-lr", "1e-3", "-1"], "--lr and --sweep-lr take peak learning rates > 0"),
        (["--lr", "1e-3", "--sweep-lr", "1e-3"], "pass one of them"),
        (["--examples", "-1"], "--examples must be >= 0"),
    ):
        with pytest.raises(SystemExit):
            translation.parse_args(["--task", "demo", *argv])
        assert message in capsys.readouterr().err


def test_paper_tasks_keep_radam_and_no_warmup(capsys):
    (knee,) = dry_run(capsys, "--task", "iwslt14", "--schedule", "knee")
    assert value(knee, "--optimizer") == "radam" and value(knee, "--radam-betas") == "(0.9, 0.999)"
    (wsd,) = dry_run(capsys, "--task", "iwslt14", "--schedule", "wsd")
    assert float(value(wsd, "--explore-epochs")) == 0.8 * 50 and value(wsd, "--decay-type") == "1-sqrt"
    assert value(wsd, "--warmup-updates") == "0"


def test_example_ids_are_spread_and_of_readable_length():
    references = ["short"] * 10 + ["a sentence of exactly seven words here"] * 30 + ["x " * 40] * 5
    ids = pick_example_ids(references, 3)
    assert ids == [10, 20, 30]
    assert pick_example_ids(references, 0) == []
    assert pick_example_ids(["one two"], 3) == [0]


def test_plan_batches_keeps_tokens_per_update():
    assert fairseq_recipe.plan_batches(30000, 3750, 1) == fairseq_recipe.BatchPlan(1, 3750, 8)
    assert fairseq_recipe.plan_batches(30000, 3750, 4) == fairseq_recipe.BatchPlan(4, 3750, 2)
    assert fairseq_recipe.plan_batches(4096, 4096, 2) == fairseq_recipe.BatchPlan(2, 2048, 1)
    with pytest.raises(ValueError, match="--world-size"):
        fairseq_recipe.plan_batches(4096, 4096, 0)


def test_bad_flags_are_named(capsys):
    with pytest.raises(SystemExit):
        translation.parse_args(["--task", "iwslt14", "--max-updates", "10"])
    assert "--max-updates" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        translation.parse_args(["--seeds", "0"])
    assert "--seeds" in capsys.readouterr().err


def _without_paths(command: str) -> list[str]:
    """A fairseq-train command without what depends on the machine (the executable's, data's and save
    paths) and without the options that only choose which checkpoints are kept."""
    tokens = training_identity(shlex.split(command))
    save_dir = tokens.index("--save-dir")
    return [Path(tokens[0]).name, *tokens[2:save_dir], *tokens[save_dir + 2 :]]


def test_committed_lr_sweep_ran_the_current_demo_and_chose_its_peak_lrs(capsys):
    """docs/demo-lr-sweep.json is the sweep of the demo as it is now (same commands but for paths), and
    DEMO_PEAK_LR holds its winners: a change to the demo's settings must come with a new sweep."""
    records = json.loads((REPO / "docs" / "demo-lr-sweep.json").read_text(encoding="utf-8"))
    assert fairseq_recipe.DEMO_PEAK_LR == report.best_learning_rates(records)
    assert set(fairseq_recipe.DEMO_PEAK_LR) == set(fairseq_recipe.SCHEDULES)
    for record in records:
        argv = ["--task", "demo", "--schedule", record["schedule"], "--sweep-lr", f"{record['lr']:g}", "--dry-run"]
        assert translation.main(argv) == 0
        (expected,) = capsys.readouterr().out.splitlines()
        assert _without_paths(record["command"]) == _without_paths(expected), record["schedule"]


def test_committed_lr_sweep_trained_what_the_sweep_protocol_trains():
    """Replayed through the shared sweep (its grid, widening and choice), the committed sweep trains
    exactly the runs it holds (one-cycle's edge winner 4e-3 widened once, to 8e-3) and nothing else."""
    records = json.loads((REPO / "docs" / "demo-lr-sweep.json").read_text(encoding="utf-8"))
    losses = {(r["schedule"], r["lr"]): r["best_valid_loss"] for r in records}
    trained = []

    def train(schedule: str, lr: float) -> sweep.SweepRecord:
        trained.append((schedule, lr))
        return sweep.SweepRecord(schedule, lr, losses[schedule, lr])

    schedules = list(dict.fromkeys(r["schedule"] for r in records))
    replayed = sweep.run_sweep(schedules, [1e-3, 2e-3, 4e-3], train, lambda schedule, lr: None)
    assert trained == [(r["schedule"], r["lr"]) for r in records]
    assert sweep.best_learning_rates(replayed) == fairseq_recipe.DEMO_PEAK_LR


def test_committed_explore_sweep_ran_the_current_demo_and_its_table_is_its_runs(capsys):
    """docs/explore-sweep is the explore sweep of the demo as it is now: each run's fairseq-train command
    is the documented command's (paths aside), and the table and summary are computed from the runs."""
    from knee_plugins import explore_sweep

    folder = REPO / "docs" / "explore-sweep"
    record = json.loads((folder / "sweep.json").read_text(encoding="utf-8"))
    assert explore_sweep_main(["--seeds", "3", "--explore-ratios", "0", "0.25", "0.5", "0.75", "--dry-run"]) == 0
    planned = capsys.readouterr().out.splitlines()
    assert len(planned) == len(record["runs"]) == 12
    for run, command in zip(record["runs"], planned, strict=True):
        assert _without_paths(shlex.join(run["command"])) == _without_paths(command)
        assert run["sharpness_measurement"]["steps"] == 200 and run["sharpness_measurement"]["num_batches"] == 4
    rows = explore_sweep.summarise(record["runs"])
    assert rows == record["summary"]
    assert (folder / "sweep.md").read_text(encoding="utf-8") == explore_sweep.markdown_table(rows)
    assert explore_sweep.markdown_table(rows) in (REPO / "docs" / "choosing-lr-and-explore.md").read_text()
