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

A finished phase leaves ``result.json`` in its directory and is not trained again when the recipe
is rerun; an interrupted phase resumes from its ``checkpoint_last.pt`` (fairseq's own resume).

Both phases use the paper's settings (docs/paper.md): Adam (0.9, 0.98), lr 5e-4, 4000 warmup
updates from 1e-7, no clipping or weight decay, label smoothing 0.1, dropout 0.3, attention and
activation dropout 0; IWSLT'14 De→En 200 epochs per phase, Knee exploring until epoch 100 (the
warmup counts towards it: ``--explore-epochs 100``), then decaying linearly to 0 at epoch 200;
WMT'14 De→En 70 epochs per phase, exploring until epoch 35. The baseline is ``inverse_sqrt``
with the same warmup. Phase-2 models: IWSLT 3 branches, drop-branch 0.3; WMT 2 branches,
drop-branch 0.2; one joined FFN branch (the MAT README's settings, ``transformer_mb_*`` archs).

``--task demo`` is the same path on the embedded gettext corpus with a 2-layer, 128-wide model,
a few hundred updates per phase and a 2k BPE, so that it runs on a CPU in a few minutes.
``--dry-run`` prints every command (phase 1, init, phase 2, generate) and exits. Multi-GPU: the
tokens per update are kept whatever ``--world-size`` (per-GPU ``--max-tokens``/``--update-freq``);
multi-node as for the translation recipes (see :mod:`scripts.translation.run`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scripts.common import prepare
from scripts.common.results import RunResult, read_results_json, write_results_json
from scripts.translation import run as translation

logger = logging.getLogger(__name__)

SCHEDULES = ("knee", "inverse_sqrt")
WARMUP_INIT_LR = 1e-7


@dataclass(frozen=True)
class MatRecipe:
    """A MAT task: the translation settings shared by both phases (``task``: its arch, budget per
    phase, explore, LR, betas, batch, beam...) and the phase-2 branch settings."""

    task: translation.TaskRecipe
    branches: int
    branch_dropout: float
    warmup_updates: int = 4000


_MAT_TRAINING = dict(lr=5e-4, betas=(0.9, 0.98), clip_norm=0.0, weight_decay=0.0, label_smoothing=0.1)
_MAT_DROPOUTS = ("--attention-dropout", "0", "--activation-dropout", "0")

TASKS: dict[str, MatRecipe] = {
    "iwslt14": MatRecipe(
        translation.TaskRecipe(
            "iwslt14",
            dataclasses.replace(prepare.IWSLT14_SPEC, joined_dictionary=True),
            arch="transformer_mb_iwslt_de_en",
            dropout=0.3,
            tokens_per_update=4096,
            max_tokens_per_gpu=4096,
            budget={"full": 200},
            explore={"full": 100},
            beam=5,
            **_MAT_TRAINING,
            model_args=("--share-all-embeddings", *_MAT_DROPOUTS),
            generate_args=("--lenpen", "1.2"),
        ),
        branches=3,
        branch_dropout=0.3,
    ),
    "wmt14": MatRecipe(
        translation.TaskRecipe(
            "wmt14",
            dataclasses.replace(prepare.WMT14_SPEC, source_lang="de", target_lang="en"),
            arch="transformer_mb_wmt_en_de",
            dropout=0.3,
            tokens_per_update=524_288,
            max_tokens_per_gpu=4096,
            budget={"full": 70},
            explore={"full": 35},
            beam=4,
            **_MAT_TRAINING,
            model_args=("--share-all-embeddings", *_MAT_DROPOUTS),
            generate_args=("--lenpen", "0.6"),
        ),
        branches=2,
        branch_dropout=0.2,
    ),
    "demo": MatRecipe(
        translation.TaskRecipe(
            "demo",
            dataclasses.replace(prepare.DEMO_SPEC, bpe_symbols=2000),
            arch="transformer_mb",
            dropout=0.1,
            tokens_per_update=1024,
            max_tokens_per_gpu=1024,
            budget={"full": 300},
            explore={"full": 0.5},
            budget_unit="updates",
            beam=4,
            **{**_MAT_TRAINING, "lr": 5e-3},
            model_args=(
                *translation.DEMO_MODEL_ARGS,
                "--encoder-pffn-branches",
                "1",
                "--decoder-pffn-branches",
                "1",
                "--join-pffn",
                "--share-all-embeddings",
                *_MAT_DROPOUTS,
            ),
            extra_args=("--save-interval-updates", "60", *translation.DEMO_RUN_ARGS),
            generate_args=("--lenpen", "1.2", "--max-len-a", "1.2", "--max-len-b", "10"),
        ),
        branches=3,
        branch_dropout=0.3,
        warmup_updates=30,
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
    batches: translation.BatchPlan
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

    def translation_run(self, phase: int) -> translation.RunConfig:
        """The translation recipe's view of one phase (for ``generate_command``/``run_generation``)."""
        return translation.RunConfig(
            self.recipe.task,
            self.schedule,
            "full",
            self.seed,
            self.data_bin,
            self.phase_dir(phase),
            self.batches,
            cpu=self.cpu,
        )


def schedule_args(recipe: MatRecipe, schedule: str) -> list[str]:
    """``--lr-scheduler`` arguments of one phase: warmup from 1e-7 for both; Knee explores until
    the middle of the phase (epochs, warmup included; or updates after warmup for the demo)."""
    task = recipe.task
    warmup = ["--warmup-updates", str(recipe.warmup_updates), "--warmup-init-lr", f"{WARMUP_INIT_LR:g}"]
    if schedule == "inverse_sqrt":
        return ["--lr-scheduler", "inverse_sqrt", "--lr", f"{task.lr:g}", *warmup]
    if schedule != "knee":
        raise ValueError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    explore = task.explore["full"]
    if task.budget_unit == "epochs":
        explore_args = ["--explore-epochs", f"{explore:g}"]
    else:
        updates = round(explore * task.budget["full"]) - recipe.warmup_updates
        if updates < 0:
            raise ValueError(
                f"the warmup ({recipe.warmup_updates} updates) is longer than the explore phase "
                f"({explore:g} of {task.budget['full']} updates)"
            )
        explore_args = ["--explore-updates", str(updates)]
    return ["--lr-scheduler", "knee", "--lr", f"{task.lr:g}", *warmup, *explore_args]


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
    """The ``fairseq-train`` command of one phase."""
    task = run.recipe.task
    budget = task.budget["full"]
    budget_args = ["--max-epoch", str(budget)] if task.budget_unit == "epochs" else ["--max-update", str(budget)]
    init_args = ["--finetune-from-model", str(run.init_checkpoint)] if phase == 2 else []
    command = prepare.fairseq_command("train") + [
        str(run.data_bin),
        "--arch",
        task.arch,
        *task.model_args,
        *branch_args(run.recipe, phase),
        "--source-lang",
        task.spec.source_lang,
        "--target-lang",
        task.spec.target_lang,
        "--optimizer",
        "adam",
        "--adam-betas",
        f"({task.betas[0]:g}, {task.betas[1]:g})",
        "--weight-decay",
        f"{task.weight_decay:g}",
        "--clip-norm",
        f"{task.clip_norm:g}",
        *schedule_args(run.recipe, run.schedule),
        *budget_args,
        "--dropout",
        f"{task.dropout:g}",
        "--criterion",
        "label_smoothed_cross_entropy",
        "--label-smoothing",
        f"{task.label_smoothing:g}",
        "--max-tokens",
        str(run.batches.max_tokens),
        "--update-freq",
        str(run.batches.update_freq),
        "--seed",
        str(run.seed),
        "--save-dir",
        str(run.phase_dir(phase)),
        *init_args,
        "--best-checkpoint-metric",
        "loss",
        "--log-format",
        "json",
        "--log-interval",
        "10",
        *task.extra_args,
        *run.extra,
    ]
    if run.cpu:
        command.append("--cpu")
    return command


def mat_init_command() -> list[str]:
    """The ``knee-mat-init`` console script next to this interpreter, else ``python -m``."""
    script = Path(sys.executable).with_name("knee-mat-init")
    if script.exists():
        return [str(script)]
    found = shutil.which("knee-mat-init")
    return [found] if found else [sys.executable, "-m", "knee_plugins.fairseq_plugin.mat_init"]


def init_command(run: MatRun) -> list[str]:
    """Proximal initialisation: phase 1's best-valid checkpoint into every branch of phase 2."""
    return mat_init_command() + [
        str(run.phase_dir(1) / "checkpoint_best.pt"),
        str(run.init_checkpoint),
        "--branches",
        str(run.recipe.branches),
    ]


def read_results(work_dir: Path) -> list[RunResult]:
    """The runs a MAT recipe wrote to ``work_dir/results.json`` (labels ``<schedule> phase <k>``)."""
    return read_results_json(work_dir / "results.json")


# --- data ---------------------------------------------------------------------------------------


def prepare_data(args: argparse.Namespace, recipe: MatRecipe, work_dir: Path) -> tuple[Path, list[str]]:
    """Prepare (once) the task's data with a joined dictionary (MAT shares all embeddings);
    WMT'14 is read as the translation recipe reads it and turned around to De→En."""
    if args.task != "wmt14":
        return translation.prepare_data(args, recipe.task, work_dir)
    spec = recipe.task.spec
    data_dir = work_dir / "prepared"
    data_bin, raw_test = data_dir / "data-bin", data_dir / f"raw-test.{spec.target_lang}"
    stamp_path, stamp = data_dir / "prepared.json", {"task": "wmt14-de-en", "spec": repr(spec)}
    if (
        stamp_path.exists()
        and json.loads(stamp_path.read_text(encoding="utf-8")) == stamp
        and (data_bin / f"dict.{spec.target_lang}.txt").exists()
        and raw_test.exists()
    ):
        logger.info("reusing the prepared data in %s", data_dir)
        return data_bin, prepare.read_lines(raw_test)
    raw = prepare.read_wmt14(prepare.download_wmt14(args.orig_dir or work_dir / "orig"))
    raw = {split: (german, english) for split, (english, german) in raw.items()}
    prepare.prepare(raw, spec, data_dir)
    prepare.write_lines(raw_test, raw["test"][1])
    stamp_path.write_text(json.dumps(stamp) + "\n", encoding="utf-8")
    return data_bin, raw["test"][1]


# --- command line -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.mat.run",
        description="Train MAT in two phases (proximal initialisation) with Knee or inverse-sqrt and score BLEU.",
    )
    parser.add_argument(
        "--task",
        choices=sorted(TASKS),
        default="demo",
        help="iwslt14 (De→En), wmt14 (De→En) or demo (the embedded gettext corpus, offline)",
    )
    parser.add_argument(
        "--schedule",
        nargs="+",
        choices=SCHEDULES,
        default=list(SCHEDULES),
        help="schedules to train, each in both phases (default: knee inverse_sqrt)",
    )
    parser.add_argument("--seeds", type=int, default=1, help="repeat every run with seeds 1..N (mean ± std)")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where data, checkpoints, logs and results go (default: ./runs/mat-<task>)",
    )
    parser.add_argument(
        "--orig-dir",
        type=Path,
        default=None,
        help="downloaded raw corpora for iwslt14/wmt14 (default: <work-dir>/orig)",
    )
    parser.add_argument(
        "--world-size",
        type=int,
        default=None,
        help="GPUs the run uses in all (default: every local GPU; 1 on CPU); sets --max-tokens "
        "and --update-freq so the tokens per update stay the paper's",
    )
    parser.add_argument(
        "--max-updates",
        type=int,
        default=None,
        help="demo only: updates per phase (default 300; warmup 10%%, Knee explores to the middle)",
    )
    parser.add_argument(
        "--train-pairs", type=int, default=None, help="demo only: use the first N training pairs of the corpus"
    )
    parser.add_argument(
        "--heldout-pairs", type=int, default=None, help="demo only: use the first N pairs of valid and of test"
    )
    parser.add_argument("--bpe-symbols", type=int, default=None, help="demo only: joint BPE merges (default: 2000)")
    parser.add_argument("--cpu", action="store_true", help="train on CPU (default when there is no GPU)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the phase-1, init, phase-2 and generate commands and exit"
    )
    parser.add_argument("--skip-generate", action="store_true", help="do not score the checkpoints on test")
    parser.add_argument(
        "--fairseq-args",
        default="",
        help="extra fairseq-train arguments for both phases, appended last (one quoted string)",
    )
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.world_size is not None and args.world_size < 1:
        parser.error(f"--world-size must be >= 1, got {args.world_size}")
    if args.task != "demo" and any(
        getattr(args, name) is not None for name in ("max_updates", "train_pairs", "heldout_pairs", "bpe_symbols")
    ):
        parser.error("--max-updates, --train-pairs, --heldout-pairs and --bpe-symbols apply to --task demo only")
    if args.max_updates is not None and args.max_updates < 4:
        parser.error(f"--max-updates must be >= 4, got {args.max_updates}")
    return args


def recipe_for(args: argparse.Namespace) -> MatRecipe:
    recipe = TASKS[args.task]
    task = recipe.task
    if args.bpe_symbols is not None:
        task = dataclasses.replace(task, spec=dataclasses.replace(task.spec, bpe_symbols=args.bpe_symbols))
    if args.max_updates is not None:
        extra = list(task.extra_args)
        extra[extra.index("--save-interval-updates") + 1] = str(max(1, args.max_updates // 5))
        task = dataclasses.replace(task, budget={"full": args.max_updates}, extra_args=tuple(extra))
        recipe = dataclasses.replace(recipe, warmup_updates=max(1, round(0.1 * args.max_updates)))
    return dataclasses.replace(recipe, task=task)


def commands(run: MatRun) -> list[list[str]]:
    """Every command of one run, in order: phase 1, init, phase 2, generate (phase 1, phase 2)."""
    return [
        train_command(run, 1),
        init_command(run),
        train_command(run, 2),
        *(
            translation.generate_command(run.translation_run(phase), run.phase_dir(phase) / "checkpoint_best.pt")
            for phase in (1, 2)
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    recipe = recipe_for(args)
    work_dir = (args.work_dir or Path("runs") / f"mat-{args.task}").resolve()
    cpu = args.cpu or not _has_cuda()
    world_size = args.world_size or translation.local_world_size(cpu)
    batches = translation.plan_batches(recipe.task.tokens_per_update, recipe.task.max_tokens_per_gpu, world_size)
    data_bin = work_dir / "prepared" / "data-bin"
    raw_test: list[str] = []
    if not args.dry_run:
        data_bin, raw_test = prepare_data(args, recipe, work_dir)
    runs = [
        MatRun(
            recipe, schedule, seed, data_bin, work_dir, batches, cpu=cpu, extra=tuple(shlex.split(args.fairseq_args))
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

    from scripts.common import report

    total = recipe.task.budget["full"] if recipe.task.budget_unit == "updates" else None
    results: list[RunResult] = []
    for run in runs:
        for phase in (1, 2):
            done = run.phase_dir(phase) / "result.json"
            label = f"{run.schedule} phase {phase}"
            if done.exists():
                logger.info("%s seed %d: already trained, reusing %s", label, run.seed, done)
                result = read_results_json(done)[0]
            else:
                if phase == 2:
                    logger.info("%s", shlex.join(init_command(run)))
                    subprocess.run(init_command(run), check=True)
                result = translation.run_fairseq_train(
                    train_command(run, phase), run.phase_dir(phase), label, run.seed, total
                )
                write_results_json([result], done)
            if not args.skip_generate and result.bleu_tokenized is None:
                result.bleu_tokenized, result.bleu_detokenized = translation.run_generation(
                    run.translation_run(phase), raw_test
                )
                write_results_json([result], done)
            results.append(result)
            write_results_json(results, work_dir / "results.json")
            logger.info(
                "%s seed %d: valid loss %.3f, BLEU %s, %.0f s training",
                label,
                run.seed,
                result.best_valid_loss,
                "skipped" if result.bleu_tokenized is None else f"{result.bleu_tokenized:.2f}",
                result.wall_seconds,
            )
    print(report.format_table(results))
    return 0


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
