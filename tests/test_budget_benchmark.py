"""benchmarks/budget.py: the plan and its checks, the "reaches the target" logic on hand-made curves, the
table and answer from hand-made results (nothing trains), and one tiny end-to-end run with its resume."""

from __future__ import annotations

import json
import logging
import math
import re
import shlex

import pytest

from benchmarks import budget
from scripts.common.fairseq_cli import fairseq_command
from scripts.common.fairseq_recipe import DEMO
from scripts.common.results import RunResult, read_results_json, write_results_json

# --- reaching a target, on hand-made numbers ---------------------------------------------------


def test_first_update_reaching_is_the_first_point_at_or_below_the_target():
    curve = [(10, 5.0), (20, 3.0), (30, 3.5), (40, 2.0)]
    assert budget.first_update_reaching(curve, 3.0) == 20  # equal counts
    assert budget.first_update_reaching(curve, 3.2) == 20
    assert budget.first_update_reaching(curve, 2.5) == 40
    assert budget.first_update_reaching(curve, 1.9) is None
    assert budget.first_update_reaching([(40, 2.0), (10, 1.0)], 2.0) == 10  # by update, not by list order


def test_mean_curve_averages_the_seeds_at_the_updates_they_share():
    curves = [[(1, 3.0), (2, 2.0)], [(1, 5.0), (2, 1.0), (3, 0.5)]]
    assert budget.mean_curve(curves) == [(1, 4.0), (2, 1.5)]
    assert budget.mean_curve([[(2, 1.0), (1, 2.0)]]) == [(1, 2.0), (2, 1.0)]
    with pytest.raises(ValueError, match="at least one"):
        budget.mean_curve([])


def test_smallest_budget_is_the_smallest_fraction_whose_run_gets_there():
    curves = {
        1.0: [(20, 2.9), (40, 2.5)],
        0.4: [(20, 3.5), (40, 3.1)],  # never <= 3.0
        0.7: [(20, 3.2), (30, 3.0), (40, 2.8)],
    }
    assert budget.smallest_budget_reaching_loss(curves, 3.0) == budget.Reach(0.7, 30)
    assert budget.smallest_budget_reaching_loss(curves, 2.9) == budget.Reach(0.7, 40)
    assert budget.smallest_budget_reaching_loss(curves, 2.6) == budget.Reach(1.0, 40)
    assert budget.smallest_budget_reaching_loss(curves, 2.4) is None
    bleu = {0.4: 20.0, 0.55: None, 0.7: 21.5, 1.0: 21.0}
    assert budget.smallest_budget_reaching_bleu(bleu, 21.0) == budget.Reach(0.7)
    assert budget.smallest_budget_reaching_bleu(bleu, 19.0) == budget.Reach(0.4)
    assert budget.smallest_budget_reaching_bleu(bleu, 22.0) is None


# --- the plan ----------------------------------------------------------------------------------

TINY = ["--max-updates", "100", "--budgets", "0.5", "1.0", "--valid-interval", "10"]


def test_plan_one_demo_run_per_schedule_budget_and_seed(tmp_path):
    args = budget.parse_args([*TINY, "--seeds", "2", "--work-dir", str(tmp_path), "--bpe-symbols", "200"])
    runs = budget.plan_runs(args)
    assert [(r.seed, r.fraction, r.schedule) for r in runs] == [
        (seed, fraction, schedule)
        for seed in (1, 2)
        for fraction in (1.0, 0.5)  # the full budget first: the targets exist early
        for schedule in ("knee", "linear", "cosine")
    ]
    assert len({r.run_dir for r in runs}) == len(runs)
    for run in runs:
        words = run.command
        assert words[:1] == fairseq_command("train") and words[1] == str(tmp_path.resolve() / "prepared" / "data-bin")
        option = {words[i]: words[i + 1] for i in range(2, len(words) - 1) if words[i].startswith("--")}
        # the demo's run of the schedule at its peak LR, with the benchmark's budget, seed, dropout and grid
        assert option["--max-update"] == str(run.updates) == str(round(100 * run.fraction))
        assert option["--lr"] == f"{DEMO.lr_of(run.schedule):g}" and option["--arch"] == DEMO.arch
        assert option["--seed"] == str(run.seed) and option["--dropout"] == "0.1"
        assert option["--save-interval-updates"] == "10" and words.count("--save-interval-updates") == 1
        assert option["--validate-interval"] == option["--save-interval"] == "1000000"
        assert option["--warmup-updates"] == str(round(DEMO.warmup_ratio * run.updates))
        assert (
            option["--save-dir"] == str(run.run_dir / "checkpoints")
            and run.run_dir.parent == tmp_path.resolve() / "runs"
        )
        assert run.config.recipe.spec.bpe_symbols == 200
    knee = next(run for run in runs if run.schedule == "knee" and run.fraction == 0.5)
    assert knee.command[knee.command.index("--explore-updates") + 1] == str(25 - 3)


def test_dry_run_prints_one_command_per_run_and_trains_nothing(tmp_path, capsys):
    work_dir = tmp_path / "bench"
    assert budget.main([*TINY, "--seeds", "2", "--work-dir", str(work_dir), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    commands = [shlex.split(line) for line in lines if not line.startswith("#")]
    assert len(commands) == 3 * 2 * 2
    runs = budget.plan_runs(budget.parse_args([*TINY, "--seeds", "2", "--work-dir", str(work_dir)]))
    assert commands == [run.command for run in runs]
    assert not work_dir.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--budgets", "0.5"], "--budgets must include 1.0"),
        (["--budgets", "0", "1.0"], "--budgets must be fractions in (0, 1]"),
        (["--budgets", "1.5", "1.0"], "--budgets must be fractions in (0, 1]"),
        (["--max-updates", "10", "--budgets", "0.1", "1.0"], "each must be >= 2"),
        (["--max-updates", "10", "--budgets", "0.52", "0.48", "1.0"], "all must differ"),
        (["--max-updates", "1"], "--max-updates must be >= 2"),
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--valid-interval", "0"], "--valid-interval must be >= 1"),
        (["--schedules", "knee", "knee"], "lists a schedule twice"),
        (["--schedules", "knee", "linear", "--targets", "cosine"], "--targets ['cosine'] must also be in"),
        (["--schedules", "knee", "adam"], "--schedules"),
        (["--fairseq-args=--seed=3"], "--fairseq-args must not set ['--seed']"),
        (["--fairseq-args", "--dropout 0.3"], "--fairseq-args must not set ['--dropout']"),
        (["--dropout", "1"], "--dropout must be in"),
        (["--lr", "0"], "--lr must be > 0"),
        (["--train-pairs", "0"], "--train-pairs must be >= 1"),
        (["--world-size", "0"], "--world-size must be >= 1"),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        budget.parse_args(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


# --- table and answer from hand-made results (nothing trains) ----------------------------------

# (schedule, fraction) -> (valid curve, BLEU), at --max-updates 100, budgets 50% and 100%.
HAND_MADE = {
    ("linear", 1.0): ([(25, 5.0), (50, 4.0), (75, 3.5), (100, 3.0)], 20.0),
    ("cosine", 1.0): ([(25, 4.8), (50, 3.9), (75, 3.3), (100, 2.9)], 21.0),
    ("knee", 1.0): ([(25, 5.5), (50, 5.0), (75, 3.0), (100, 2.7)], 22.0),
    ("knee", 0.5): ([(25, 5.5), (50, 2.95)], 20.5),
    ("linear", 0.5): ([(25, 5.0), (50, 3.2)], 18.0),
    ("cosine", 0.5): ([(25, 4.8), (50, 3.1)], 19.0),
}


def write_finished_run(run, curve: list[tuple[int, float]], bleu: float | None) -> None:
    """What the recipe and the benchmark leave in a finished run's folder."""
    run.run_dir.mkdir(parents=True)
    best = min(loss for _, loss in curve)
    result = RunResult(run.schedule, 1, 12.0, run.updates, best, math.exp(best), [], curve, bleu, bleu)
    write_results_json([result], run.results_path)
    run.record_path.write_text(json.dumps(run.identity))


def test_table_and_answer_from_finished_runs(tmp_path, capsys):
    argv = ["--max-updates", "100", "--budgets", "0.5", "1.0", "--work-dir", str(tmp_path)]
    runs = budget.plan_runs(budget.parse_args(argv))
    for run in runs:
        write_finished_run(run, *HAND_MADE[run.schedule, run.fraction])
    mtimes = {run: run.results_path.stat().st_mtime_ns for run in runs}

    assert budget.main(argv) == 0
    out = capsys.readouterr().out
    assert all(run.results_path.stat().st_mtime_ns == mtimes[run] for run in runs)  # nothing trained
    markdown = (tmp_path / "budget.md").read_text()
    assert markdown.strip() in out

    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert table[0] == "| schedule | budget | updates | seeds | best valid loss | BLEU tok | train s |"
    assert table[2:8] == [
        "| knee | 50% | 50 | 1 | 2.950 | 20.50 | 12 |",
        "| knee | 100% | 100 | 1 | 2.700 | 22.00 | 12 |",
        "| linear | 50% | 50 | 1 | 3.200 | 18.00 | 12 |",
        "| linear | 100% | 100 | 1 | 3.000 | 20.00 | 12 |",
        "| cosine | 50% | 50 | 1 | 3.100 | 19.00 | 12 |",
        "| cosine | 100% | 100 | 1 | 2.900 | 21.00 | 12 |",
    ]
    assert table[8] == "| target | value | knee | linear | cosine |"
    assert table[10:] == [
        "| linear@100% valid loss | 3.000 | 50% (update 50 of 50) | 100% (update 100 of 100) | 100% (update 100 of 100) |",
        "| linear@100% BLEU | 20.00 | 50% | 100% | 100% |",
        "| cosine@100% valid loss | 2.900 | 100% (update 100 of 100) | not reached | 100% (update 100 of 100) |",
        "| cosine@100% BLEU | 21.00 | 100% | not reached | 100% |",
    ]
    assert [line for line in markdown.splitlines() if line.startswith("- ")] == [
        "- Knee at 50% matches linear at 100%: yes (valid loss 2.950 <= 3.000; BLEU 20.50 >= 20.00)",
        "- Knee at 50% matches cosine at 100%: no (valid loss 2.950 > 2.900; BLEU 20.50 < 21.00)",
        "- Knee at 100% matches linear at 100%: yes (valid loss 2.700 <= 3.000; BLEU 22.00 >= 20.00)",
        "- Knee at 100% matches cosine at 100%: yes (valid loss 2.700 <= 2.900; BLEU 22.00 >= 21.00)",
    ]

    record = json.loads((tmp_path / "benchmark.json").read_text())
    assert len(record["runs"]) == 6 and record["environment"]["commit"]
    targets = {t["name"]: t for t in record["targets"]}
    assert targets["linear@100% valid loss"]["reached"]["knee"] == {"fraction": 0.5, "update": 50}
    assert targets["cosine@100% BLEU"]["reached"]["linear"] is None
    assert [m["matches"] for m in record["knee_matches"]] == [True, False, True, True]
    png = (tmp_path / "budget.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_several_seeds_compare_the_seed_mean_curves(tmp_path, capsys):
    argv = ["--max-updates", "100", "--budgets", "0.5", "1.0", "--schedules", "knee", "linear", "--seeds", "2"]
    argv += ["--work-dir", str(tmp_path), "--skip-generate"]
    curves = {  # seed 2 moves every point by +0.2: the seed-mean is seed 1's curve + 0.1
        ("linear", 1.0): [(50, 3.5), (100, 3.0)],
        ("linear", 0.5): [(50, 3.4)],
        ("knee", 1.0): [(50, 4.0), (100, 2.8)],
        ("knee", 0.5): [(50, 3.0)],
    }
    for run in budget.plan_runs(budget.parse_args(argv)):
        curve = [(u, loss + 0.2 * (run.seed - 1)) for u, loss in curves[run.schedule, run.fraction]]
        write_finished_run(run, curve, None)
    assert budget.main(argv) == 0
    markdown = (tmp_path / "budget.md").read_text()
    assert "| knee | 50% | 50 | 2 | 3.100 ± 0.141 | - | 12 ± 0 |" in markdown
    # target 3.1 (linear's seed-mean at 100 updates); no BLEU rows under --skip-generate
    assert "| linear@100% valid loss | 3.100 | 50% (update 50 of 50) | 100% (update 100 of 100) |" in markdown
    assert "BLEU |" not in markdown.split("| target |")[1]
    assert "- Knee at 50% matches linear at 100%: yes (valid loss 3.100 <= 3.100)" in markdown


def test_results_of_other_settings_are_not_mixed_in(tmp_path):
    argv = [*TINY, "--work-dir", str(tmp_path)]
    run = budget.plan_runs(budget.parse_args(argv))[0]
    write_finished_run(run, [(10, 3.0)], 1.0)
    for other_argv in (["--bpe-symbols", "300"], ["--dropout", "0.2"], ["--fairseq-args", "--clip-norm 1"]):
        other = budget.plan_runs(budget.parse_args([*argv, *other_argv]))[0]
        assert other.run_dir == run.run_dir
        with pytest.raises(SystemExit, match="holds the results of other settings") as stop:
            budget.main([*argv, *other_argv, "--dry-run"])
        assert str(run.run_dir) in str(stop.value.code)
    # the same run in a moved work dir is still the same run
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    tmp_path.rename(moved)
    assert budget.has_results(budget.plan_runs(budget.parse_args([*TINY, "--work-dir", str(moved)]))[0])


# --- end to end: the real recipe, tiny -----------------------------------------------------------

UPDATES = 8
E2E = [
    "--max-updates", str(UPDATES), "--budgets", "0.5", "1.0", "--valid-interval", "2", "--seeds", "1",
    "--train-pairs", "200", "--heldout-pairs", "20", "--bpe-symbols", "200",
]  # fmt: skip


@pytest.mark.slow
def test_end_to_end_runs_every_schedule_and_budget_and_resumes(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="budget")
    argv = [*E2E, "--work-dir", str(tmp_path)]
    assert budget.main(argv) == 0
    runs = budget.plan_runs(budget.parse_args(argv))
    assert len(runs) == 6

    markdown = (tmp_path / "budget.md").read_text()
    table = {
        (row[0], row[1]): row
        for row in ([c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines())
        if len(row) == 7 and row[1].endswith("%")
    }
    data_bin = tmp_path / "prepared" / "data-bin"
    prepared_at = max(path.stat().st_mtime_ns for path in data_bin.iterdir())
    for run in runs:
        [result] = read_results_json(run.results_path)
        # the table shows what the recipe wrote
        row = table[run.schedule, budget.percent(run.fraction)]
        assert row[2:] == [
            str(run.updates),
            "1",
            f"{result.best_valid_loss:.3f}",
            f"{result.bleu_tokenized:.2f}",
            f"{result.wall_seconds:.0f}",
        ]
        # validation on the grid of --valid-interval and nowhere else (no end-of-epoch points)
        assert [u for u, _ in result.valid_curve] == list(range(2, run.updates + 1, 2))
        assert result.updates == run.updates == round(UPDATES * run.fraction)
        # the data was prepared once, before the first run
        assert run.results_path.stat().st_mtime_ns > prepared_at
        # fairseq trained at the benchmark's dropout (not the demo's 0) and the run's own seed
        log = (run.run_dir / "checkpoints" / "train.log").read_text()
        assert re.findall(r"[ (]dropout=([0-9.]+)", log) == ["0.1"]
        assert re.findall(r"[ (]seed=([0-9]+)", log) == [str(run.seed)]
    record = json.loads((tmp_path / "benchmark.json").read_text())
    assert [(r["schedule"], r["updates"], r["result"]["best_valid_loss"]) for r in record["runs"]] == [
        (run.schedule, run.updates, read_results_json(run.results_path)[0].best_valid_loss) for run in runs
    ]
    assert "Knee at 50% matches linear at 100%: " in markdown

    # a second invocation trains nothing
    mtimes = {run: run.results_path.stat().st_mtime_ns for run in runs}
    caplog.clear()
    assert budget.main(argv) == 0
    assert "6 runs planned: 6 have results (skipped), 0 to train" in caplog.text
    assert all(run.results_path.stat().st_mtime_ns == mtimes[run] for run in runs)

    # a run without results is trained again, alone
    missing = next(run for run in runs if run.schedule == "knee" and run.fraction == 0.5)
    missing.results_path.unlink()
    caplog.clear()
    assert budget.main(argv) == 0
    assert "6 runs planned: 5 have results (skipped), 1 to train" in caplog.text
    assert missing.results_path.exists()
    assert all(run.results_path.stat().st_mtime_ns == mtimes[run] for run in runs if run is not missing)
