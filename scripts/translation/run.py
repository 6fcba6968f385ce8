"""The paper's translation recipes (IWSLT'14 De→En, WMT'14 En→De) and the offline demo, as
``fairseq-train`` / ``fairseq-generate`` command lines.

``python -m scripts.translation.run --task iwslt14 --schedule knee --budget short``
prepares the data if needed, prints the exact ``fairseq-train`` command and runs it, then scores
the best-valid checkpoint on test with sacrebleu. ``--dry-run`` only prints. ``--task demo`` is
the same path on the embedded gettext corpus with a small Transformer, several schedules side by
side, a table and PNG plots (see :mod:`scripts.common.report`; ``python -m scripts.translation.report
WORK_DIR`` redraws them). The runs go through the shared runner (:mod:`scripts.common.runner`), the LR
sweep through the shared sweep (:mod:`scripts.common.sweep`).

Defaults are the paper's (docs/paper.md): RAdam (0.9, 0.999), seed LR 3e-4, no warmup,
clip-norm 25, weight decay 1e-4, label smoothing 0.1; IWSLT'14 dropout 0.3, ~4k tokens per
update, 50/35 epochs with explore 40/30; WMT'14 dropout 0.1, ~30k tokens per update, 70/30
epochs with explore 50/25. The tokens per update are kept whatever the number of GPUs: the
per-GPU ``--max-tokens`` and ``--update-freq`` are derived from ``--world-size``.

The demo trains a 2-layer, 128-wide Transformer (1024 tokens per update, Adam (0.9, 0.98), a 2k joint
BPE, no dropout: its budget is ~1.4 epochs of the corpus) for 1200 updates, validating every 100, with
the same warmup (6% of the budget, 72 updates) for every schedule but one-cycle (whose rise is its own):
Knee (explore until 50% of the budget), linear, cosine, inverse-sqrt, one-cycle, WSD (Knee's core with
a 1-sqrt cooldown over the last 20%) and Knee at 65% of the budget. Each schedule trains at its own
peak LR, chosen by ``--sweep-lr``: every schedule at every LR of one grid, seed 1, the lowest best
valid loss at the demo's budget wins (Knee's short budget uses Knee's). The sweep's chosen runs are
the demo's seed-1 runs (reused, not retrained). These settings and the chosen LRs are
:data:`scripts.common.fairseq_recipe.DEMO` and ``DEMO_PEAK_LR``, which the MAT demo builds on and the
budget benchmark trains at other budgets. On 2 idle CPU cores a run trains in ~1.5–2 minutes (~11
updates/s) and each test evaluation (1,943 sentences, beam 4) takes ~12 s. The prepared data is cached
in ``<work-dir>/prepared`` and reused while the corpus selection is unchanged.

Multi-node: compute the command for the whole world size and start it on every node, e.g. for
2 nodes of 8 GPUs ``--world-size 16 --dry-run``, then on each node
``torchrun --nnodes 2 --nproc-per-node 8 --node-rank $RANK --master-addr $HOST --master-port 29500
$(which fairseq-train) <printed arguments> --distributed-no-spawn``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from knee_plugins.fairseq_command import training_identity
from scripts.common import prepare, report, sweep
from scripts.common.fairseq_recipe import (
    BUDGETS,
    DEMO,
    SCHEDULES,
    RunConfig,
    TaskRecipe,
    count_updates_per_epoch,
    generate_command,
    train_command,
)
from scripts.common.results import RunResult
from scripts.common.runner import (
    Job,
    RunnerOptions,
    add_arguments,
    options_from,
    pick_example_ids,
    result_from_log,
    run_all,
    run_fairseq_train,
)

logger = logging.getLogger(__name__)

DEMO_RUNS = (
    ("knee", "full"),
    ("linear", "full"),
    ("cosine", "full"),
    ("inverse_sqrt", "full"),
    ("one_cycle", "full"),
    ("wsd", "full"),
    ("knee", "short"),
)

TASKS: dict[str, TaskRecipe] = {
    "iwslt14": TaskRecipe(
        "iwslt14",
        prepare.IWSLT14_SPEC,
        arch="transformer_iwslt_de_en",
        dropout=0.3,
        tokens_per_update=4096,
        max_tokens_per_gpu=4096,
        budget={"full": 50, "short": 35},
        explore={"full": 40, "short": 30},
        model_args=("--share-decoder-input-output-embed",),
        extra_args=("--no-epoch-checkpoints",),
    ),
    "wmt14": TaskRecipe(
        "wmt14",
        prepare.WMT14_SPEC,
        arch="transformer",
        dropout=0.1,
        tokens_per_update=30000,
        max_tokens_per_gpu=3750,
        budget={"full": 70, "short": 30},
        explore={"full": 50, "short": 25},
        beam=4,
        model_args=("--share-all-embeddings",),
        extra_args=("--no-epoch-checkpoints", "--save-interval-updates", "1000", "--keep-interval-updates", "1"),
    ),
    "demo": DEMO,
}


def run_training(run: RunConfig) -> RunResult:
    """Run ``fairseq-train`` for ``run`` with a progress bar; keep its log next to the checkpoints."""
    return run_fairseq_train(train_command(run), run.save_dir, run.label, run.seed, run.total_updates)


def reuse_sweep_run(run: RunConfig, sweep_dir: Path) -> RunResult | None:
    """``run``'s result when the LR sweep in ``sweep_dir`` already trained exactly ``run`` (same
    fairseq-train command but for ``--save-dir`` and which checkpoints are kept: seed 1 at the full
    budget and the same peak LR):
    its log and best checkpoint are copied into ``run.save_dir`` instead of training again."""
    json_path = sweep_dir / "sweep.json"
    if not json_path.exists():
        return None
    swept = dataclasses.replace(run, save_dir=sweep_dir / f"{run.schedule}-lr{run.peak_lr:g}")
    command = sweep_identity(train_command(swept))
    records = json.loads(json_path.read_text(encoding="utf-8"))
    record = next((r for r in records if sweep_identity(shlex.split(r["command"])) == command), None)
    if record is None or not (swept.save_dir / "checkpoint_best.pt").exists():
        return None
    run.save_dir.mkdir(parents=True, exist_ok=True)
    for name in ("train.log", "checkpoint_best.pt"):
        shutil.copyfile(swept.save_dir / name, run.save_dir / name)
    logger.info("%s seed %d: the LR sweep trained this exact run; reusing %s", run.label, run.seed, swept.save_dir)
    lines = (run.save_dir / "train.log").read_text(encoding="utf-8").splitlines()
    return result_from_log(lines, run.label, run.seed, float(record["wall_seconds"]), run.save_dir / "train.log")


# --- command line -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.translation.run",
        description="Train and evaluate the paper's translation recipes with Knee or a baseline schedule.",
    )
    add_arguments(
        parser, tasks=TASKS, task_help="iwslt14 (De→En), wmt14 (En→De) or demo (the embedded gettext corpus, offline)"
    )
    parser.add_argument(
        "--schedule",
        nargs="+",
        choices=SCHEDULES,
        default=None,
        help="schedules to train (default: knee; for the demo the paper's comparison: "
        "knee, linear, cosine, inverse_sqrt, one_cycle and knee at the short budget)",
    )
    parser.add_argument(
        "--budget",
        nargs="+",
        choices=BUDGETS,
        default=None,
        help="full or short budget (the paper's, see the module docs; default: full)",
    )
    parser.add_argument(
        "--updates-per-epoch",
        type=int,
        default=None,
        help="updates in one epoch, for the baselines' budgets in updates (default: measured from the binarised data)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak LR of every selected schedule (default: the recipe's; for the demo each schedule's "
        "own, from its LR sweep)",
    )
    sweep.add_argument(
        parser,
        "instead of the comparison: train every selected schedule (knee at the full budget) at each of "
        "these peak LRs with seed 1, print and write the table of best valid losses and each schedule's best LR "
        "(<work-dir>/sweep/sweep.{md,json}); finished runs are reused",
    )
    parser.add_argument(
        "--examples", type=int, default=3, help="test sentences shown translated by every schedule (default: 3)"
    )
    args = parser.parse_args(argv)
    options_from(parser, args)
    for lr in ([args.lr] if args.lr is not None else []) + (args.sweep_lr or []):
        if not lr > 0:
            parser.error(f"--lr and --sweep-lr take peak learning rates > 0, got {lr:g}")
    if args.lr is not None and args.sweep_lr:
        parser.error("--lr sets one peak LR for every schedule and --sweep-lr tries several: pass one of them")
    if args.examples < 0:
        parser.error(f"--examples must be >= 0, got {args.examples}")
    return args


def selected_runs(args: argparse.Namespace) -> list[tuple[str, str]]:
    if args.task == "demo" and args.schedule is None and args.budget is None:
        return list(DEMO_RUNS)
    return [(s, b) for s in (args.schedule or ["knee"]) for b in (args.budget or ["full"])]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    options = RunnerOptions.from_args(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    recipe = options.recipe(TASKS[args.task])
    work_dir = options.resolve_work_dir(args.task)
    cpu = options.use_cpu
    batches = options.batches(recipe)
    data_bin = work_dir / "prepared" / "data-bin"
    raw_test: list[str] = []
    if not args.dry_run:
        data_bin, raw_test = options.prepare(recipe, work_dir)

    runs = [
        RunConfig(
            recipe,
            schedule,
            budget,
            seed,
            data_bin,
            work_dir / "checkpoints" / f"{schedule}-{budget}-seed{seed}",
            batches,
            updates_per_epoch=args.updates_per_epoch,
            cpu=cpu,
            extra=options.fairseq_extra,
            lr=args.lr,
        )
        for seed in range(1, args.seeds + 1)
        for schedule, budget in selected_runs(args)
    ]
    needs_epoch_length = recipe.budget_unit == "epochs" and any(r.schedule in ("linear", "cosine") for r in runs)
    if needs_epoch_length and args.updates_per_epoch is None:
        if args.dry_run and not data_bin.exists():
            raise SystemExit("--dry-run of linear/cosine needs --updates-per-epoch (or prepared data to measure it)")
        measured = count_updates_per_epoch(runs[0])
        logger.info("one epoch is %d updates", measured)
        for run in runs:
            run.updates_per_epoch = measured

    sweep_dir = work_dir / "sweep"
    if args.dry_run:
        for run in sweep_runs(runs, args.sweep_lr, sweep_dir) if args.sweep_lr else runs:
            print(shlex.join(train_command(run)))
        return 0
    if args.sweep_lr:
        run_lr_sweep(runs, args.sweep_lr, sweep_dir)
        return 0

    jobs = [
        Job(
            run.label,
            run.seed,
            run.save_dir,
            train_command(run),
            generate_command(recipe, data_bin, run.save_dir / "checkpoint_best.pt", cpu),
            total_updates=run.total_updates,
            peak_lr=run.peak_lr,
            reuse=functools.partial(reuse_sweep_run, run, sweep_dir),
        )
        for run in runs
    ]
    results = run_all(
        jobs,
        raw_test,
        recipe.spec,
        work_dir / "results.json",
        skip_generate=args.skip_generate,
        example_ids=pick_example_ids(raw_test, args.examples),
    )
    (work_dir / "table.md").write_text(report.format_table(results) + "\n", encoding="utf-8")
    print(report.format_table(results))
    examples = report.format_examples(results)
    if examples:
        print(examples)
        (work_dir / "examples.md").write_text(examples + "\n", encoding="utf-8")
    for path in report.write_plots(results, work_dir):
        print(f"wrote {path}")
    return 0


# --- the LR sweep -----------------------------------------------------------------------------


def sweep_identity(command: Sequence[str]) -> str:
    """What makes two sweep runs the same run: the ``fairseq-train`` command without the options that
    only choose which checkpoints stay on disk (a sweep recorded before the demo kept
    ``checkpoint_last.pt`` is still this sweep)."""
    return shlex.join(training_identity(command))


def sweep_run(template: RunConfig, schedule: str, lr: float, sweep_dir: Path) -> RunConfig:
    """The sweep's run of ``schedule`` at peak LR ``lr``: seed 1 at the full budget (Knee's short
    budget uses Knee's LR), in ``sweep_dir/<schedule>-lr<lr>``."""
    return dataclasses.replace(
        template, schedule=schedule, budget="full", seed=1, lr=lr, save_dir=sweep_dir / f"{schedule}-lr{lr:g}"
    )


def sweep_runs(runs: Sequence[RunConfig], learning_rates: Sequence[float], sweep_dir: Path) -> list[RunConfig]:
    """One run per schedule of ``runs`` and peak LR of the grid (before any widening)."""
    schedules = dict.fromkeys(run.schedule for run in runs)
    return [sweep_run(runs[0], schedule, lr, sweep_dir) for schedule in schedules for lr in learning_rates]


def run_lr_sweep(runs: Sequence[RunConfig], learning_rates: Sequence[float], sweep_dir: Path) -> dict[str, float]:
    """The demo's LR protocol (:mod:`scripts.common.sweep`): every schedule of ``runs`` at every peak LR
    for the whole budget, scored by its lowest valid loss (the checkpoint the demo scores), edge winners
    widened. A run is the same run when its ``fairseq-train`` command is. Writes ``sweep.json`` after
    every run, then ``sweep.md`` and ``sweep.png``; returns the chosen LR per schedule."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    json_path = sweep_dir / "sweep.json"
    template = runs[0]

    def command(schedule: str, lr: float) -> str:
        return sweep_identity(train_command(sweep_run(template, schedule, lr, sweep_dir)))

    def as_record(record: dict) -> sweep.SweepRecord:
        identity = sweep_identity(shlex.split(record["command"]))
        return sweep.SweepRecord(
            record["schedule"], float(record["lr"]), float(record["best_valid_loss"]), identity, record
        )

    def train(schedule: str, lr: float) -> sweep.SweepRecord:
        result = run_training(sweep_run(template, schedule, lr, sweep_dir))
        return as_record(
            {
                "schedule": schedule,
                "lr": lr,
                "updates": result.updates,
                "best_valid_loss": result.best_valid_loss,
                "last_valid_loss": result.valid_curve[-1][1],
                "wall_seconds": result.wall_seconds,
                "command": shlex.join(train_command(sweep_run(template, schedule, lr, sweep_dir))),
            }
        )

    def save(records: list[sweep.SweepRecord]) -> None:
        json_path.write_text(json.dumps([r.data for r in records], indent=1) + "\n", encoding="utf-8")

    previous = json.loads(json_path.read_text(encoding="utf-8")) if json_path.exists() else []
    records = sweep.run_sweep(
        list(dict.fromkeys(run.schedule for run in runs)),
        learning_rates,
        train,
        command,
        previous=[as_record(r) for r in previous],
        save=save,
        where=str(json_path),
        remedy=f"pass another --work-dir (or move {sweep_dir} away)",
    )
    save(records)
    data = [r.data for r in records]
    chosen = report.best_learning_rates(data)
    table = report.format_sweep_table(data)
    (sweep_dir / "sweep.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    print("best peak LR per schedule: " + json.dumps(chosen))
    print(f"wrote {report.write_sweep_plot(data, sweep_dir / 'sweep.png')}")
    return chosen


if __name__ == "__main__":
    sys.exit(main())
