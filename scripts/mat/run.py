"""The paper's MAT recipe: the multi-branch attentive Transformer (``--arch transformer_mb``)
trained in two phases with proximal initialisation, under Knee or the inverse-sqrt baseline.

``python -m scripts.mat.run --task iwslt14 --schedule knee inverse_sqrt`` runs, for each
schedule (and seed):

1. phase 1: a single-branch model (N = 1, drop-branch 0) from scratch;
2. ``knee-mat-init``: its best-valid checkpoint copied into every branch of the N-branch model,
   optimizer and schedule reset (proximal initialisation);
3. phase 2: the N-branch model with drop-branch, started from that checkpoint
   (``--finetune-from-model``: a fresh optimizer, schedule, epoch and update count; a restarted
   phase 2 resumes from its own ``checkpoint_last.pt``);
4. ``fairseq-generate`` on each phase's best-valid checkpoint (beam and length penalty of the MAT
   README) and BLEU as the translation recipes compute it.

The phases run through the shared runner (:mod:`scripts.common.runner`), and the data is prepared by
the same routine as the translation recipes' (WMT'14 read En-De and turned around to De→En). A
finished phase leaves ``result.json`` in its directory and is not trained again when the recipe is
rerun; an interrupted phase resumes from its ``checkpoint_last.pt`` (fairseq's own resume).

Both phases use the paper's settings (docs/paper.md): Adam (0.9, 0.98), lr 5e-4, 4000 warmup
updates from 1e-7, no clipping or weight decay, label smoothing 0.1, dropout 0.3, attention and
activation dropout 0; IWSLT'14 De→En 200 epochs per phase, Knee exploring until epoch 100 (the
warmup counts towards it: ``--explore-epochs 100``), then decaying linearly to 0 at epoch 200;
WMT'14 De→En 70 epochs per phase, exploring until epoch 35. The baseline is ``inverse_sqrt``
with the same warmup. Phase-2 models: IWSLT 3 branches, drop-branch 0.3; WMT 2 branches,
drop-branch 0.2; one joined FFN branch (the MAT README's settings, ``transformer_mb_*`` archs).

``--task demo`` is the same path on the embedded gettext corpus with the translation demo's
calibrated settings (:data:`scripts.common.fairseq_recipe.DEMO`: its 2-layer, 128-wide model, 2k BPE,
1024 tokens per update, Adam (0.9, 0.98) at each schedule's swept peak LR, 2e-3 for Knee and
inverse-sqrt, no dropout, warmup 6% of the budget, Knee exploring until its middle) for 800 updates
per phase, with MAT's own no clipping, no weight decay, warmup from 1e-7 and, in phase 2, 3 branches
with drop-branch 0.3: about 8 minutes on 2 CPU cores.
``--dry-run`` prints every command (phase 1, init, phase 2, generate) and exits. Multi-GPU: the
tokens per update are kept whatever ``--world-size`` (per-GPU ``--max-tokens``/``--update-freq``);
multi-node as for the translation recipes (see :mod:`scripts.translation.run`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from knee_plugins.fairseq_command import console_script
from scripts.common import prepare, report
from scripts.common.fairseq_recipe import (
    DEMO,
    DEMO_MODEL_ARGS,
    BatchPlan,
    TaskRecipe,
    fairseq_train_command,
    generate_command,
    knee_explore_args,
    with_budget,
)
from scripts.common.results import RunResult, read_results_json
from scripts.common.runner import Job, RunnerOptions, add_arguments, options_from, run_all

logger = logging.getLogger(__name__)

SCHEDULES = ("knee", "inverse_sqrt")
WARMUP_INIT_LR = 1e-7


@dataclass(frozen=True)
class MatRecipe:
    """A MAT task: the translation settings shared by both phases (``task``: its arch, budget per
    phase, explore, LR, betas, batch, beam...) and the phase-2 branch settings. The warmup is
    ``warmup_updates``, or ``task.warmup_ratio`` of a phase when the task has one (the demo's)."""

    task: TaskRecipe
    branches: int
    branch_dropout: float
    warmup_updates: int = 4000

    @property
    def warmup(self) -> int:
        if self.task.warmup_ratio:
            return max(1, round(self.task.warmup_ratio * self.task.budget["full"]))
        return self.warmup_updates


_MAT_DROPOUTS = ("--attention-dropout", "0", "--activation-dropout", "0")
ONE_JOINED_FFN = ("--encoder-pffn-branches", "1", "--decoder-pffn-branches", "1", "--join-pffn")


def paper_task(
    name: str,
    spec: prepare.PreparationSpec,
    arch: str,
    *,
    tokens_per_update: int,
    epochs: int,
    explore_epochs: int,
    beam: int,
    lenpen: float,
) -> TaskRecipe:
    """One of the paper's MAT tasks: Adam (0.9, 0.98) at 5e-4, no clipping or weight decay, dropout 0.3
    (attention and activation 0), shared embeddings, 4096 tokens per GPU batch."""
    return TaskRecipe(
        name,
        spec,
        arch=arch,
        model_args=("--share-all-embeddings", *_MAT_DROPOUTS),
        dropout=0.3,
        optimizer="adam",
        betas=(0.9, 0.98),
        lr=5e-4,
        clip_norm=0.0,
        weight_decay=0.0,
        tokens_per_update=tokens_per_update,
        max_tokens_per_gpu=4096,
        budget={"full": epochs},
        explore={"full": explore_epochs},
        beam=beam,
        generate_args=("--lenpen", f"{lenpen:g}"),
    )


TASKS: dict[str, MatRecipe] = {
    "iwslt14": MatRecipe(
        paper_task(
            "iwslt14",
            dataclasses.replace(prepare.IWSLT14_SPEC, joined_dictionary=True),
            "transformer_mb_mat_iwslt_de_en",
            tokens_per_update=4096,
            epochs=200,
            explore_epochs=100,
            beam=5,
            lenpen=1.2,
        ),
        branches=3,
        branch_dropout=0.3,
    ),
    # WMT'14 read En-De and turned around (see README for where each value comes from).
    "wmt14": MatRecipe(
        paper_task(
            "wmt14",
            dataclasses.replace(prepare.WMT14_SPEC, source_lang="de", target_lang="en"),
            "transformer_mb_mat_wmt_en_de",
            tokens_per_update=524_288,
            epochs=70,
            explore_epochs=35,
            beam=4,
            lenpen=0.6,
        ),
        branches=2,
        branch_dropout=0.2,
    ),
    # The translation demo's settings (model, data, batch, optimizer, peak LRs, dropout, warmup ratio,
    # explore), MAT's model, clipping and weight decay, 800 updates per phase.
    "demo": MatRecipe(
        with_budget(
            dataclasses.replace(
                DEMO,
                arch="transformer_mb",
                budget={"full": DEMO.budget["full"]},
                explore={"full": DEMO.explore["full"]},
                clip_norm=0.0,
                weight_decay=0.0,
                model_args=(*DEMO_MODEL_ARGS, *ONE_JOINED_FFN, "--share-all-embeddings", *_MAT_DROPOUTS),
                generate_args=("--lenpen", "1.2", *DEMO.generate_args),
            ),
            800,
        ),
        branches=3,
        branch_dropout=0.3,
    ),
}


@dataclass
class MatRun:
    """One schedule and seed of a MAT task: both phases' directories and settings."""

    recipe: MatRecipe
    schedule: str
    seed: int
    data_bin: Path
    work_dir: Path
    batches: BatchPlan
    cpu: bool = False
    extra: tuple[str, ...] = ()

    @property
    def run_dir(self) -> Path:
        return self.work_dir / "checkpoints" / f"{self.schedule}-seed{self.seed}"

    def phase_dir(self, phase: int) -> Path:
        return self.run_dir / f"phase{phase}"

    @property
    def init_checkpoint(self) -> Path:
        return self.phase_dir(2) / "checkpoint_init.pt"


def schedule_args(recipe: MatRecipe, schedule: str) -> list[str]:
    """``--lr-scheduler`` arguments of one phase: warmup from 1e-7 for both; Knee explores until
    the middle of the phase (epochs, warmup included; or updates after warmup for the demo)."""
    warmup = recipe.warmup
    warmup_args = ["--warmup-updates", str(warmup), "--warmup-init-lr", f"{WARMUP_INIT_LR:g}"]
    lr = f"{recipe.task.lr_of(schedule):g}"
    if schedule == "inverse_sqrt":
        return ["--lr-scheduler", "inverse_sqrt", "--lr", lr, *warmup_args]
    if schedule != "knee":
        raise ValueError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    return ["--lr-scheduler", "knee", "--lr", lr, *warmup_args, *knee_explore_args(recipe.task, "full", warmup)]


def branch_args(recipe: MatRecipe, phase: int) -> list[str]:
    """Phase 1: one branch, no drop-branch; phase 2: the recipe's branches and drop-branch."""
    branches, dropout = (1, 0.0) if phase == 1 else (recipe.branches, recipe.branch_dropout)
    return [
        "--encoder-branches",
        str(branches),
        "--decoder-branches",
        str(branches),
        "--branch-dropout",
        f"{dropout:g}",
        "--pffn-branch-dropout",
        f"{dropout:g}",
    ]


def train_command(run: MatRun, phase: int) -> list[str]:
    """The ``fairseq-train`` command of one phase (phase 2 starts from the proximal initialisation)."""
    task = run.recipe.task
    init_args = ("--finetune-from-model", str(run.init_checkpoint)) if phase == 2 else ()
    return fairseq_train_command(
        task,
        run.data_bin,
        run.phase_dir(phase),
        run.batches,
        run.seed,
        schedule_args(run.recipe, run.schedule),
        model_args=(*task.model_args, *branch_args(run.recipe, phase)),
        extra=(*init_args, *run.extra),
        cpu=run.cpu,
    )


def init_command(run: MatRun) -> list[str]:
    """Proximal initialisation (``knee-mat-init``): phase 1's best-valid checkpoint into every branch
    of phase 2."""
    return console_script("knee-mat-init", "knee_plugins.fairseq_plugin.mat_init") + [
        str(run.phase_dir(1) / "checkpoint_best.pt"),
        str(run.init_checkpoint),
        "--branches",
        str(run.recipe.branches),
    ]


def generate(run: MatRun, phase: int) -> list[str]:
    """The ``fairseq-generate`` command scoring one phase's best-valid checkpoint on test."""
    return generate_command(run.recipe.task, run.data_bin, run.phase_dir(phase) / "checkpoint_best.pt", run.cpu)


def commands(run: MatRun) -> list[list[str]]:
    """Every command of one run, in order: phase 1, init, phase 2, generate (phase 1, phase 2)."""
    return [train_command(run, 1), init_command(run), train_command(run, 2), generate(run, 1), generate(run, 2)]


def phase_job(run: MatRun, phase: int) -> Job:
    """One phase of ``run`` for the runner (which reuses a phase that finished and continues one that
    was cut short)."""
    task = run.recipe.task
    return Job(
        f"{run.schedule} phase {phase}",
        run.seed,
        run.phase_dir(phase),
        train_command(run, phase),
        generate(run, phase),
        total_updates=task.budget["full"] if task.budget_unit == "updates" else None,
        init_command=init_command(run) if phase == 2 else None,
    )


def read_results(work_dir: Path) -> list[RunResult]:
    """The runs a MAT recipe wrote to ``work_dir/results.json`` (labels ``<schedule> phase <k>``)."""
    return read_results_json(work_dir / "results.json")


# --- command line -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.mat.run",
        description="Train MAT in two phases (proximal initialisation) with Knee or inverse-sqrt and score BLEU.",
    )
    add_arguments(
        parser,
        tasks=TASKS,
        task_help="iwslt14 (De→En), wmt14 (De→En) or demo (the embedded gettext corpus, offline)",
        work_dir_help="./runs/mat-<task>",
    )
    parser.add_argument(
        "--schedule",
        nargs="+",
        choices=SCHEDULES,
        default=list(SCHEDULES),
        help="schedules to train, each in both phases (default: knee inverse_sqrt)",
    )
    args = parser.parse_args(argv)
    options_from(parser, args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    options = RunnerOptions.from_args(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    recipe = TASKS[args.task]
    recipe = dataclasses.replace(recipe, task=options.recipe(recipe.task))
    work_dir = options.resolve_work_dir(f"mat-{args.task}")
    data_bin = work_dir / "prepared" / "data-bin"
    raw_test: list[str] = []
    if not args.dry_run:
        data_bin, raw_test = options.prepare(recipe.task, work_dir)
    runs = [
        MatRun(
            recipe,
            schedule,
            seed,
            data_bin,
            work_dir,
            options.batches(recipe.task),
            cpu=options.use_cpu,
            extra=tuple(options.fairseq_extra),
        )
        for seed in range(1, args.seeds + 1)
        for schedule in args.schedule
    ]
    if args.dry_run:
        for run in runs:
            print(f"# {run.schedule}, seed {run.seed}: phase 1, proximal init, phase 2, BLEU of each phase")
            for command in commands(run):
                print(shlex.join(command))
        return 0
    jobs = [phase_job(run, phase) for run in runs for phase in (1, 2)]
    results = run_all(jobs, raw_test, recipe.task.spec, work_dir / "results.json", skip_generate=args.skip_generate)
    print(report.format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
