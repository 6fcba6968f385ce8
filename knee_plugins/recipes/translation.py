"""The paper's translation recipes (IWSLT'14 De→En, WMT'14 En→De) and the offline demo, as
``fairseq-train`` / ``fairseq-generate`` command lines.

``python -m knee_plugins.recipes.translation --task iwslt14 --schedule knee --budget short``
prepares the data if needed, prints the exact ``fairseq-train`` command and runs it, then scores
the best-valid checkpoint on test with sacrebleu. ``--dry-run`` only prints. ``--task demo`` is
the same path on the embedded gettext corpus with a small Transformer, several schedules side by
side, a table and PNG plots (see :mod:`knee_plugins.recipes.report`).

Defaults are the paper's (shared README §2): RAdam (0.9, 0.999), seed LR 3e-4, no warmup,
clip-norm 25, weight decay 1e-4, label smoothing 0.1; IWSLT'14 dropout 0.3, ~4k tokens per
update, 50/35 epochs with explore 40/30; WMT'14 dropout 0.1, ~30k tokens per update, 70/30
epochs with explore 50/25. The tokens per update are kept whatever the number of GPUs: the
per-GPU ``--max-tokens`` and ``--update-freq`` are derived from ``--world-size``.

The demo trains a 2-layer, 128-wide Transformer (1024 tokens per update, dropout 0.1) for 400
updates (Knee short: 260, 65%) at one peak LR, 1e-2, for every schedule (one-cycle's max LR too),
chosen by a 300-update sweep; on 2 CPU cores (~3.5 updates/s) the six runs train in ~10 minutes
and each test evaluation (1943 sentences, beam 4) takes ~25 s. The prepared data is cached in
``<work-dir>/prepared`` and reused while the corpus selection is unchanged.

Multi-node: compute the command for the whole world size and start it on every node, e.g. for
2 nodes of 8 GPUs ``--world-size 16 --dry-run``, then on each node
``torchrun --nnodes 2 --nproc-per-node 8 --node-rank $RANK --master-addr $HOST --master-port 29500
$(which fairseq-train) <printed arguments> --distributed-no-spawn``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from . import prepare, report
from .results import RunResult, write_results_json

logger = logging.getLogger(__name__)

SCHEDULES = ("knee", "linear", "cosine", "inverse_sqrt", "one_cycle")
BUDGETS = ("full", "short")
DEMO_RUNS = (
    ("knee", "full"),
    ("linear", "full"),
    ("cosine", "full"),
    ("inverse_sqrt", "full"),
    ("one_cycle", "full"),
    ("knee", "short"),
)


@dataclass(frozen=True)
class TaskRecipe:
    """The paper's training settings for one task. Budgets are epochs for the paper's tasks and
    updates for the demo (``budget_unit``)."""

    name: str
    spec: prepare.PreparationSpec
    arch: str
    dropout: float
    tokens_per_update: int
    max_tokens_per_gpu: int
    budget: dict[str, int]
    explore: dict[str, float]
    budget_unit: str = "epochs"
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    clip_norm: float = 25.0
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    one_cycle_max_lr: float = 2.5e-4
    one_cycle_div_factor: float = 10.0
    inverse_sqrt_warmup: int = 4000
    beam: int = 5
    model_args: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    generate_args: tuple[str, ...] = ()


# The demo's small Transformer and how its runs checkpoint (the MAT demo builds on both).
DEMO_MODEL_ARGS = (
    "--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "128", "--decoder-embed-dim", "128",
    "--encoder-ffn-embed-dim", "512", "--decoder-ffn-embed-dim", "512",
    "--encoder-attention-heads", "4", "--decoder-attention-heads", "4",
)  # fmt: skip
DEMO_RUN_ARGS = (
    "--keep-interval-updates", "1", "--no-epoch-checkpoints", "--no-last-checkpoints", "--num-workers", "0",
    "--required-batch-size-multiple", "1",
)  # fmt: skip

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
    ),
    "demo": TaskRecipe(
        "demo",
        prepare.DEMO_SPEC,
        arch="transformer",
        dropout=0.1,
        tokens_per_update=1024,
        max_tokens_per_gpu=1024,
        budget={"full": 400, "short": 260},
        explore={"full": 0.5, "short": 0.5},
        budget_unit="updates",
        lr=1e-2,
        one_cycle_max_lr=1e-2,
        inverse_sqrt_warmup=40,
        beam=4,
        model_args=(*DEMO_MODEL_ARGS, "--share-all-embeddings"),
        extra_args=("--save-interval-updates", "80", *DEMO_RUN_ARGS),
        generate_args=("--max-len-a", "1.2", "--max-len-b", "10"),
    ),
}


@dataclass(frozen=True)
class BatchPlan:
    world_size: int
    max_tokens: int
    update_freq: int

    @property
    def tokens_per_update(self) -> int:
        return self.world_size * self.max_tokens * self.update_freq


def plan_batches(tokens_per_update: int, max_tokens_per_gpu: int, world_size: int) -> BatchPlan:
    """Per-GPU ``--max-tokens`` and ``--update-freq`` keeping ``tokens_per_update`` on any world size."""
    if world_size < 1:
        raise ValueError(f"--world-size must be >= 1, got {world_size}")
    update_freq = max(1, math.ceil(tokens_per_update / (max_tokens_per_gpu * world_size)))
    return BatchPlan(world_size, round(tokens_per_update / (world_size * update_freq)), update_freq)


@dataclass
class RunConfig:
    """One training run: a task, a schedule, a budget, a seed and where it writes."""

    recipe: TaskRecipe
    schedule: str
    budget: str
    seed: int
    data_bin: Path
    save_dir: Path
    batches: BatchPlan
    updates_per_epoch: int | None = None
    cpu: bool = False
    extra: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.schedule if self.budget == "full" else f"{self.schedule} ({self.budget})"


def _budget_updates(run: RunConfig) -> int:
    recipe, amount = run.recipe, run.recipe.budget[run.budget]
    if recipe.budget_unit == "updates":
        return amount
    if run.updates_per_epoch is None:
        raise ValueError(
            f"--schedule {run.schedule} needs the budget in updates: pass --updates-per-epoch "
            "or prepare the data so it can be measured"
        )
    return amount * run.updates_per_epoch


def schedule_args(run: RunConfig) -> list[str]:
    """The ``--lr-scheduler`` arguments of ``run`` (Knee and one-cycle come from the plugin)."""
    recipe = run.recipe
    epochs = recipe.budget_unit == "epochs"
    if run.schedule == "knee":
        explore = recipe.explore[run.budget]
        explore_args = ["--explore-epochs", f"{explore:g}"] if epochs else ["--explore-ratio", f"{explore:g}"]
        return ["--lr-scheduler", "knee", "--lr", f"{recipe.lr:g}", "--warmup-updates", "0", *explore_args]
    if run.schedule == "one_cycle":
        return [
            "--lr-scheduler",
            "one_cycle",
            "--lr",
            f"{recipe.one_cycle_max_lr:g}",
            "--div-factor",
            f"{recipe.one_cycle_div_factor:g}",
        ]
    total = _budget_updates(run)
    if run.schedule == "linear":
        return [
            "--lr-scheduler",
            "polynomial_decay",
            "--lr",
            f"{recipe.lr:g}",
            "--power",
            "1",
            "--end-learning-rate",
            "0",
            "--warmup-updates",
            "0",
            "--total-num-update",
            str(total),
        ]
    if run.schedule == "cosine":
        return [
            "--lr-scheduler",
            "cosine",
            "--lr",
            f"{recipe.lr:g}",
            "--warmup-updates",
            "0",
            "--min-lr",
            "0",
            "--max-update",
            str(total),
        ]
    if run.schedule == "inverse_sqrt":
        return [
            "--lr-scheduler",
            "inverse_sqrt",
            "--lr",
            f"{recipe.lr:g}",
            "--warmup-updates",
            str(recipe.inverse_sqrt_warmup),
            "--warmup-init-lr",
            "1e-07",
        ]
    raise ValueError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {run.schedule!r}")


def train_command(run: RunConfig) -> list[str]:
    """The full ``fairseq-train`` command line of ``run``."""
    recipe = run.recipe
    budget = recipe.budget[run.budget]
    budget_args = ["--max-epoch", str(budget)] if recipe.budget_unit == "epochs" else ["--max-update", str(budget)]
    scheduler = schedule_args(run)
    if "--max-update" in scheduler and "--max-update" in budget_args:
        budget_args = []
    command = prepare.fairseq_command("train") + [
        str(run.data_bin),
        "--arch",
        recipe.arch,
        *recipe.model_args,
        "--source-lang",
        recipe.spec.source_lang,
        "--target-lang",
        recipe.spec.target_lang,
        "--optimizer",
        "radam",
        "--radam-betas",
        f"({recipe.betas[0]:g}, {recipe.betas[1]:g})",
        "--weight-decay",
        f"{recipe.weight_decay:g}",
        "--clip-norm",
        f"{recipe.clip_norm:g}",
        *scheduler,
        *budget_args,
        "--dropout",
        f"{recipe.dropout:g}",
        "--criterion",
        "label_smoothed_cross_entropy",
        "--label-smoothing",
        f"{recipe.label_smoothing:g}",
        "--max-tokens",
        str(run.batches.max_tokens),
        "--update-freq",
        str(run.batches.update_freq),
        "--seed",
        str(run.seed),
        "--save-dir",
        str(run.save_dir),
        "--best-checkpoint-metric",
        "loss",
        "--log-format",
        "json",
        "--log-interval",
        "10",
        *recipe.extra_args,
        *run.extra,
    ]
    if run.cpu:
        command.append("--cpu")
    return command


def generate_command(run: RunConfig, checkpoint: Path) -> list[str]:
    """The ``fairseq-generate`` command scoring ``checkpoint`` on the whole test split (fairseq
    0.12 drops the last sentences when the batch size must be a multiple of 8, hence ``1``)."""
    return prepare.fairseq_command("generate") + [
        str(run.data_bin),
        "--path",
        str(checkpoint),
        "--gen-subset",
        "test",
        "--source-lang",
        run.recipe.spec.source_lang,
        "--target-lang",
        run.recipe.spec.target_lang,
        "--beam",
        str(run.recipe.beam),
        "--batch-size",
        "128",
        "--required-batch-size-multiple",
        "1",
        "--remove-bpe",
        *run.recipe.generate_args,
        *(["--cpu"] if run.cpu else []),
    ]


# --- running and parsing ---------------------------------------------------------------------

_JSON_RECORD = re.compile(r"\|\s*(train_inner|valid|train)\s*\|\s*(\{.*\})\s*$")


def parse_log(lines: Sequence[str]) -> dict[str, list[dict]]:
    """The JSON records fairseq logs with ``--log-format json``, by kind (train_inner, valid, train)."""
    records: dict[str, list[dict]] = {"train_inner": [], "valid": [], "train": []}
    for line in lines:
        match = _JSON_RECORD.search(line)
        if match:
            records[match.group(1)].append(json.loads(match.group(2)))
    return records


def run_training(run: RunConfig, progress_position: int = 0) -> RunResult:
    """Run ``fairseq-train`` for ``run`` with a progress bar; keep its log next to the checkpoints."""
    total = run.recipe.budget[run.budget] if run.recipe.budget_unit == "updates" else None
    return run_fairseq_train(train_command(run), run.save_dir, run.label, run.seed, total, progress_position)


def run_fairseq_train(
    command: Sequence[str], save_dir: Path, label: str, seed: int, total_updates: int | None, progress_position: int = 0
) -> RunResult:
    """Run one ``fairseq-train`` command with a progress bar, keep its log as ``save_dir/train.log`` and
    read the LR curve, the valid curve and the best valid loss from it."""
    save_dir.mkdir(parents=True, exist_ok=True)
    logger.info("%s", shlex.join(command))
    log_path = save_dir / "train.log"
    lines: list[str] = []
    start = time.monotonic()
    with (
        open(log_path, "w", encoding="utf-8") as log,
        subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process,
        tqdm(
            total=total_updates,
            desc=f"{label} seed {seed}",
            unit="upd",
            position=progress_position,
            leave=True,
            mininterval=1.0,
        ) as bar,
    ):
        for line in process.stdout:
            log.write(line)
            lines.append(line)
            record = parse_log([line])
            if record["train_inner"]:
                bar.n = int(record["train_inner"][0]["num_updates"])
                bar.set_postfix(loss=record["train_inner"][0]["loss"], lr=record["train_inner"][0]["lr"])
            elif record["valid"]:
                bar.set_postfix(valid_loss=record["valid"][0]["valid_loss"])
    wall = time.monotonic() - start
    if process.returncode:
        raise RuntimeError(
            f"fairseq-train failed for {label} (exit {process.returncode}); see {log_path}:\n" + "".join(lines[-20:])
        )
    records = parse_log(lines)
    if not records["valid"]:
        raise RuntimeError(f"fairseq-train logged no validation for {label}; see {log_path}")
    valid = [(int(r["valid_num_updates"]), float(r["valid_loss"])) for r in records["valid"]]
    best = min(records["valid"], key=lambda r: float(r["valid_loss"]))
    lr_curve = [(int(r["num_updates"]), float(r["lr"])) for r in records["train_inner"]]
    updates = max([u for u, _ in valid] + [u for u, _ in lr_curve])
    return RunResult(label, seed, wall, updates, float(best["valid_loss"]), float(best["valid_ppl"]), lr_curve, valid)


def score_translations(
    hypotheses: Sequence[str],
    references: Sequence[str],
    raw_references: Sequence[str],
    target_lang: str,
    lowercase: bool,
) -> tuple[float, float]:
    """(tokenised BLEU, detokenised BLEU). Tokenised: sacrebleu on the Moses-tokenised, BPE-removed
    text with no further tokenisation (what ``fairseq-generate`` prints and the paper reports).
    Detokenised: Moses-detokenised hypotheses against the raw references with sacrebleu's 13a."""
    import sacrebleu
    from sacremoses import MosesDetokenizer

    tokenized = sacrebleu.corpus_bleu(list(hypotheses), [list(references)], tokenize="none").score
    detokenizer = MosesDetokenizer(lang=target_lang)
    detok = [detokenizer.detokenize(h.split()) for h in hypotheses]
    detokenized = sacrebleu.corpus_bleu(detok, [list(raw_references)], lowercase=lowercase).score
    return tokenized, detokenized


def run_generation(run: RunConfig, raw_references: Sequence[str]) -> tuple[float, float]:
    """Translate test with the best-valid checkpoint and return its (tokenised, detokenised) BLEU."""
    checkpoint = run.save_dir / "checkpoint_best.pt"
    command = generate_command(run, checkpoint)
    logger.info("%s", shlex.join(command))
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    (run.save_dir / "generate-test.txt").write_text(output, encoding="utf-8")
    hypotheses, references = {}, {}
    for line in output.splitlines():
        kind, _, rest = line.partition("-")
        if kind in ("H", "T") and "\t" in rest:
            index, *fields = rest.split("\t")
            (hypotheses if kind == "H" else references)[int(index)] = fields[-1]
    order = sorted(references)
    if len(order) != len(raw_references):
        raise RuntimeError(
            f"fairseq-generate returned {len(order)} translations for {len(raw_references)} "
            f"test sentences; see {run.save_dir / 'generate-test.txt'}"
        )
    return score_translations(
        [hypotheses[i] for i in order],
        [references[i] for i in order],
        [raw_references[i] for i in order],
        run.recipe.spec.target_lang,
        run.recipe.spec.lowercase,
    )


def count_updates_per_epoch(run: RunConfig) -> int:
    """Updates in one epoch, measured with fairseq's own batching of the training data and counted
    as the Knee scheduler counts them (``--update-freq``, ``--skip-remainder-batch``), so that a
    linear or cosine baseline gets exactly Knee's budget."""
    from fairseq import options, tasks, utils

    from ..fairseq_plugin.epoch_budget import fairseq_updates_per_epoch

    argv = train_command(RunConfig(**{**run.__dict__, "schedule": "knee"}))
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, argv[len(prepare.fairseq_command("train")) :])
    task = tasks.setup_task(args)
    task.load_dataset("train")
    model_positions = (getattr(args, "max_source_positions", None), getattr(args, "max_target_positions", None))
    iterator = task.get_batch_iterator(
        dataset=task.dataset("train"),
        max_tokens=args.max_tokens,
        max_positions=utils.resolve_max_positions(
            task.max_positions(), None if None in model_positions else model_positions, args.max_tokens
        ),
        ignore_invalid_inputs=True,
        required_batch_size_multiple=args.required_batch_size_multiple,
        num_shards=run.batches.world_size,
        shard_id=0,
        seed=args.seed,
    )
    return fairseq_updates_per_epoch(len(iterator), run.batches.update_freq, bool(args.skip_remainder_batch))


# --- command line -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m knee_plugins.recipes.translation",
        description="Train and evaluate the paper's translation recipes with Knee or a baseline schedule.",
    )
    parser.add_argument(
        "--task",
        choices=sorted(TASKS),
        default="demo",
        help="iwslt14 (De→En), wmt14 (En→De) or demo (the embedded gettext corpus, offline)",
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
    parser.add_argument("--seeds", type=int, default=1, help="repeat every run with seeds 1..N (mean ± std)")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where data, checkpoints, logs and plots go (default: ./runs/<task>)",
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
        help="GPUs the run uses in all (default: every local GPU; 1 on CPU); sets "
        "--max-tokens and --update-freq so the tokens per update stay the paper's",
    )
    parser.add_argument(
        "--updates-per-epoch",
        type=int,
        default=None,
        help="updates in one epoch, for the baselines' budgets in updates (default: measured from the binarised data)",
    )
    parser.add_argument(
        "--max-updates", type=int, default=None, help="demo only: the full budget in updates (short is 65%% of it)"
    )
    parser.add_argument(
        "--train-pairs", type=int, default=None, help="demo only: use the first N training pairs of the corpus"
    )
    parser.add_argument(
        "--heldout-pairs", type=int, default=None, help="demo only: use the first N pairs of valid and of test"
    )
    parser.add_argument("--bpe-symbols", type=int, default=None, help="demo only: joint BPE merges (default: 8000)")
    parser.add_argument("--cpu", action="store_true", help="train on CPU (default when there is no GPU)")
    parser.add_argument("--dry-run", action="store_true", help="print the fairseq-train commands and exit")
    parser.add_argument("--skip-generate", action="store_true", help="do not score the checkpoints on test")
    parser.add_argument(
        "--fairseq-args", default="", help="extra fairseq-train arguments, appended last (quoted as one string)"
    )
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.task != "demo" and (
        args.max_updates is not None
        or args.train_pairs is not None
        or args.heldout_pairs is not None
        or args.bpe_symbols is not None
    ):
        parser.error("--max-updates, --train-pairs, --heldout-pairs and --bpe-symbols apply to --task demo only")
    if args.max_updates is not None and args.max_updates < 2:
        parser.error(f"--max-updates must be >= 2, got {args.max_updates}")
    return args


def selected_runs(args: argparse.Namespace) -> list[tuple[str, str]]:
    if args.task == "demo" and args.schedule is None and args.budget is None:
        return list(DEMO_RUNS)
    return [(s, b) for s in (args.schedule or ["knee"]) for b in (args.budget or ["full"])]


def recipe_for(args: argparse.Namespace) -> TaskRecipe:
    recipe = TASKS[args.task]
    if args.bpe_symbols is not None:
        recipe = dataclasses.replace(recipe, spec=dataclasses.replace(recipe.spec, bpe_symbols=args.bpe_symbols))
    if args.max_updates is not None:
        full = args.max_updates
        short = max(1, round(0.65 * full))
        warmup = max(1, round(0.1 * full))
        interval = str(max(1, full // 5))
        extra = list(recipe.extra_args)
        extra[extra.index("--save-interval-updates") + 1] = interval
        recipe = TaskRecipe(
            **{
                **recipe.__dict__,
                "budget": {"full": full, "short": short},
                "inverse_sqrt_warmup": warmup,
                "extra_args": tuple(extra),
            }
        )
    return recipe


def local_world_size(cpu: bool) -> int:
    if cpu:
        return 1
    try:
        import torch
    except ImportError:
        return 1
    return max(1, torch.cuda.device_count())


def prepare_data(args: argparse.Namespace, recipe: TaskRecipe, work_dir: Path) -> tuple[Path, list[str]]:
    """Prepare (once) and return the data-bin directory and the raw test references."""
    data_dir = work_dir / "prepared"
    data_bin = data_dir / "data-bin"
    raw_test = data_dir / f"raw-test.{recipe.spec.target_lang}"
    stamp_path = data_dir / "prepared.json"
    stamp = {
        "task": args.task,
        "spec": repr(recipe.spec),
        "train_pairs": args.train_pairs,
        "heldout_pairs": args.heldout_pairs,
    }
    if (
        stamp_path.exists()
        and json.loads(stamp_path.read_text(encoding="utf-8")) == stamp
        and (data_bin / f"dict.{recipe.spec.target_lang}.txt").exists()
        and raw_test.exists()
    ):
        logger.info("reusing the prepared data in %s", data_dir)
        return data_bin, prepare.read_lines(raw_test)
    for stale in (data_bin, data_dir / "text"):
        if stale.exists():
            shutil.rmtree(stale)
    if args.task == "demo":
        raw = prepare.read_embedded_corpus(max_train_pairs=args.train_pairs, max_heldout_pairs=args.heldout_pairs)
    else:
        orig = args.orig_dir or work_dir / "orig"
        if args.task == "iwslt14":
            raw = prepare.read_iwslt14(prepare.download_iwslt14(orig))
        else:
            raw = prepare.read_wmt14(prepare.download_wmt14(orig))
    prepare.prepare(raw, recipe.spec, data_dir)
    prepare.write_lines(raw_test, raw["test"][1])
    stamp_path.write_text(json.dumps(stamp) + "\n", encoding="utf-8")
    return data_bin, raw["test"][1]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    recipe = recipe_for(args)
    work_dir = (args.work_dir or Path("runs") / args.task).resolve()
    cpu = args.cpu or not _has_cuda()
    world_size = args.world_size or local_world_size(cpu)
    batches = plan_batches(recipe.tokens_per_update, recipe.max_tokens_per_gpu, world_size)
    data_bin = work_dir / "prepared" / "data-bin"
    raw_test: list[str] = []
    if not args.dry_run:
        data_bin, raw_test = prepare_data(args, recipe, work_dir)

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
            extra=shlex.split(args.fairseq_args),
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

    if args.dry_run:
        for run in runs:
            print(shlex.join(train_command(run)))
        return 0

    results = []
    for index, run in enumerate(runs, 1):
        logger.info("run %d/%d: %s, seed %d", index, len(runs), run.label, run.seed)
        result = run_training(run)
        if not args.skip_generate:
            start = time.monotonic()
            result.bleu_tokenized, result.bleu_detokenized = run_generation(run, raw_test)
            logger.info("generated %d test translations in %.0f s", len(raw_test), time.monotonic() - start)
        results.append(result)
        write_results_json(results, work_dir / "results.json")
        logger.info(
            "%s seed %d: valid loss %.3f, BLEU %s, %.0f s training",
            result.label,
            result.seed,
            result.best_valid_loss,
            "skipped" if result.bleu_tokenized is None else f"{result.bleu_tokenized:.2f}",
            result.wall_seconds,
        )
    print(report.format_table(results))
    for path in report.write_plots(results, work_dir):
        print(f"wrote {path}")
    return 0


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
