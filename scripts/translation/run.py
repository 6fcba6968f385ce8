"""The paper's translation recipes (IWSLT'14 De→En, WMT'14 En→De) and the offline demo, as
``fairseq-train`` / ``fairseq-generate`` command lines.

``python -m scripts.translation.run --task iwslt14 --schedule knee --budget short``
prepares the data if needed, prints the exact ``fairseq-train`` command and runs it, then scores
the best-valid checkpoint on test with sacrebleu. ``--dry-run`` only prints. ``--task demo`` is
the same path on the embedded gettext corpus with a small Transformer, several schedules side by
side, a table and PNG plots (see :mod:`scripts.common.report`; `python -m scripts.translation.report WORK_DIR` redraws them).

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
peak LR (``DEMO_PEAK_LR``), chosen by ``--sweep-lr``: every schedule at every LR of one grid, seed 1,
the lowest best valid loss at the demo's budget wins (Knee's short budget uses Knee's). The sweep's
chosen runs are the demo's seed-1 runs (reused, not retrained). On 2 idle CPU cores a run trains in
~1.5–2 minutes (~11 updates/s) and each test evaluation (1,943 sentences, beam 4) takes ~12 s. The
prepared data is cached in ``<work-dir>/prepared`` and reused while the corpus selection is unchanged.

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

from scripts.common import prepare, report
from scripts.common.results import RunResult, write_results_json

logger = logging.getLogger(__name__)

SCHEDULES = ("knee", "linear", "cosine", "inverse_sqrt", "one_cycle", "wsd")
OPTIMIZERS = ("radam", "adam")
BUDGETS = ("full", "short")
DEMO_RUNS = (
    ("knee", "full"),
    ("linear", "full"),
    ("cosine", "full"),
    ("inverse_sqrt", "full"),
    ("one_cycle", "full"),
    ("wsd", "full"),
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
    peak_lr: dict[str, float] = field(default_factory=dict)
    optimizer: str = "radam"
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = 0.0
    wsd_cooldown: float = 0.2
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

    def lr_of(self, schedule: str) -> float:
        """The peak LR of ``schedule``: its entry in ``peak_lr`` (the demo's, from its LR sweep), else
        the paper's (``one_cycle_max_lr`` for one-cycle, ``lr`` for the others)."""
        if schedule in self.peak_lr:
            return self.peak_lr[schedule]
        return self.one_cycle_max_lr if schedule == "one_cycle" else self.lr


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

# Each schedule's peak LR for the demo: the best valid loss of its LR sweep at the demo's budget
# (docs/demo-lr-sweep.md, made by ``--sweep-lr``).
DEMO_PEAK_LR = {
    "knee": 0.002,
    "linear": 0.002,
    "cosine": 0.002,
    "inverse_sqrt": 0.002,
    "one_cycle": 0.004,
    "wsd": 0.002,
}

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
        dropout=0.0,
        tokens_per_update=1024,
        max_tokens_per_gpu=1024,
        budget={"full": 1200, "short": 780},
        explore={"full": 0.5, "short": 0.5},
        budget_unit="updates",
        lr=2e-3,
        peak_lr=DEMO_PEAK_LR,
        optimizer="adam",
        betas=(0.9, 0.98),
        warmup_ratio=0.06,
        beam=4,
        model_args=(*DEMO_MODEL_ARGS, "--share-all-embeddings"),
        extra_args=("--save-interval-updates", "100", *DEMO_RUN_ARGS),
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
    lr: float | None = None

    @property
    def peak_lr(self) -> float:
        """``lr`` when set (``--lr``, the LR sweep), else the recipe's peak LR for this schedule."""
        return self.recipe.lr_of(self.schedule) if self.lr is None else self.lr

    @property
    def label(self) -> str:
        return self.schedule if self.budget == "full" else f"{self.schedule} ({self.budget})"


def _budget_updates(run: RunConfig, budget: str | None = None) -> int:
    recipe, amount = run.recipe, run.recipe.budget[budget or run.budget]
    if recipe.budget_unit == "updates":
        return amount
    if run.updates_per_epoch is None:
        raise ValueError(
            f"--schedule {run.schedule} needs the budget in updates: pass --updates-per-epoch "
            "or prepare the data so it can be measured"
        )
    return amount * run.updates_per_epoch


def warmup_updates(run: RunConfig) -> int:
    """The warmup of ``run``: ``warmup_ratio`` of the *full* budget for every schedule but one-cycle
    (whose rise is its own, ``--pct-start``), the same number of updates at every budget; without a
    ratio the paper's: none, and ``inverse_sqrt_warmup`` for inverse-sqrt."""
    if run.recipe.warmup_ratio:
        return round(run.recipe.warmup_ratio * _budget_updates(run, "full"))
    return run.recipe.inverse_sqrt_warmup if run.schedule == "inverse_sqrt" else 0


def _explore_args(run: RunConfig, fraction: float, warmup: int) -> list[str]:
    """Explore until ``fraction`` of the budget, counted from the first update (warmup included)."""
    if run.recipe.budget_unit == "epochs":
        return ["--explore-epochs", f"{fraction * run.recipe.budget[run.budget]:g}"]
    explore = round(fraction * _budget_updates(run)) - warmup
    if explore < 0:
        raise ValueError(
            f"the warmup ({warmup} updates) is longer than {run.schedule}'s explore phase "
            f"({fraction:g} of {_budget_updates(run)} updates)"
        )
    return ["--explore-updates", str(explore)]


def schedule_args(run: RunConfig) -> list[str]:
    """The ``--lr-scheduler`` arguments of ``run``. Knee, WSD (Knee's core with a 1-sqrt cooldown
    over the last ``wsd_cooldown`` of the budget) and one-cycle come from the plugin."""
    recipe, lr = run.recipe, f"{run.peak_lr:g}"
    warmup = warmup_updates(run)
    if run.schedule == "one_cycle":
        return ["--lr-scheduler", "one_cycle", "--lr", lr, "--div-factor", f"{recipe.one_cycle_div_factor:g}"]
    if run.schedule == "inverse_sqrt":
        return [
            "--lr-scheduler",
            "inverse_sqrt",
            "--lr",
            lr,
            "--warmup-updates",
            str(warmup),
            "--warmup-init-lr",
            "1e-07",
        ]
    if run.schedule in ("knee", "wsd"):
        if run.schedule == "wsd":
            explore = [*_explore_args(run, 1.0 - recipe.wsd_cooldown, warmup), "--decay-type", "1-sqrt"]
        elif recipe.budget_unit == "epochs":
            # the paper's: explore until epoch E, counted from the first update
            explore = ["--explore-epochs", f"{recipe.explore[run.budget]:g}"]
        else:
            explore = _explore_args(run, recipe.explore[run.budget], warmup)
        return ["--lr-scheduler", "knee", "--lr", lr, "--warmup-updates", str(warmup), *explore]
    total = _budget_updates(run)
    if run.schedule == "linear":
        return [
            "--lr-scheduler", "polynomial_decay", "--lr", lr, "--power", "1", "--end-learning-rate", "0",
            "--warmup-updates", str(warmup), "--total-num-update", str(total),
        ]  # fmt: skip
    if run.schedule == "cosine":
        return [
            "--lr-scheduler", "cosine", "--lr", lr, "--warmup-updates", str(warmup), "--min-lr", "0",
            "--max-update", str(total),
        ]  # fmt: skip
    raise ValueError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {run.schedule!r}")


def optimizer_args(recipe: TaskRecipe) -> list[str]:
    if recipe.optimizer not in OPTIMIZERS:
        raise ValueError(f"the recipe's optimizer must be one of {', '.join(OPTIMIZERS)}, got {recipe.optimizer!r}")
    betas = f"({recipe.betas[0]:g}, {recipe.betas[1]:g})"
    return ["--optimizer", recipe.optimizer, f"--{recipe.optimizer}-betas", betas]


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
        *optimizer_args(recipe),
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
    return result_from_log(lines, label, seed, wall, log_path)


def result_from_log(lines: Sequence[str], label: str, seed: int, wall_seconds: float, log_path: Path) -> RunResult:
    """The LR curve, the valid curve and the best valid loss of one run, from fairseq's log."""
    records = parse_log(lines)
    if not records["valid"]:
        raise RuntimeError(f"fairseq-train logged no validation for {label}; see {log_path}")
    valid = [(int(r["valid_num_updates"]), float(r["valid_loss"])) for r in records["valid"]]
    best = min(records["valid"], key=lambda r: float(r["valid_loss"]))
    lr_curve = [(int(r["num_updates"]), float(r["lr"])) for r in records["train_inner"]]
    updates = max([u for u, _ in valid] + [u for u, _ in lr_curve])
    return RunResult(
        label, seed, wall_seconds, updates, float(best["valid_loss"]), float(best["valid_ppl"]), lr_curve, valid
    )


def reuse_sweep_run(run: RunConfig, sweep_dir: Path) -> RunResult | None:
    """``run``'s result when the LR sweep in ``sweep_dir`` already trained exactly ``run`` (same
    fairseq-train command but for ``--save-dir``: seed 1 at the full budget and the same peak LR):
    its log and best checkpoint are copied into ``run.save_dir`` instead of training again."""
    json_path = sweep_dir / "sweep.json"
    if not json_path.exists():
        return None
    swept = dataclasses.replace(run, save_dir=sweep_dir / f"{run.schedule}-lr{run.peak_lr:g}")
    command = shlex.join(train_command(swept))
    record = next((r for r in json.loads(json_path.read_text(encoding="utf-8")) if r["command"] == command), None)
    if record is None or not (swept.save_dir / "checkpoint_best.pt").exists():
        return None
    run.save_dir.mkdir(parents=True, exist_ok=True)
    for name in ("train.log", "checkpoint_best.pt"):
        shutil.copyfile(swept.save_dir / name, run.save_dir / name)
    logger.info("%s seed %d: the LR sweep trained this exact run; reusing %s", run.label, run.seed, swept.save_dir)
    lines = (run.save_dir / "train.log").read_text(encoding="utf-8").splitlines()
    return result_from_log(lines, run.label, run.seed, float(record["wall_seconds"]), run.save_dir / "train.log")


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

    from knee_plugins.fairseq_plugin.epoch_budget import fairseq_updates_per_epoch

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
        prog="python -m scripts.translation.run",
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
    parser.add_argument("--bpe-symbols", type=int, default=None, help="demo only: joint BPE merges (default: 2000)")
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak LR of every selected schedule (default: the recipe's; for the demo each schedule's "
        "own, from its LR sweep)",
    )
    parser.add_argument(
        "--sweep-lr",
        type=float,
        nargs="+",
        default=None,
        metavar="LR",
        help="instead of the comparison: train every selected schedule (knee at the full budget) at each of "
        "these peak LRs with seed 1, print and write the table of best valid losses and each schedule's best LR "
        "(<work-dir>/sweep/sweep.{md,json}); finished runs are reused",
    )
    parser.add_argument(
        "--examples", type=int, default=3, help="test sentences shown translated by every schedule (default: 3)"
    )
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


def recipe_for(args: argparse.Namespace) -> TaskRecipe:
    recipe = TASKS[args.task]
    if args.bpe_symbols is not None:
        recipe = dataclasses.replace(recipe, spec=dataclasses.replace(recipe.spec, bpe_symbols=args.bpe_symbols))
    if args.max_updates is not None:
        full = args.max_updates
        extra = list(recipe.extra_args)
        extra[extra.index("--save-interval-updates") + 1] = str(max(1, full // 8))
        recipe = dataclasses.replace(
            recipe, budget={"full": full, "short": max(1, round(0.65 * full))}, extra_args=tuple(extra)
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

    if args.sweep_lr:
        runs = sweep_runs(runs, args.sweep_lr, work_dir / "sweep")
    if args.dry_run:
        for run in runs:
            print(shlex.join(train_command(run)))
        return 0
    if args.sweep_lr:
        run_lr_sweep(runs, work_dir / "sweep")
        return 0

    example_ids = pick_example_ids(raw_test, args.examples)
    results = []
    for index, run in enumerate(runs, 1):
        logger.info("run %d/%d: %s, seed %d", index, len(runs), run.label, run.seed)
        result = reuse_sweep_run(run, work_dir / "sweep") or run_training(run)
        if not args.skip_generate:
            start = time.monotonic()
            result.bleu_tokenized, result.bleu_detokenized = run_generation(run, raw_test)
            logger.info("generated %d test translations in %.0f s", len(raw_test), time.monotonic() - start)
            result.examples = read_examples(run.save_dir / "generate-test.txt", example_ids, recipe.spec)
        result.peak_lr = run.peak_lr
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


def sweep_runs(runs: Sequence[RunConfig], learning_rates: Sequence[float], sweep_dir: Path) -> list[RunConfig]:
    """One seed-1 run per schedule (at the full budget: Knee's short budget uses Knee's LR) and peak LR."""
    schedules = list(dict.fromkeys(run.schedule for run in runs))
    template = runs[0]
    return [
        dataclasses.replace(
            template, schedule=schedule, budget="full", seed=1, lr=lr, save_dir=sweep_dir / f"{schedule}-lr{lr:g}"
        )
        for schedule in schedules
        for lr in learning_rates
    ]


MAX_SWEEP_WIDENINGS = 3


def run_lr_sweep(runs: Sequence[RunConfig], sweep_dir: Path) -> dict[str, float]:
    """The demo's LR protocol: train every (schedule, peak LR) of ``runs`` for the whole budget and pick,
    per schedule, the peak LR with the lowest best valid loss (the checkpoint the demo scores). A winner
    on the edge of the grid is not trusted: that schedule is trained one grid step further out (the
    grid's ratio, e.g. x2) until its winner is inside its own grid (at most ``MAX_SWEEP_WIDENINGS``
    steps). Writes ``sweep.json`` after every run (a rerun reuses runs whose exact command is recorded;
    other schedules' records are kept), ``sweep.md`` and ``sweep.png``; returns the chosen LR per schedule."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    json_path = sweep_dir / "sweep.json"
    previous = json.loads(json_path.read_text(encoding="utf-8")) if json_path.exists() else []
    done = {r["command"]: r for r in previous}
    swept = {run.schedule for run in runs}
    records = [r for r in previous if r["schedule"] not in swept]
    learning_rates = sorted({run.peak_lr for run in runs})
    ratio = learning_rates[-1] / learning_rates[-2] if len(learning_rates) > 1 else 2.0

    def train(run: RunConfig, position: str) -> None:
        command = shlex.join(train_command(run))
        if command in done:
            logger.info("sweep %s: %s at lr %g already trained", position, run.schedule, run.peak_lr)
            records.append(done[command])
            return
        logger.info("sweep %s: %s at lr %g", position, run.schedule, run.peak_lr)
        result = run_training(run)
        records.append(
            {
                "schedule": run.schedule,
                "lr": run.peak_lr,
                "updates": result.updates,
                "best_valid_loss": result.best_valid_loss,
                "last_valid_loss": result.valid_curve[-1][1],
                "wall_seconds": result.wall_seconds,
                "command": command,
            }
        )
        json_path.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")

    for index, run in enumerate(runs, 1):
        train(run, f"{index}/{len(runs)}")
    if len(learning_rates) > 1:
        for template in {run.schedule: run for run in runs}.values():
            for widening in range(1, MAX_SWEEP_WIDENINGS + 1):
                tried = sorted(float(r["lr"]) for r in records if r["schedule"] == template.schedule)
                best = report.best_learning_rates([r for r in records if r["schedule"] == template.schedule])
                lr = best[template.schedule]
                if tried[0] < lr < tried[-1]:
                    break
                wider = float(f"{lr * ratio if lr == tried[-1] else lr / ratio:.3g}")
                save_dir = template.save_dir.parent / f"{template.schedule}-lr{wider:g}"
                train(dataclasses.replace(template, lr=wider, save_dir=save_dir), f"widening {widening}")
    json_path.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    chosen = report.best_learning_rates(records)
    table = report.format_sweep_table(records)
    (sweep_dir / "sweep.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    print("best peak LR per schedule: " + json.dumps(chosen))
    print(f"wrote {report.write_sweep_plot(records, sweep_dir / 'sweep.png')}")
    return chosen


# --- example translations ---------------------------------------------------------------------


def pick_example_ids(references: Sequence[str], count: int) -> list[int]:
    """``count`` test sentences spread over the test set, each with a 6-16 word reference."""
    candidates = [i for i, line in enumerate(references) if 6 <= len(line.split()) <= 16] or list(
        range(len(references))
    )
    if count <= 0 or not candidates:
        return []
    count = min(count, len(candidates))
    return [candidates[k * len(candidates) // count] for k in range(count)]


def read_examples(generate_output: Path, ids: Sequence[int], spec: prepare.PreparationSpec) -> list[dict[str, str]]:
    """Source, reference and hypothesis (Moses-detokenised) of the test sentences ``ids`` from a
    ``fairseq-generate`` output."""
    from sacremoses import MosesDetokenizer

    wanted = set(ids)
    fields: dict[int, dict[str, str]] = {i: {} for i in ids}
    for line in generate_output.read_text(encoding="utf-8").splitlines():
        kind, _, rest = line.partition("-")
        if kind in ("S", "T", "H") and "\t" in rest:
            index, *values = rest.split("\t")
            if int(index) in wanted:
                fields[int(index)][kind] = values[-1]
    detokenize = {
        "S": MosesDetokenizer(lang=spec.source_lang).detokenize,
        "T": MosesDetokenizer(lang=spec.target_lang).detokenize,
        "H": MosesDetokenizer(lang=spec.target_lang).detokenize,
    }
    return [
        {
            "id": str(i),
            **{
                name: detokenize[kind](fields[i].get(kind, "").split())
                for kind, name in (("S", "source"), ("T", "reference"), ("H", "hypothesis"))
            },
        }
        for i in ids
    ]


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
