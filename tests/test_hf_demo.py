"""The HF demo: every method end to end at a tiny size through a real Trainer (real MiniLM, real KJV verses),
each method's LR against its reference at every step, the LR sweep's choice, and the argument checks."""

import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from schedulefree import AdamWScheduleFree
from transformers import (
    TrainingArguments,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
    get_wsd_schedule,
)

from knee_plugins.schedule import KneeSchedule, knee_factor
from scripts.common import sweep
from scripts.common.hf_data import SECTION_NAMES, kjv_verses, split_verses
from scripts.common.sweep import MAX_WIDENINGS
from scripts.hf_demo import compare as hf_demo
from scripts.hf_demo.compare import METHODS, main, parse_args, trainer_warmup_steps

TINY = ["--eval-examples", "16", "--train-examples", "96", "--batch-size", "4", "--max-length", "16"]
STEPS, WARMUP_FRACTION, PEAK_LR = 10, 0.3, 1e-3  # warmup 3, Knee explore 5 / decay 2, WSD cooldown 2


def reference_factors(method: str) -> list[float]:
    """The LR multiplier of updates 1..STEPS by the method's own definition (transformers', or the Knee core)."""
    warmup = math.ceil(STEPS * WARMUP_FRACTION)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    if method == "knee":
        schedule = KneeSchedule(STEPS, warmup_steps=warmup, explore_steps=STEPS // 2)
        return [knee_factor(step, **asdict(schedule)) for step in range(STEPS)]
    if method == "linear":
        scheduler = get_linear_schedule_with_warmup(optimizer, warmup, STEPS)
    elif method == "cosine":
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, STEPS)
    elif method == "wsd":
        scheduler = get_wsd_schedule(
            optimizer, warmup, num_decay_steps=2, num_training_steps=STEPS, decay_type="1-sqrt"
        )
    else:  # schedule_free: the Trainer's scheduler is constant; the optimizer warms up itself
        return [1.0] * STEPS
    return [scheduler.lr_lambdas[0](step) for step in range(STEPS)]


def ordered(lrs: dict) -> list[float]:
    return [lrs[step] for step in sorted(lrs, key=int)]


def test_offline_data_is_the_whole_bible_with_six_sections():
    verses = kjv_verses()
    assert len(verses) == 31103
    assert (verses[0].book, SECTION_NAMES[verses[0].label]) == ("Genesis", "law")
    assert (verses[-1].book, SECTION_NAMES[verses[-1].label]) == ("Revelation", "epistles_revelation")
    train, held_out = split_verses(verses, num_eval=100, num_train=None, seed=1)
    assert len(train) + len(held_out) == len(verses) and not set(map(id, train)) & set(map(id, held_out))


@pytest.mark.slow
def test_every_method_trains_and_follows_its_reference_schedule(tmp_path, capsys):
    args = ["--output-dir", str(tmp_path), "--max-steps", str(STEPS), "--eval-every", "5", "--seeds", "1"]
    args += ["--warmup-steps", str(WARMUP_FRACTION), "--learning-rate", str(PEAK_LR), *TINY]
    results = main(args)
    output = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(output) if line.startswith("method "))
    assert [line.split()[:4] for line in output[header + 2 : header + 7]] == [
        [method, "1", str(STEPS), f"{PEAK_LR:g}"] for method in METHODS
    ]
    by_method = {r["method"]: r for r in results}
    assert list(by_method) == list(METHODS)
    for method, result in by_method.items():
        assert result["steps"] == STEPS and [e["step"] for e in result["evaluations"]] == [5, 10], method
        assert math.isfinite(result["eval_loss"]) and 0 <= result["eval_accuracy"] <= 1, method
        expected = [PEAK_LR * factor for factor in reference_factors(method)]
        assert ordered(result["scheduler_lrs"]) == pytest.approx(expected, rel=1e-9, abs=1e-15), method
    # the Knee and WSD runs really explore/hold at the peak, unlike linear and cosine
    assert ordered(by_method["knee"]["scheduler_lrs"])[3:8] == pytest.approx([PEAK_LR] * 5)
    assert ordered(by_method["wsd"]["scheduler_lrs"])[3:9] == pytest.approx([PEAK_LR] * 6)

    schedule_free = by_method["schedule_free"]
    assert schedule_free["optimizer"] == f"{AdamWScheduleFree.__module__}.{AdamWScheduleFree.__qualname__}"
    assert {r["optimizer"] for m, r in by_method.items() if m != "schedule_free"} == {"torch.optim.adamw.AdamW"}
    # schedulefree's own warmup, lr * min(1, (k + 1) / W) at its update k, applied inside the optimizer
    warmup = math.ceil(STEPS * WARMUP_FRACTION)
    applied = [PEAK_LR * min(1.0, (k + 1) / warmup) for k in range(STEPS)]
    assert ordered(schedule_free["optimizer_lrs"]) == pytest.approx(applied, rel=1e-9)
    assert ordered(by_method["cosine"]["optimizer_lrs"]) == ordered(by_method["cosine"]["scheduler_lrs"])

    for name in ("lr.png", "eval.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "table.md").read_text().startswith("| method | runs | steps | peak LR |")
    assert len(json.loads((tmp_path / "results.json").read_text())) == len(METHODS)


@pytest.mark.slow
def test_sweep_chooses_each_methods_lowest_validation_loss(tmp_path, capsys):
    grid = [1e-5, 3e-3]
    args = ["--output-dir", str(tmp_path), "--max-steps", "4", "--eval-every", "4", "--methods", "linear", "wsd"]
    sweep = main([*args, "--sweep-lr", *map(str, grid), *TINY])
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["chosen_learning_rates"] == sweep["chosen_learning_rates"]
    runs = saved["runs"]
    for method in ("linear", "wsd"):
        losses = {r["learning_rate"]: r["eval_loss"] for r in runs if r["method"] == method}
        assert set(grid) <= set(losses) and losses[grid[0]] != losses[grid[1]]
        chosen = saved["chosen_learning_rates"][method]
        assert chosen == min(losses, key=losses.get)
        # a two-point grid always has its winner on an edge: the sweep widened it, x300 or /300 a step
        tried = sorted(losses)
        widened = [lr for lr in tried if lr not in grid]
        assert 1 <= len(widened) <= MAX_WIDENINGS, method
        ratio = grid[1] / grid[0]
        assert all(
            min(abs(math.log(lr / g) / math.log(ratio)) for g in tried if g != lr) == pytest.approx(1, abs=1e-2)
            for lr in widened
        )
        assert tried[0] < chosen < tried[-1] or len(widened) == MAX_WIDENINGS, method
    table = (tmp_path / "sweep.md").read_text().splitlines()
    learning_rates = sorted({r["learning_rate"] for r in runs})
    assert table[0] == "| method | " + " | ".join(f"LR {lr:g}" for lr in learning_rates) + " | chosen LR |"
    for line in table[2:]:
        method = line.split("|")[1].strip()
        chosen = saved["chosen_learning_rates"][method]
        cells = line.split("|")[2 : 2 + len(learning_rates)]
        bold = [i for i, cell in enumerate(cells) if cell.strip().startswith("**")]
        assert [learning_rates[i] for i in bold] == [chosen]
        assert line.split("|")[2 + len(learning_rates)].strip().startswith(f"{chosen:g}")
    assert f"DEFAULT_LEARNING_RATES = {json.dumps(saved['chosen_learning_rates'])}" in capsys.readouterr().out


def fake_run_one(best_lr: float, trained: list):
    """run_one's stand-in for the sweep's bookkeeping: the loss is a parabola in log LR with its minimum at ``best_lr``."""

    def run_one(method, seed, learning_rate, args, budget, data, eval_split):
        trained.append((method, learning_rate))
        assert (seed, eval_split) == (0, "validation")
        loss = 1.0 + math.log(learning_rate / best_lr) ** 2
        return {
            "method": method,
            "learning_rate": learning_rate,
            "eval_loss": loss if learning_rate < 1 else float("nan"),
            "eval_accuracy": 0.5,
            "best_eval_accuracy": 0.5,
            "wall_time_s": 1.0,
            "steps": budget.max_steps,
        }

    return run_one


def test_sweep_widens_an_edge_winner_and_reuses_its_runs(tmp_path, monkeypatch, capsys):
    trained: list = []
    monkeypatch.setattr(hf_demo, "run_one", fake_run_one(3e-5, trained))
    args = parse_args(
        ["--output-dir", str(tmp_path), "--methods", "knee", "linear", "--sweep-lr", "3e-4", "1e-3", "3e-3"]
    )
    sweep = hf_demo.run_sweep(args, data={})
    # the lower edge's ratio is 1e-3 / 3e-4: 3e-4 -> 9e-5 -> 2.7e-5 -> 8.1e-6, where 2.7e-5 is inside
    grid, widened = [0.0003, 0.001, 0.003], [9e-05, 2.7e-05, 8.1e-06]
    methods = ("knee", "linear")
    assert trained == [(m, lr) for m in methods for lr in grid] + [(m, lr) for m in methods for lr in widened]
    assert sweep["chosen_learning_rates"] == {"knee": 2.7e-05, "linear": 2.7e-05}
    assert "(grid edge)" not in (tmp_path / "sweep.md").read_text()

    trained.clear()
    again = hf_demo.run_sweep(
        parse_args(["--output-dir", str(tmp_path), "--sweep-lr", "3e-4", "1e-3", "3e-3", "--methods", "knee"]), {}
    )
    assert trained == [] and again["chosen_learning_rates"] == sweep["chosen_learning_rates"]
    assert len(json.loads((tmp_path / "sweep.json").read_text())["runs"]) == 12

    more = parse_args(["--output-dir", str(tmp_path), "--methods", "wsd", "--sweep-lr", "1e-4", "3e-4"])
    hf_demo.run_sweep(more, {})
    assert trained == [("wsd", 1e-4), ("wsd", 3e-4), ("wsd", 3.33e-5), ("wsd", 1.11e-5)]
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["chosen_learning_rates"] == {"knee": 2.7e-05, "linear": 2.7e-05, "wsd": 3.33e-5}

    other = parse_args(["--output-dir", str(tmp_path), "--max-steps", "90", "--sweep-lr", "1e-4", "3e-4"])
    with pytest.raises(SystemExit, match="max_steps 60 -> 90.*--output-dir"):
        hf_demo.run_sweep(other, {})


def test_sweep_widens_upwards_and_stops_after_its_limit(tmp_path, monkeypatch):
    trained: list = []
    monkeypatch.setattr(hf_demo, "run_one", fake_run_one(10.0, trained))
    sweep = hf_demo.run_sweep(
        parse_args(["--output-dir", str(tmp_path), "--methods", "cosine", "--sweep-lr", "1e-3", "2e-3"]), {}
    )
    assert [lr for _, lr in trained] == [1e-3, 2e-3, 4e-3, 8e-3, 0.016]
    assert sweep["chosen_learning_rates"] == {"cosine": 0.016}
    assert "0.016 (grid edge)" in (tmp_path / "sweep.md").read_text()


def test_committed_sweep_is_what_the_sweep_protocol_trains_at_the_demos_settings():
    """docs/hf_demo/sweep.json: made with the demo's default settings, it holds exactly the runs the shared
    sweep trains on its grid (every winner inside the grid, so nothing widened), and its chosen LRs are
    the rule's and the demo's defaults."""
    saved = json.loads((Path(__file__).resolve().parents[1] / "docs" / "hf_demo" / "sweep.json").read_text())
    grid = [1e-4, 3e-4, 1e-3, 3e-3]
    assert saved["settings"] == hf_demo._run_settings(vars(parse_args(["--sweep-lr", *map(str, grid)])))
    losses = {(r["method"], r["learning_rate"]): r["eval_loss"] for r in saved["runs"]}
    trained = []

    def train(method: str, lr: float) -> sweep.SweepRecord:
        trained.append((method, lr))
        return sweep.SweepRecord(method, lr, losses[method, lr])

    replayed = sweep.run_sweep(list(METHODS), grid, train, lambda method, lr: None)
    assert trained == [(r["method"], r["learning_rate"]) for r in saved["runs"]]
    chosen = sweep.best_learning_rates(replayed)
    assert chosen == saved["chosen_learning_rates"] == hf_demo.choose_learning_rates(saved["runs"])
    assert chosen == hf_demo.DEFAULT_LEARNING_RATES


def test_dry_run_prints_the_plan_without_data(capsys):
    assert main(["--dry-run", "--max-steps", "100", "--warmup-steps", "0.05", "--learning-rate", "2e-4"]) is None
    plan = capsys.readouterr().out
    assert "100 optimizer steps" in plan and "warmup 5 steps" in plan and "15 runs" in plan
    assert "explore 50, linear decay 45" in plan and "stable 75, 1-sqrt cooldown 20" in plan
    assert plan.count("peak LR 0.0002") == len(METHODS)
    main(["--dry-run", "--sweep-lr", "1e-4", "3e-4", "1e-3"])
    assert "15 runs" in capsys.readouterr().out


@pytest.mark.parametrize(("steps", "fraction"), [(60, 0.1), (7, 0.3), (10, 0.0), (100, 12.0)])
def test_warmup_steps_are_the_trainers(steps, fraction):
    trainer_rule = TrainingArguments(output_dir="unused", warmup_steps=fraction).get_warmup_steps(steps)
    assert trainer_warmup_steps(fraction, steps) == trainer_rule


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--seeds", "0"], "--seeds"),
        (["--max-steps", "0"], "--max-steps"),
        (["--learning-rate", "-1e-4"], "--learning-rate"),
        (["--sweep-lr", "1e-4", "0"], "--sweep-lr"),
        (["--sweep-lr", "1e-4", "1e-4"], "--sweep-lr"),
        (["--sweep-lr", "1e-4", "--learning-rate", "1e-4"], "--sweep-lr"),
        (["--sweep-lr", "1e-4", "--seeds", "3"], "--seeds"),
        (["--explore-ratio", "1.5"], "--explore-ratio"),
        (["--explore-ratio", "0.95"], "--explore-ratio"),
        (["--wsd-cooldown-ratio", "0.95"], "--wsd-cooldown-ratio"),
        (["--warmup-steps", "2.5"], "--warmup-steps"),
        (["--methods", "adafactor"], "--methods"),
    ],
)
def test_bad_arguments_name_the_option(argv, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert option in capsys.readouterr().err
