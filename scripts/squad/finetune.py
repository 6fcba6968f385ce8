"""Fine-tune a BERT on SQuAD v1.1 with the Knee schedule (or a baseline) under 🤗 Accelerate; report EM/F1.

    accelerate launch -m scripts.squad.finetune --model bert-base-uncased --schedule knee
    accelerate launch --multi_gpu --num_processes 8 -m scripts.squad.finetune --model bert-base-uncased --schedule knee

The shape of transformers' ``run_qa_no_trainer.py``: windows of 384 tokens with a 128-token stride, the
best start/end span per question (n-best 20, at most 30 tokens), official v1.1 EM/F1. Paper defaults:
AdamW lr 3e-5, 2 epochs, Knee explores the first epoch and decays linearly to 0 over the second.

The global batch (``--global-batch-size``) is the same on any number of processes: per-device batch x
processes x gradient accumulation. The schedule is sized after ``accelerator.prepare`` from this run's real
number of optimizer updates and stepped once per update (``step_scheduler_with_optimizer=False``), so it
ends exactly at the budget on 1 or N processes. Checkpoints (``--checkpointing-steps``) hold model,
optimizer, scheduler and RNG states; ``--resume-from-checkpoint latest`` continues the same LR trajectory
and the same data order (a seeded sampler per epoch plus ``skip_first_batches``).

Outputs in ``--output-dir``: ``log.jsonl`` (LR, loss and batch of every update), ``evaluations.jsonl``,
``results.json`` (settings, EM/F1 per evaluation, final EM/F1, wall time) and ``curves.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoModelForQuestionAnswering, AutoTokenizer, DataCollatorWithPadding

from scripts.squad import squad_utils as squad

logger = get_logger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Fine-tune a BERT on SQuAD v1.1 under accelerate with the Knee LR schedule."
    )
    squad.add_common_arguments(parser)
    run = parser.add_argument_group("evaluation and checkpoints")
    run.add_argument(
        "--eval-every", default="epoch", help='evaluate on dev every N updates, or "epoch" (always at the end)'
    )
    run.add_argument(
        "--checkpointing-steps", default=None, help='save the full training state every N updates, or "epoch"'
    )
    run.add_argument("--keep-checkpoints", type=int, default=1, help="keep only the newest N checkpoints (0: keep all)")
    run.add_argument(
        "--resume-from-checkpoint",
        default=None,
        help='a step_N folder written by this script, or "latest" (the newest in --output-dir)',
    )
    run.add_argument(
        "--no-save-model", action="store_true", help="do not save the fine-tuned model in <output-dir>/model"
    )
    args = parser.parse_args(argv)
    squad.check_common_arguments(parser, args)
    for option, value in (("--eval-every", args.eval_every), ("--checkpointing-steps", args.checkpointing_steps)):
        if value is not None and value != "epoch" and not (value.isdigit() and int(value) > 0):
            parser.error(f'{option} must be a positive number of updates or "epoch", got {value!r}')
    if args.keep_checkpoints < 0:
        parser.error(f"--keep-checkpoints must be >= 0, got {args.keep_checkpoints}")
    if args.resume_from_checkpoint and args.resume_from_checkpoint != "latest" and not args.dry_run:
        if not Path(args.resume_from_checkpoint).is_dir():
            parser.error(f"--resume-from-checkpoint {args.resume_from_checkpoint}: no such folder")
    num_processes = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        args.per_device, args.accumulation = squad.batch_layout(
            args.global_batch_size, args.per_device_batch_size, num_processes
        )
    except ValueError as error:
        parser.error(str(error))
    args.num_processes = num_processes
    return args


def checkpoint_step(path: Path) -> int | None:
    name = path.name
    return int(name[5:]) if name.startswith("step_") and name[5:].isdigit() and path.is_dir() else None


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = [(checkpoint_step(p), p) for p in output_dir.glob("step_*") if checkpoint_step(p) is not None]
    return max(found)[1] if found else None


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, keep: int) -> None:
    """Save to a temporary folder, then rename: a run killed while saving leaves no half checkpoint."""
    final, partial = output_dir / f"step_{step}", output_dir / f"step_{step}.partial"
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        if keep:
            older = sorted((checkpoint_step(p), p) for p in output_dir.glob("step_*") if checkpoint_step(p) is not None)
            for _, path in older[:-keep]:
                shutil.rmtree(path)
    accelerator.wait_for_everyone()


def evaluate(accelerator, model, dataloader, data, args) -> dict:
    """EM/F1 on the dev sample; every window is gathered exactly once (the padded last batch is dropped)."""
    model.eval()
    rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    duplicates = 0
    for batch in dataloader:
        feature_index = batch.pop("feature_index")
        with torch.no_grad():
            outputs = model(**batch)
        start = accelerator.pad_across_processes(outputs.start_logits, dim=1, pad_index=-1e4)
        end = accelerator.pad_across_processes(outputs.end_logits, dim=1, pad_index=-1e4)
        start, end, feature_index = accelerator.gather_for_metrics((start, end, feature_index))
        for index, start_row, end_row in zip(
            feature_index.tolist(), start.float().cpu().numpy(), end.float().cpu().numpy(), strict=True
        ):
            duplicates += index in rows
            rows[index] = (start_row, end_row)
    model.train()
    features = data["eval_features"]
    if duplicates or len(rows) != len(features):
        raise RuntimeError(
            f"evaluation gathered {len(rows)} distinct windows ({duplicates} duplicates) of {len(features)}"
        )
    width = max(len(start_row) for start_row, _ in rows.values())
    start_logits = np.full((len(features), width), -1e4, dtype=np.float32)
    end_logits = np.full((len(features), width), -1e4, dtype=np.float32)
    for index, (start_row, end_row) in rows.items():
        start_logits[index, : len(start_row)] = start_row
        end_logits[index, : len(end_row)] = end_row
    predictions = squad.postprocess_predictions(
        data["validation"], features, start_logits, end_logits, args.n_best_size, args.max_answer_length
    )
    scores = squad.squad_scores(predictions, data["validation"])
    return {**scores, "num_examples": len(predictions), "num_windows": len(rows)}


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        print("\n".join(squad.plan_lines(args, args.num_processes, args.per_device, args.accumulation)))
        return 0
    for run_args in squad.seed_runs(args):
        train_and_evaluate(run_args)
    return 0


def train_and_evaluate(args: argparse.Namespace) -> None:
    """One fine-tuning run: train, evaluate, save (resuming from a checkpoint if asked)."""
    started = time.time()

    # Accelerator: we step the scheduler ourselves, once per optimizer update; seeded sampler per epoch.
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.accumulation,
        step_scheduler_with_optimizer=False,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    if accelerator.num_processes != args.num_processes:
        raise RuntimeError(
            f"planned for {args.num_processes} processes (WORLD_SIZE) but accelerate runs {accelerator.num_processes}"
        )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    set_seed(args.seed)
    output_dir = Path(args.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)

    # Data: the main process downloads/tokenises first, the others reuse its cache.
    with accelerator.main_process_first():
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        data = squad.load_features(args, tokenizer)
    collator = DataCollatorWithPadding(tokenizer)
    train_columns = [
        "input_ids",
        "token_type_ids",
        "attention_mask",
        "start_positions",
        "end_positions",
        "feature_index",
    ]
    eval_columns = ["input_ids", "token_type_ids", "attention_mask", "feature_index"]
    train_features = data["train_features"].select_columns(
        [c for c in train_columns if c in data["train_features"].column_names]
    )
    eval_features = data["eval_features"].select_columns(
        [c for c in eval_columns if c in data["eval_features"].column_names]
    )
    # Own generators: creating a dataloader iterator then draws no number from the global RNG, so dropout
    # after a resume sees the same random stream as the uninterrupted run.
    train_dataloader = DataLoader(
        train_features,
        shuffle=True,
        batch_size=args.per_device,
        collate_fn=collator,
        generator=torch.Generator().manual_seed(args.seed),
    )
    eval_dataloader = DataLoader(
        eval_features,
        shuffle=False,
        batch_size=args.eval_batch_size,
        collate_fn=collator,
        generator=torch.Generator().manual_seed(args.seed),
    )

    # Model and optimizer
    model = AutoModelForQuestionAnswering.from_pretrained(args.model)
    optimizer = squad.build_optimizer(model, args.learning_rate, args.weight_decay)

    # Prepare, then size the schedule on the sharded dataloader: this run's real number of updates.
    model, optimizer, train_dataloader, eval_dataloader = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader
    )
    steps_per_epoch = math.ceil(len(train_dataloader) / args.accumulation)
    plan = squad.schedule_steps(args, steps_per_epoch)
    total_steps = plan["total"]
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    lr_scheduler = squad.build_scheduler(
        args.schedule,
        optimizer,
        total_steps=total_steps,
        warmup_steps=plan["warmup"],
        explore_steps=plan["explore"],
        min_lr_ratio=args.min_lr_ratio,
        one_cycle_max_lr=args.one_cycle_max_lr,
        one_cycle_div_factor=args.one_cycle_div_factor,
        one_cycle_final_div_factor=args.one_cycle_final_div_factor,
        one_cycle_pct_start=args.one_cycle_pct_start,
    )
    lr_scheduler = accelerator.prepare(lr_scheduler)

    # Resume: model, optimizer, scheduler and RNG states; skip the batches already seen in that epoch.
    # A save cut short by a kill is a step_N.partial folder: never resumed from, removed here.
    if accelerator.is_main_process:
        for partial in output_dir.glob("step_*.partial"):
            logger.info(f"removing {partial}, a save that did not finish")
            shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    completed_steps = 0
    if args.resume_from_checkpoint:
        checkpoint = (
            latest_checkpoint(output_dir)
            if args.resume_from_checkpoint == "latest"
            else Path(args.resume_from_checkpoint)
        )
        if checkpoint is None:
            logger.info(f"no checkpoint in {output_dir}: starting from scratch")
        else:
            accelerator.load_state(str(checkpoint))
            completed_steps = checkpoint_step(checkpoint) or 0
            logger.info(f"resumed from {checkpoint} at update {completed_steps}")
    starting_epoch = completed_steps // steps_per_epoch
    resume_batches = (completed_steps % steps_per_epoch) * args.accumulation

    logger.info(
        f"{len(data['train'])} questions -> {len(train_features)} windows; {accelerator.num_processes} processes x "
        f"{args.per_device} x {args.accumulation} accumulation = global batch {args.global_batch_size}; "
        f"{total_steps} updates ({steps_per_epoch} per epoch), warmup {plan['warmup']}, explore {plan['explore']}"
    )
    log_path, eval_path = output_dir / "log.jsonl", output_dir / "evaluations.jsonl"
    log = None
    if accelerator.is_main_process:
        if not completed_steps:
            eval_path.unlink(missing_ok=True)
        log = open(log_path, "a" if completed_steps else "w", encoding="utf-8")
    eval_every = None if args.eval_every == "epoch" else int(args.eval_every)
    checkpoint_every = None if args.checkpointing_steps in (None, "epoch") else int(args.checkpointing_steps)
    progress_bar = tqdm(range(total_steps), initial=completed_steps, disable=not accelerator.is_local_main_process)

    def run_evaluation(epoch: int) -> None:
        scores = evaluate(accelerator, model, eval_dataloader, data, args)
        record = {"step": completed_steps, "epoch": epoch, **scores}
        logger.info(f"update {completed_steps}: EM {scores['exact_match']:.2f} F1 {scores['f1']:.2f}")
        if accelerator.is_main_process:
            with open(eval_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    # Train
    model.train()
    for epoch in range(starting_epoch, num_epochs):
        train_dataloader.set_epoch(epoch)
        dataloader = train_dataloader
        if epoch == starting_epoch and resume_batches:
            dataloader = accelerator.skip_first_batches(train_dataloader, resume_batches)
        losses, batch_features, grad_norm = [], [], None
        for batch in dataloader:
            batch_features.extend(batch.pop("feature_index").tolist())
            with accelerator.accumulate(model):
                learning_rate = lr_scheduler.get_last_lr()[0]
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm))
                optimizer.step()
                if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                    lr_scheduler.step()
                optimizer.zero_grad()
            losses.append(loss.item())
            if not accelerator.sync_gradients:
                continue
            completed_steps += 1
            progress_bar.update(1)
            progress_bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{learning_rate:.3g}")
            if checkpoint_every and completed_steps % checkpoint_every == 0:
                save_checkpoint(accelerator, output_dir, completed_steps, args.keep_checkpoints)
            if log:
                record = {
                    "step": completed_steps,
                    "epoch": epoch,
                    "lr": learning_rate,
                    "loss": float(np.mean(losses)),
                    "grad_norm": grad_norm,
                    "num_processes": accelerator.num_processes,
                    "features": batch_features,
                }
                log.write(json.dumps(record) + "\n")
                log.flush()
            losses, batch_features = [], []
            if eval_every and completed_steps % eval_every == 0 and completed_steps < total_steps:
                run_evaluation(epoch)
            if completed_steps >= total_steps:
                break
        if args.checkpointing_steps == "epoch":
            save_checkpoint(accelerator, output_dir, completed_steps, args.keep_checkpoints)
        if args.eval_every == "epoch" and completed_steps < total_steps:
            run_evaluation(epoch)
        if completed_steps >= total_steps:
            break
    progress_bar.close()
    run_evaluation(num_epochs - 1)

    # Save: model, results.json (whole trajectory, also across resumes) and the plot
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        log.close()
        if not args.no_save_model:
            accelerator.unwrap_model(model).save_pretrained(output_dir / "model")
            tokenizer.save_pretrained(output_dir / "model")
        steps = {record["step"]: record for record in read_jsonl(log_path)}
        evaluations = {record["step"]: record for record in read_jsonl(eval_path)}
        trajectory = [{k: v for k, v in steps[s].items() if k != "features"} for s in sorted(steps)]
        evaluations_list = [evaluations[s] for s in sorted(evaluations)]
        results = {
            "route": "accelerate",
            "schedule": args.schedule,
            "model": args.model,
            "data": args.data,
            "num_processes": accelerator.num_processes,
            "global_batch_size": args.global_batch_size,
            "per_device_batch_size": args.per_device,
            "gradient_accumulation_steps": args.accumulation,
            "learning_rate": args.one_cycle_max_lr if args.schedule == "one_cycle" else args.learning_rate,
            "num_train_examples": len(data["train"]),
            "num_train_windows": len(train_features),
            "num_eval_examples": len(data["validation"]),
            "num_eval_windows": len(eval_features),
            "total_steps": total_steps,
            "steps_per_epoch": steps_per_epoch,
            "warmup_steps": plan["warmup"],
            "explore_steps": plan["explore"],
            "final": evaluations_list[-1],
            "evaluations": evaluations_list,
            "steps": trajectory,
            "wall_time_s": round(time.time() - started, 1),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        }
        (output_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        squad.plot_run(
            output_dir / "curves.png",
            trajectory,
            evaluations_list,
            f"SQuAD v1.1, {args.schedule}, {args.model}: EM {results['final']['exact_match']:.2f} F1 {results['final']['f1']:.2f}",
        )
        logger.info(
            f"EM {results['final']['exact_match']:.2f} F1 {results['final']['f1']:.2f}; results in {output_dir / 'results.json'}"
        )
    accelerator.end_training()


if __name__ == "__main__":
    sys.exit(main())
