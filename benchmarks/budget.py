"""The paper's budget question (its Table 8) on the translation demo: at what fraction of the longest
budget does each schedule reach what linear and cosine decay reach with the whole budget?

For every schedule (default knee, linear, cosine), budget fraction f (default 0.4 0.55 0.7 1.0 of
``--max-updates`` N) and seed n, the translation runner (:mod:`scripts.common.runner`) trains one run of
the translation demo (:data:`scripts.common.fairseq_recipe.DEMO`: its model, data, batch, optimizer,
warmup ratio and each schedule's peak LR) with a budget of round(f·N) updates, one run at a time, in
``<work-dir>/runs/S-<100f>pct-seed<n>``:

    fairseq-train <work-dir>/prepared/data-bin ... (the demo's run of S) --max-update round(f·N)
        --seed n --dropout D --save-interval-updates K --validate-interval 1000000 --save-interval 1000000

so every run is the whole schedule at its own budget (Knee explores half of *its* budget, linear and
cosine reach 0 at *its* end; the warmup is the demo's 6% of *its* budget). fairseq validates when it
saves (every K updates) and at the last update; the two huge epoch intervals switch off the
end-of-epoch validation, so every run's valid curve lies on the same grid K, 2K, ... plus its last
update, and its best checkpoint (the one scored on test) is one of those points. The data is prepared
once, in ``<work-dir>/prepared``. A run whose ``results.json`` exists and whose recorded command is the
planned one is skipped: the benchmark resumes.

The answer, with L_s(u) the valid loss of seed s at validation update u of a run:

- mean valid curve of a cell (schedule, f): L̄(u) = (1/S) Σ_s L_s(u), at the updates every seed validated;
- target valid loss of a baseline b (linear, cosine): L*_b = min_u L̄_{b,100%}(u); target BLEU
  B*_b = mean over seeds of the test BLEU of b at 100%;
- a cell reaches L*_b at its first validation update u* = min{u : L̄(u) <= L*_b} (none if the min is
  above); it reaches B*_b if its mean BLEU >= B*_b;
- a schedule's smallest budget for a target is the smallest f whose cell reaches it;
- "Knee at f matches b at 100%" when Knee's cell at f reaches both L*_b and B*_b (L*_b alone under
  ``--skip-generate``).

Outputs in ``--work-dir``: ``budget.md`` (the table and the answer, also printed), ``budget.png``
(best valid loss and BLEU against the budget, one line per schedule, mean ± std over seeds) and
``benchmark.json`` (every run's command and result, the cells, the targets, commit and device).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import logging
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from knee_plugins.fairseq_command import training_identity
from scripts.common.fairseq_cli import fairseq_command
from scripts.common.fairseq_recipe import (
    DEMO,
    SCHEDULES,
    RunConfig,
    TaskRecipe,
    generate_command,
    replace_option,
    train_command,
    with_budget,
)
from scripts.common.results import RunResult, mean_std, read_results_json
from scripts.common.runner import Job, RunnerOptions, run_all

logger = logging.getLogger("budget")

HERE = Path(__file__).resolve().parent
DEFAULT_SCHEDULES = ("knee", "linear", "cosine")
DEFAULT_FRACTIONS = (0.4, 0.55, 0.7, 1.0)
DEFAULT_TARGETS = ("linear", "cosine")
# An epoch interval no run reaches: fairseq then validates and saves on the update grid only.
NEVER_EPOCHS = 1_000_000
RUN_RECORD = "benchmark-run.json"
WORK_DIR = "<work-dir>"  # the work dir in a recorded command, so that a moved work dir still resumes
# fairseq flags the benchmark sets in every run itself.
CONTROLLED_FAIRSEQ_FLAGS = ("--seed", "--save-interval-updates", "--validate-interval", "--save-interval", "--dropout")
# The demo trains ~1.4 epochs without dropout; the budget's longest runs are ~10 epochs of the same corpus,
# where the paper's recipes regularise with dropout (its WMT'14 Transformer: 0.1).
DEFAULT_DROPOUT = 0.1

Curve = Sequence[tuple[int, float]]


def percent(fraction: float) -> str:
    """``0.55`` → ``"55%"``."""
    return f"{round(100 * fraction, 6):g}%"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' * (count != 1)}"


def budget_updates(fraction: float, max_updates: int) -> int:
    """The budget in updates of fraction f of the longest budget N: round(f·N)."""
    return round(fraction * max_updates)


# --- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedRun:
    """One (schedule, budget, seed) run of the demo, in its own folder."""

    schedule: str
    fraction: float
    updates: int
    seed: int
    run_dir: Path
    config: RunConfig = field(compare=False)
    heldout_pairs: int | None = None
    train_pairs: int | None = None

    @property
    def name(self) -> str:
        return f"{self.schedule} at {percent(self.fraction)} ({self.updates} updates), seed {self.seed}"

    @property
    def command(self) -> list[str]:
        """The run's ``fairseq-train`` command."""
        return train_command(self.config)

    @property
    def identity(self) -> dict[str, Any]:
        """What a finished run records and must match to be this run: its fairseq-train arguments (the
        work dir as ``<work-dir>``, so that a moved work dir still resumes; without the options that only
        choose which checkpoints are kept) and the data it trained on."""
        work_dir = str(self.run_dir.parent.parent)
        arguments = training_identity(self.command[len(fairseq_command("train")) :])
        data = {
            "spec": repr(self.config.recipe.spec),
            "train_pairs": self.train_pairs,
            "heldout_pairs": self.heldout_pairs,
        }
        return {"command": [word.replace(work_dir, WORK_DIR) for word in arguments], "data": data}

    @property
    def results_path(self) -> Path:
        return self.run_dir / "results.json"

    @property
    def record_path(self) -> Path:
        return self.run_dir / RUN_RECORD


def _flag_used(words: Sequence[str], flags: Sequence[str]) -> list[str]:
    return sorted({flag for word in words for flag in flags if word == flag or word.startswith(flag + "=")})


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.budget",
        description="Table 8's question on the translation demo: the smallest budget at which each schedule "
        "reaches linear's and cosine's valid loss and BLEU at the full budget.",
    )
    parser.add_argument(
        "--schedules",
        nargs="+",
        choices=SCHEDULES,
        default=list(DEFAULT_SCHEDULES),
        help="schedules to train at every budget (default: knee linear cosine)",
    )
    parser.add_argument(
        "--budgets",
        nargs="+",
        type=float,
        default=list(DEFAULT_FRACTIONS),
        help="budgets as fractions of --max-updates; must include 1.0, the reference (default: 0.4 0.55 0.7 1.0)",
    )
    parser.add_argument(
        "--targets",
        nargs="+",
        choices=SCHEDULES,
        default=None,
        help="baselines whose 100%% valid loss and BLEU are the targets (default: linear and cosine, "
        "those of them in --schedules)",
    )
    parser.add_argument("--max-updates", type=int, default=8000, help="the longest budget in updates (default: 8000)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 1..N of every (schedule, budget) (default: 1)")
    parser.add_argument(
        "--valid-interval",
        type=int,
        default=None,
        help="validate (and save) every K updates, the grid of every valid curve (default: max-updates // 20)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("runs/budget"),
        help="shared prepared data, one folder per run, the table, plot and benchmark.json (default: runs/budget)",
    )
    parser.add_argument("--train-pairs", type=int, default=None, help="the demo's --train-pairs (a smaller corpus)")
    parser.add_argument("--heldout-pairs", type=int, default=None, help="the demo's --heldout-pairs")
    parser.add_argument("--bpe-symbols", type=int, default=None, help="the demo's --bpe-symbols")
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="one peak LR for every schedule (default: each schedule's own, the demo's DEMO_PEAK_LR)",
    )
    parser.add_argument(
        "--dropout",
        type=float,
        default=DEFAULT_DROPOUT,
        help=f"dropout of every run (default: {DEFAULT_DROPOUT}; the demo's own is 0 for its ~1.4 epochs, the "
        "longest budget here is ~10 epochs at 8000 updates)",
    )
    parser.add_argument(
        "--skip-generate",
        action="store_true",
        help="do not score on test (no BLEU: the targets are the valid loss only)",
    )
    parser.add_argument("--cpu", action="store_true", help="train on CPU (default when there is no GPU)")
    parser.add_argument(
        "--world-size", type=int, default=None, help="GPUs every run uses (default: every local GPU; 1 on CPU)"
    )
    parser.add_argument(
        "--fairseq-args",
        default="",
        help="more fairseq-train arguments for every run, quoted as one string",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the fairseq-train command of every run and exit")
    args = parser.parse_args(argv)

    if args.max_updates < 2:
        parser.error(f"--max-updates must be >= 2, got {args.max_updates}")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    if not 0 <= args.dropout < 1:
        parser.error(f"--dropout must be in [0, 1), got {args.dropout:g}")
    if args.lr is not None and not args.lr > 0:
        parser.error(f"--lr must be > 0, got {args.lr:g}")
    bad = [f for f in args.budgets if not 0 < f <= 1]
    if bad:
        parser.error(f"--budgets must be fractions in (0, 1], got {bad}")
    if 1.0 not in args.budgets:
        parser.error(f"--budgets must include 1.0 (the full budget the targets come from), got {args.budgets}")
    args.budgets = sorted(set(args.budgets))
    updates = [budget_updates(f, args.max_updates) for f in args.budgets]
    if min(updates) < 2 or len(set(updates)) != len(updates):
        parser.error(
            f"--budgets {args.budgets} of --max-updates {args.max_updates} give the budgets {updates} updates: "
            "each must be >= 2 and all must differ"
        )
    if len(set(args.schedules)) != len(args.schedules):
        parser.error(f"--schedules lists a schedule twice: {args.schedules}")
    if args.targets is None:
        args.targets = [t for t in DEFAULT_TARGETS if t in args.schedules]
    missing = [t for t in args.targets if t not in args.schedules]
    if missing:
        parser.error(f"--targets {missing} must also be in --schedules {args.schedules}")
    if args.valid_interval is None:
        args.valid_interval = max(1, args.max_updates // 20)
    if args.valid_interval < 1:
        parser.error(f"--valid-interval must be >= 1, got {args.valid_interval}")
    try:
        runner_options(args).check()
    except ValueError as error:
        parser.error(str(error))
    controlled = _flag_used(shlex.split(args.fairseq_args), CONTROLLED_FAIRSEQ_FLAGS)
    if controlled:
        parser.error(f"--fairseq-args must not set {controlled}: the benchmark sets them per run")
    return args


def runner_options(args: argparse.Namespace) -> RunnerOptions:
    """The translation runner's options of every run: the demo, on the benchmark's corpus and devices (the
    benchmark's --max-updates and --seeds are its own: each run sets its budget and seed itself)."""
    return RunnerOptions.from_args(args, task="demo", max_updates=None, seeds=1)


def demo_recipe(args: argparse.Namespace) -> TaskRecipe:
    """The demo at the benchmark's dropout and corpus (the budget is set per run)."""
    return dataclasses.replace(runner_options(args).recipe(DEMO), dropout=args.dropout)


def plan_runs(args: argparse.Namespace) -> list[PlannedRun]:
    """Every (schedule, budget, seed) run in the order they train: seed, then budget (longest first,
    so the targets exist early), then schedule."""
    options = runner_options(args)
    work_dir = args.work_dir.resolve()
    base = demo_recipe(args)
    batches = options.batches(base)
    extra = ["--validate-interval", str(NEVER_EPOCHS), "--save-interval", str(NEVER_EPOCHS), *options.fairseq_extra]
    runs = []
    for seed in range(1, args.seeds + 1):
        for fraction in sorted(args.budgets, reverse=True):
            updates = budget_updates(fraction, args.max_updates)
            recipe = with_budget(base, updates)
            recipe = dataclasses.replace(
                recipe, extra_args=replace_option(recipe.extra_args, "--save-interval-updates", args.valid_interval)
            )
            for schedule in args.schedules:
                run_dir = work_dir / "runs" / f"{schedule}-{percent(fraction)[:-1]}pct-seed{seed}"
                config = RunConfig(
                    recipe,
                    schedule,
                    "full",
                    seed,
                    work_dir / "prepared" / "data-bin",
                    run_dir / "checkpoints",
                    batches,
                    cpu=options.use_cpu,
                    extra=extra,
                    lr=args.lr,
                )
                runs.append(
                    PlannedRun(schedule, fraction, updates, seed, run_dir, config, args.heldout_pairs, args.train_pairs)
                )
    return runs


def has_results(run: PlannedRun) -> bool:
    """Whether ``run`` already finished (its results.json exists and came from the same command and data).

    Raises SystemExit when the folder holds results of other settings: a resume must not mix them."""
    if not run.results_path.exists():
        return False
    recorded = json.loads(run.record_path.read_text(encoding="utf-8")) if run.record_path.exists() else {}
    planned = run.identity
    if {key: recorded.get(key) for key in planned} != planned:
        raise SystemExit(
            f"{run.run_dir} holds the results of other settings than this benchmark's for {run.name}:\n"
            f"  recorded: {json.dumps({key: recorded.get(key) for key in planned}) if recorded else '(no ' + RUN_RECORD + ')'}\n"
            f"  planned:  {json.dumps(planned)}\n"
            "Use another --work-dir, or delete that folder to train it again."
        )
    try:
        read_results_json(run.results_path)
    except (ValueError, KeyError, TypeError) as error:  # cut short while being written: train again
        logger.warning("%s is unreadable (%s): training %s again", run.results_path, error, run.name)
        return False
    return True


# --- running ----------------------------------------------------------------------------------


def git_commit() -> str:
    completed = subprocess.run(
        ["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=HERE, capture_output=True, text=True
    )
    return completed.stdout.strip() or "unknown"


def train(run: PlannedRun, references: Sequence[str], skip_generate: bool) -> float:
    """Train and score ``run`` through the runner in a clean folder; return the seconds it took."""
    if run.run_dir.exists():  # a run cut short: start it again from nothing
        shutil.rmtree(run.run_dir)
    run.run_dir.mkdir(parents=True)
    record = {**run.identity, "commit": git_commit()}
    run.record_path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    config = run.config
    job = Job(
        run.schedule,
        run.seed,
        config.save_dir,
        run.command,
        generate_command(config.recipe, config.data_bin, config.save_dir / "checkpoint_best.pt", config.cpu),
        total_updates=run.updates,
        peak_lr=config.peak_lr,
    )
    start = time.monotonic()
    run_all([job], references, config.recipe.spec, run.results_path, skip_generate=skip_generate)
    elapsed = time.monotonic() - start
    run.record_path.write_text(json.dumps({**record, "elapsed_seconds": elapsed}, indent=1) + "\n", encoding="utf-8")
    return elapsed


def load_result(run: PlannedRun) -> RunResult:
    """The run's one RunResult."""
    results = read_results_json(run.results_path)
    if len(results) != 1 or results[0].label != run.schedule:
        raise SystemExit(f"{run.results_path} should hold one {run.schedule} run, holds {[r.label for r in results]}")
    return results[0]


def train_all(runs: Sequence[PlannedRun], args: argparse.Namespace) -> None:
    """Prepare the data once and train the runs that have no results yet, one at a time, logging each
    start and end."""
    todo = [run for run in runs if not has_results(run)]
    logger.info(
        "%d runs planned: %d have results (skipped), %d to train (%d updates)",
        len(runs),
        len(runs) - len(todo),
        len(todo),
        sum(run.updates for run in todo),
    )
    if not todo:
        return
    _, references = runner_options(args).prepare(demo_recipe(args), args.work_dir.resolve())
    trained_updates, trained_seconds = 0, 0.0
    for index, run in enumerate(todo, 1):
        logger.info("run %d/%d start: %s", index, len(todo), run.name)
        elapsed = train(run, references, args.skip_generate)
        result = load_result(run)
        trained_updates += run.updates
        trained_seconds += elapsed
        left = todo[index:]
        eta = sum(r.updates for r in left) * trained_seconds / trained_updates
        logger.info(
            "run %d/%d end: %s in %.0f s (best valid loss %.3f, BLEU %s); %d left, about %.1f h at this pace",
            index,
            len(todo),
            run.name,
            elapsed,
            result.best_valid_loss,
            "-" if result.bleu_tokenized is None else f"{result.bleu_tokenized:.2f}",
            len(left),
            eta / 3600,
        )


# --- the answer -------------------------------------------------------------------------------


def mean_curve(curves: Sequence[Curve]) -> list[tuple[int, float]]:
    """L̄(u) = (1/S) Σ_s L_s(u) at the validation updates u that all S curves have, in update order."""
    if not curves:
        raise ValueError("mean_curve needs at least one curve")
    shared = set.intersection(*({update for update, _ in curve} for curve in curves))
    values = [dict(curve) for curve in curves]
    return [(update, statistics.fmean(v[update] for v in values)) for update in sorted(shared)]


def first_update_reaching(curve: Curve, target: float) -> int | None:
    """min{u : L(u) <= target} over the validation updates of ``curve``; None if no point gets there."""
    reached = [update for update, loss in curve if loss <= target]
    return min(reached) if reached else None


@dataclass(frozen=True)
class Reach:
    """Where a schedule first reaches a target: the smallest budget fraction whose run gets there and, for
    the valid loss, the first validation update of that run at or below the target."""

    fraction: float
    update: int | None = None


def smallest_budget_reaching_loss(curves_by_fraction: Mapping[float, Curve], target: float) -> Reach | None:
    """The smallest f whose (seed-mean) valid curve has a point <= target, with that point's update."""
    for fraction in sorted(curves_by_fraction):
        update = first_update_reaching(curves_by_fraction[fraction], target)
        if update is not None:
            return Reach(fraction, update)
    return None


def smallest_budget_reaching_bleu(bleu_by_fraction: Mapping[float, float | None], target: float) -> Reach | None:
    """The smallest f whose (seed-mean) BLEU is >= target."""
    for fraction in sorted(bleu_by_fraction):
        bleu = bleu_by_fraction[fraction]
        if bleu is not None and bleu >= target:
            return Reach(fraction)
    return None


@dataclass
class Cell:
    """The runs of one schedule at one budget, over seeds."""

    schedule: str
    fraction: float
    updates: int
    results: list[RunResult]

    @property
    def valid_curve(self) -> list[tuple[int, float]]:
        return mean_curve([r.valid_curve for r in self.results])

    @property
    def valid_loss(self) -> float:
        """min_u L̄(u), the loss the targets are compared with (= best valid loss for one seed)."""
        return min(loss for _, loss in self.valid_curve)

    @property
    def bleu(self) -> float | None:
        """Mean test BLEU (tokenised) over seeds; None when any run was not scored."""
        values = [r.bleu_tokenized for r in self.results if r.bleu_tokenized is not None]
        return statistics.fmean(values) if len(values) == len(self.results) else None


@dataclass(frozen=True)
class Target:
    baseline: str
    metric: str  # "valid loss" or "BLEU"
    value: float

    @property
    def name(self) -> str:
        return f"{self.baseline}@100% {self.metric}"

    def reach(self, cells: Sequence[Cell]) -> Reach | None:
        """Where the schedule of ``cells`` (one per budget) first reaches this target."""
        if self.metric == "valid loss":
            return smallest_budget_reaching_loss({c.fraction: c.valid_curve for c in cells}, self.value)
        return smallest_budget_reaching_bleu({c.fraction: c.bleu for c in cells}, self.value)


def build_cells(runs: Sequence[PlannedRun]) -> dict[str, list[Cell]]:
    """Cells by schedule, each list in budget order."""
    grouped: dict[tuple[str, float], list[PlannedRun]] = {}
    for run in runs:
        grouped.setdefault((run.schedule, run.fraction), []).append(run)
    cells: dict[str, list[Cell]] = {}
    for (schedule, fraction), group in grouped.items():
        results = [load_result(run) for run in sorted(group, key=lambda r: r.seed)]
        cells.setdefault(schedule, []).append(Cell(schedule, fraction, group[0].updates, results))
    return {schedule: sorted(group, key=lambda c: c.fraction) for schedule, group in cells.items()}


def build_targets(cells: Mapping[str, Sequence[Cell]], baselines: Sequence[str]) -> list[Target]:
    targets = []
    for baseline in baselines:
        full = next(c for c in cells[baseline] if c.fraction == 1.0)
        targets.append(Target(baseline, "valid loss", full.valid_loss))
        if full.bleu is not None:
            targets.append(Target(baseline, "BLEU", full.bleu))
    return targets


def format_reach(reach: Reach | None, cells: Sequence[Cell]) -> str:
    if reach is None:
        return "not reached"
    if reach.update is None:
        return percent(reach.fraction)
    updates = next(c.updates for c in cells if c.fraction == reach.fraction)
    return f"{percent(reach.fraction)} (update {reach.update} of {updates})"


def _markdown(rows: Sequence[Sequence[str]]) -> str:
    lines = [rows[0], ["---"] * len(rows[0]), *rows[1:]]
    return "\n".join("| " + " | ".join(row) + " |" for row in lines)


def format_table(cells: Mapping[str, Sequence[Cell]]) -> str:
    """Per schedule and budget: updates, seeds, best valid loss, test BLEU, training seconds (mean ± std)."""
    rows = [["schedule", "budget", "updates", "seeds", "best valid loss", "BLEU tok", "train s"]]
    for schedule, group in cells.items():
        for cell in group:
            rows.append(
                [
                    schedule,
                    percent(cell.fraction),
                    str(cell.updates),
                    str(len(cell.results)),
                    mean_std([r.best_valid_loss for r in cell.results], 3),
                    mean_std([r.bleu_tokenized for r in cell.results], 2),
                    mean_std([r.wall_seconds for r in cell.results], 0),
                ]
            )
    return _markdown(rows)


@dataclass(frozen=True)
class KneeMatch:
    """Whether Knee at ``fraction`` matches ``baseline`` at 100%."""

    fraction: float
    baseline: str
    valid_loss: float
    target_valid_loss: float
    bleu: float | None
    target_bleu: float | None

    @property
    def matches(self) -> bool:
        loss_ok = self.valid_loss <= self.target_valid_loss
        bleu_ok = self.target_bleu is None or (self.bleu is not None and self.bleu >= self.target_bleu)
        return loss_ok and bleu_ok

    def sentence(self) -> str:
        loss_sign = "<=" if self.valid_loss <= self.target_valid_loss else ">"
        parts = [f"valid loss {self.valid_loss:.3f} {loss_sign} {self.target_valid_loss:.3f}"]
        if self.target_bleu is not None:
            bleu_sign = ">=" if self.bleu is not None and self.bleu >= self.target_bleu else "<"
            parts.append(f"BLEU {'-' if self.bleu is None else f'{self.bleu:.2f}'} {bleu_sign} {self.target_bleu:.2f}")
        answer = "yes" if self.matches else "no"
        return f"Knee at {percent(self.fraction)} matches {self.baseline} at 100%: {answer} ({'; '.join(parts)})"


def knee_matches(cells: Mapping[str, Sequence[Cell]], targets: Sequence[Target]) -> list[KneeMatch]:
    if "knee" not in cells:
        return []
    matches = []
    for cell in cells["knee"]:
        for baseline in dict.fromkeys(t.baseline for t in targets):
            loss = next(t.value for t in targets if t.baseline == baseline and t.metric == "valid loss")
            bleu = next((t.value for t in targets if t.baseline == baseline and t.metric == "BLEU"), None)
            matches.append(KneeMatch(cell.fraction, baseline, cell.valid_loss, loss, cell.bleu, bleu))
    return matches


def format_answer(cells: Mapping[str, Sequence[Cell]], targets: Sequence[Target], matches: Sequence[KneeMatch]) -> str:
    """The smallest budget at which each schedule reaches each target, then the Knee yes/no lines."""
    if not targets:
        return "No targets: none of the --targets baselines was trained (see --schedules)."
    rows = [["target", "value", *cells]]
    for target in targets:
        digits = 3 if target.metric == "valid loss" else 2
        rows.append(
            [
                target.name,
                f"{target.value:.{digits}f}",
                *(format_reach(target.reach(group), group) for group in cells.values()),
            ]
        )
    lines = [
        "Smallest budget at which each schedule reaches the target (valid loss: min of the seed-mean valid "
        "curve <= target, first such validation update; BLEU: seed-mean test BLEU >= target):",
        "",
        _markdown(rows),
    ]
    if matches:
        lines += ["", *(f"- {match.sentence()}" for match in matches)]
    return "\n".join(lines)


def write_plot(cells: Mapping[str, Sequence[Cell]], targets: Sequence[Target], path: Path) -> Path:
    """``budget.png``: best valid loss and test BLEU against the budget, one line per schedule (mean ± std
    over seeds), the 100% targets as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = max(len(c.results) for group in cells.values() for c in group)
    figure, (loss_axes, bleu_axes) = plt.subplots(1, 2, figsize=(12, 4.6))
    colors = {schedule: f"C{i}" for i, schedule in enumerate(cells)}
    for offset, (schedule, group) in enumerate(cells.items()):
        shift = (offset - (len(cells) - 1) / 2) * 0.6  # side by side, so the error bars do not overlap
        xs = [100 * c.fraction + shift for c in group]
        for axes, value_of in (
            (loss_axes, lambda r: r.best_valid_loss),
            (bleu_axes, lambda r: r.bleu_tokenized),
        ):
            points = [[value_of(r) for r in c.results] for c in group]
            if any(v is None for values in points for v in values):
                continue
            means = [statistics.fmean(values) for values in points]
            errors = [statistics.stdev(values) if len(values) > 1 else 0.0 for values in points]
            axes.errorbar(xs, means, yerr=errors, marker="o", capsize=4, label=schedule, color=colors[schedule])
    for target in targets:
        axes = loss_axes if target.metric == "valid loss" else bleu_axes
        axes.axhline(target.value, linestyle="--", linewidth=1, color=colors[target.baseline], alpha=0.7)
    fractions = sorted({c.fraction for group in cells.values() for c in group})
    for axes, ylabel in ((loss_axes, "best valid loss (label-smoothed)"), (bleu_axes, "test BLEU (tokenised)")):
        axes.set_xticks([100 * f for f in fractions], [percent(f) for f in fractions])
        axes.set_xlabel("budget (% of the longest)")
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
        if axes.has_data():
            axes.legend()
        else:
            axes.text(0.5, 0.5, "not scored (--skip-generate)", transform=axes.transAxes, ha="center")
    figure.suptitle(f"schedules against the budget (mean ± std over {plural(seeds, 'seed')}; dashed: 100% targets)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def environment() -> dict[str, str]:
    """Commit, device and versions the benchmark ran with."""
    import torch

    versions = {}
    for package in ("torch", "fairseq-fixed", "sacrebleu", "knee-plugins"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    device = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    return {"commit": git_commit(), "device": device, "python": platform.python_version(), **versions}


def write_benchmark_json(
    args: argparse.Namespace,
    runs: Sequence[PlannedRun],
    cells: Mapping[str, Sequence[Cell]],
    targets: Sequence[Target],
    matches: Sequence[KneeMatch],
    markdown: str,
    path: Path,
) -> Path:
    def reach_record(reach: Reach | None) -> dict | None:
        return None if reach is None else dataclasses.asdict(reach)

    record = {
        "question": "the smallest budget at which each schedule reaches the full-budget valid loss and BLEU of "
        + " and ".join(args.targets),
        "max_updates": args.max_updates,
        "budgets": [{"fraction": f, "updates": budget_updates(f, args.max_updates)} for f in args.budgets],
        "schedules": args.schedules,
        "seeds": args.seeds,
        "valid_interval": args.valid_interval,
        "environment": environment(),
        "runs": [
            {
                "schedule": run.schedule,
                "fraction": run.fraction,
                "updates": run.updates,
                "seed": run.seed,
                "run_dir": str(run.run_dir),
                "command": run.command,
                "recorded": json.loads(run.record_path.read_text(encoding="utf-8")),
                "result": dataclasses.asdict(load_result(run)),
            }
            for run in runs
        ],
        "cells": [
            {
                "schedule": cell.schedule,
                "fraction": cell.fraction,
                "updates": cell.updates,
                "seeds": len(cell.results),
                "best_valid_loss": [r.best_valid_loss for r in cell.results],
                "bleu_tokenized": [r.bleu_tokenized for r in cell.results],
                "bleu_detokenized": [r.bleu_detokenized for r in cell.results],
                "wall_seconds": [r.wall_seconds for r in cell.results],
                "mean_valid_curve": cell.valid_curve,
                "valid_loss": cell.valid_loss,
                "bleu": cell.bleu,
            }
            for group in cells.values()
            for cell in group
        ],
        "targets": [
            {
                "name": target.name,
                "baseline": target.baseline,
                "metric": target.metric,
                "value": target.value,
                "reached": {schedule: reach_record(target.reach(group)) for schedule, group in cells.items()},
            }
            for target in targets
        ],
        "knee_matches": [{**dataclasses.asdict(m), "matches": m.matches} for m in matches],
        "markdown": markdown,
    }
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    work_dir = args.work_dir.resolve()
    runs = plan_runs(args)
    done = {run for run in runs if has_results(run)}

    if args.dry_run:
        print(
            f"# {len(runs)} runs ({plural(len(args.schedules), 'schedule')} x {plural(len(args.budgets), 'budget')} "
            f"x {plural(args.seeds, 'seed')}), {sum(r.updates for r in runs)} updates in all; {len(done)} have results and are skipped; "
            f"data prepared once in {work_dir / 'prepared'}"
        )
        for run in runs:
            print(shlex.join(run.command) + ("  # has results: skipped" if run in done else ""))
        return 0

    train_all(runs, args)
    cells = build_cells(runs)
    targets = build_targets(cells, args.targets)
    matches = knee_matches(cells, targets)
    markdown = "\n\n".join(
        [
            f"Budget benchmark: {args.max_updates} updates at 100%, validation every {args.valid_interval} updates, "
            f"{plural(args.seeds, 'seed')}, commit {git_commit()}",
            format_table(cells),
            format_answer(cells, targets, matches),
        ]
    )
    print(markdown)
    (work_dir / "budget.md").write_text(markdown + "\n", encoding="utf-8")
    for path in (
        write_plot(cells, targets, work_dir / "budget.png"),
        write_benchmark_json(args, runs, cells, targets, matches, markdown, work_dir / "benchmark.json"),
        work_dir / "budget.md",
    ):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
