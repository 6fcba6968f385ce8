"""Fine-tune a BERT on SQuAD v1.1 with a stock ``transformers.Trainer`` on the Knee schedule; report EM/F1.

    python -m scripts.squad.train_trainer --model bert-base-uncased --schedule knee --route callback
    python -m scripts.squad.train_trainer --model bert-base-uncased --schedule knee --route optimizers
    python -m scripts.squad.train_trainer --model bert-base-uncased --schedule linear
    torchrun --nproc_per_node 8 -m scripts.squad.train_trainer --model bert-base-uncased --schedule knee

Knee enters the Trainer in one of two ways (``--route``), which give the same LR at every update:
``callback`` keeps the Trainer's own ``lr_scheduler_type="linear"`` scheduler and adds
``knee_plugins.KneeCallback``, which makes it follow Knee once the Trainer knows its budget;
``optimizers`` builds the AdamW and ``get_knee_schedule_with_warmup`` here and passes
``optimizers=(optimizer, scheduler)``. linear / cosine / constant are the Trainer's own
``lr_scheduler_type``; one_cycle is ``torch.optim.lr_scheduler.OneCycleLR`` through ``optimizers=``.
Same data, windows, post-processing and EM/F1 as ``scripts/squad/finetune.py`` (accelerate); the dev
set is scored every epoch's worth of updates and at the end. Writes ``results.json`` and ``curves.png`` to ``--output-dir``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForQuestionAnswering,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from knee_plugins import KneeCallback
from scripts.squad import squad_utils as squad

logger = logging.getLogger(__name__)

ROUTES = ("callback", "optimizers")
TRAINER_SCHEDULER_TYPE = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Fine-tune a BERT on SQuAD v1.1 with transformers.Trainer and the Knee LR schedule."
    )
    squad.add_common_arguments(parser)
    trainer = parser.add_argument_group("Trainer")
    trainer.add_argument(
        "--route",
        choices=ROUTES,
        default="callback",
        help="how Knee enters the Trainer: KneeCallback on the Trainer's scheduler, or "
        "optimizers=(AdamW, get_knee_schedule_with_warmup(...)); only for --schedule knee",
    )
    trainer.add_argument("--logging-steps", type=int, default=50, help="log the training loss every N updates")
    trainer.add_argument(
        "--checkpointing-steps", type=int, default=0, help="save a Trainer checkpoint every N updates (0: none)"
    )
    trainer.add_argument(
        "--resume-from-checkpoint",
        default=None,
        help='a checkpoint-N folder of this run, or "latest" (the newest in --output-dir)',
    )
    args = parser.parse_args(argv)
    squad.check_common_arguments(parser, args)
    if args.route == "optimizers" and args.schedule != "knee":
        parser.error(f"--route optimizers is Knee's second route; --schedule {args.schedule} needs no route")
    if args.logging_steps <= 0:
        parser.error(f"--logging-steps must be > 0, got {args.logging_steps}")
    if args.checkpointing_steps < 0:
        parser.error(f"--checkpointing-steps must be >= 0, got {args.checkpointing_steps}")
    if (
        args.resume_from_checkpoint not in (None, "latest")
        and not args.dry_run
        and not Path(args.resume_from_checkpoint).is_dir()
    ):
        parser.error(f"--resume-from-checkpoint {args.resume_from_checkpoint}: no such folder")
    args.num_processes = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        args.per_device, args.accumulation = squad.batch_layout(
            args.global_batch_size, args.per_device_batch_size, args.num_processes
        )
    except ValueError as error:
        parser.error(str(error))
    return args


class QuestionAnsweringTrainer(Trainer):
    """A ``Trainer`` whose ``evaluate`` turns start/end logits into answers and scores SQuAD EM/F1."""

    def __init__(self, *args: Any, qa_data: dict, n_best_size: int, max_answer_length: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.qa_data, self.n_best_size, self.max_answer_length = qa_data, n_best_size, max_answer_length

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        dataloader = self.get_eval_dataloader(self.eval_dataset)
        output = self.evaluation_loop(
            dataloader,
            description="Evaluation",
            prediction_loss_only=False,
            ignore_keys=ignore_keys,
            metric_key_prefix=metric_key_prefix,
        )
        start_logits, end_logits = output.predictions
        predictions = squad.postprocess_predictions(
            self.qa_data["validation"],
            self.qa_data["eval_features"],
            start_logits,
            end_logits,
            self.n_best_size,
            self.max_answer_length,
        )
        scores = squad.squad_scores(predictions, self.qa_data["validation"])
        metrics = {f"{metric_key_prefix}_{name}": value for name, value in scores.items()}
        metrics[f"{metric_key_prefix}_num_examples"] = len(predictions)
        metrics[f"{metric_key_prefix}_num_windows"] = len(start_logits)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


class RecordLearningRate(TrainerCallback):
    """The LR each optimizer update used (read between ``optimizer.step()`` and the scheduler's step)."""

    def __init__(self) -> None:
        self.by_step: dict[int, float] = {}

    def on_optimizer_step(self, args, state, control, lr_scheduler=None, **kwargs):
        self.by_step[state.global_step + 1] = lr_scheduler.get_last_lr()[0]


class CheckBudget(TrainerCallback):
    """Fail before the first update if the Trainer's budget differs from the one the schedule was sized for."""

    def __init__(self, total_steps: int) -> None:
        self.total_steps = total_steps

    def on_train_begin(self, args, state, control, **kwargs):
        if state.max_steps != self.total_steps:
            raise ValueError(
                f"the Trainer plans {state.max_steps} updates but the schedule was sized for {self.total_steps}"
            )


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.dry_run:
        lines = squad.plan_lines(args, args.num_processes, args.per_device, args.accumulation)
        route = (
            f"Trainer route: {args.route}"
            if args.schedule == "knee"
            else f"Trainer lr_scheduler_type for {args.schedule}"
        )
        print("\n".join([*lines, route]))
        return None
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    runs = [train_and_evaluate(run_args) for run_args in squad.seed_runs(args)]
    return runs[0] if len(runs) == 1 else {"runs": runs}


def train_and_evaluate(args: argparse.Namespace) -> dict:
    """One fine-tuning run through the Trainer; returns what it writes to results.json."""
    started = time.time()
    output_dir = Path(args.output_dir)

    # Data and model (seeded first: a checkpoint without a QA head gets a new one from the global RNG)
    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    data = squad.load_features(args, tokenizer)
    model = AutoModelForQuestionAnswering.from_pretrained(args.model)

    # Budget in updates: the Trainer's prepared dataloader gives each process ceil(batches / processes) batches.
    batches_per_process = math.ceil(math.ceil(len(data["train_features"]) / args.per_device) / args.num_processes)
    steps_per_epoch = max(1, math.ceil(batches_per_process / args.accumulation))
    plan = squad.schedule_steps(args, steps_per_epoch)
    recorder = RecordLearningRate()
    callbacks: list[TrainerCallback] = [CheckBudget(plan["total"]), recorder]
    optimizers: tuple = (None, None)
    if args.schedule == "knee" and args.route == "callback":
        callbacks.append(KneeCallback(num_explore_steps=plan["explore"], min_lr_ratio=args.min_lr_ratio))
    elif args.schedule not in TRAINER_SCHEDULER_TYPE:
        optimizer = squad.build_optimizer(model, args.learning_rate, args.weight_decay)
        scheduler = squad.build_scheduler(
            args.schedule,
            optimizer,
            total_steps=plan["total"],
            warmup_steps=plan["warmup"],
            explore_steps=plan["explore"],
            min_lr_ratio=args.min_lr_ratio,
            one_cycle_max_lr=args.one_cycle_max_lr,
            one_cycle_div_factor=args.one_cycle_div_factor,
            one_cycle_final_div_factor=args.one_cycle_final_div_factor,
            one_cycle_pct_start=args.one_cycle_pct_start,
        )
        optimizers = (optimizer, scheduler)

    # Trainer
    training_args = TrainingArguments(
        output_dir=str(output_dir),
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        fp16=args.mixed_precision == "fp16",
        bf16=args.mixed_precision == "bf16",
        per_device_train_batch_size=args.per_device,
        per_device_eval_batch_size=args.eval_batch_size,
        gradient_accumulation_steps=args.accumulation,
        max_steps=plan["total"],
        warmup_steps=plan["warmup"],
        lr_scheduler_type=TRAINER_SCHEDULER_TYPE.get(args.schedule, "linear"),
        eval_strategy="steps",
        eval_steps=steps_per_epoch,
        logging_steps=args.logging_steps,
        save_strategy="steps" if args.checkpointing_steps else "no",
        save_steps=args.checkpointing_steps or 500,
        report_to="none",
        seed=args.seed,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    trainer = QuestionAnsweringTrainer(
        model=model,
        args=training_args,
        train_dataset=data["train_features"],
        eval_dataset=data["eval_features"],
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        callbacks=callbacks,
        optimizers=optimizers,
        qa_data=data,
        n_best_size=args.n_best_size,
        max_answer_length=args.max_answer_length,
    )
    logger.info(
        "%d questions -> %d windows; global batch %d = %d x %d processes x %d accumulation; %d updates (%d per epoch), "
        "warmup %d, explore %d; schedule %s%s",
        len(data["train"]),
        len(data["train_features"]),
        args.global_batch_size,
        args.per_device,
        args.num_processes,
        args.accumulation,
        plan["total"],
        steps_per_epoch,
        plan["warmup"],
        plan["explore"],
        args.schedule,
        f" via {args.route}" if args.schedule == "knee" else "",
    )

    # Train (the dev set is scored every epoch's worth of updates and at the end)
    resume = True if args.resume_from_checkpoint == "latest" else args.resume_from_checkpoint
    trainer.train(resume_from_checkpoint=resume)
    last = next((entry for entry in reversed(trainer.state.log_history) if "eval_f1" in entry), None)
    final = last if last and last["step"] == trainer.state.global_step else trainer.evaluate()
    if not trainer.is_world_process_zero():
        return None

    history = trainer.state.log_history
    losses = {entry["step"]: entry["loss"] for entry in history if "loss" in entry}
    evaluations = {}
    for entry in history:
        if "eval_f1" in entry:
            evaluations[entry["step"]] = {
                "step": entry["step"],
                "epoch": entry.get("epoch"),
                "exact_match": entry["eval_exact_match"],
                "f1": entry["eval_f1"],
                "num_examples": entry["eval_num_examples"],
                "num_windows": entry["eval_num_windows"],
            }
    steps = [{"step": step, "lr": lr, "loss": losses.get(step)} for step, lr in sorted(recorder.by_step.items())]
    final_record = {
        "step": trainer.state.global_step,
        "exact_match": final["eval_exact_match"],
        "f1": final["eval_f1"],
        "num_examples": final["eval_num_examples"],
        "num_windows": final["eval_num_windows"],
    }
    results = {
        "route": f"trainer-{args.route}" if args.schedule == "knee" else "trainer",
        "schedule": args.schedule,
        "model": args.model,
        "data": args.data,
        "num_processes": args.num_processes,
        "global_batch_size": args.global_batch_size,
        "per_device_batch_size": args.per_device,
        "gradient_accumulation_steps": args.accumulation,
        "learning_rate": args.one_cycle_max_lr if args.schedule == "one_cycle" else args.learning_rate,
        "num_train_examples": len(data["train"]),
        "num_train_windows": len(data["train_features"]),
        "num_eval_examples": len(data["validation"]),
        "num_eval_windows": len(data["eval_features"]),
        "total_steps": plan["total"],
        "steps_per_epoch": steps_per_epoch,
        "warmup_steps": plan["warmup"],
        "explore_steps": plan["explore"],
        "final": final_record,
        "evaluations": [evaluations[s] for s in sorted(evaluations)],
        "steps": steps,
        "wall_time_s": round(time.time() - started, 1),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    squad.plot_run(
        output_dir / "curves.png",
        steps,
        results["evaluations"],
        f"SQuAD v1.1, {results['route']}, {args.schedule}: EM {final_record['exact_match']:.2f} F1 {final_record['f1']:.2f}",
    )
    logger.info(
        "EM %.2f F1 %.2f; results in %s", final_record["exact_match"], final_record["f1"], output_dir / "results.json"
    )
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)
