"""Pretrain BERT (MLM + NSP) with LAMB in two phases on the Knee schedule, with 🤗 Accelerate.

    python -m scripts.bert.prepare_data --output-dir data/bert          # offline prose, seq 128 and 512
    accelerate launch -m scripts.bert.pretrain --data-dir data/bert --output-dir runs/knee
    accelerate launch --multi_gpu --num_processes 8 -m scripts.bert.pretrain --data-dir data/bert --output-dir runs/knee

Phase 1 trains at sequence length 128 for 90% of the budget, phase 2 at 512 for 10%, starting from
phase 1's weights and LAMB moments with the step counters reset and a fresh schedule (NVIDIA's recipe;
``--phase2-optimizer fresh`` starts from a new LAMB instead). Each phase's
schedule is sized in optimizer steps and stepped once per optimizer step (the ``Accelerator`` is built
with ``step_scheduler_with_optimizer=False``), so the LR follows the plan whatever the number of
processes and the gradient accumulation; global batch = processes x per-device batch x accumulation.

Preemption: the state (model, optimizer, schedule, RNGs) is saved every ``--checkpointing-steps``
optimizer steps and when SIGTERM arrives; running the same command again resumes in the phase, at
the optimizer step and at the data position where the last state was saved.

fp16: an update the loss scaler skips (gradients overflowed) is not one of the plan's updates, as in
NVIDIA's ``run_pretraining.py``: the schedule does not advance, the phase ends after its planned number
of real updates (so Knee's boundaries stay where the plan puts them), and the skipped steps are counted
(``skipped_steps`` in metrics.jsonl and phase_done.json) next to the loss scale.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

from scripts.bert.pretraining_utils import (
    BUDGETS,
    MODEL_PRESETS,
    PHASE1_OPTIMIZER_FILE,
    PHASE2_OPTIMIZER_STARTS,
    SCHEDULES,
    format_plan,
    plan_phases,
)

logger = logging.getLogger("bert_pretrain")
PROGRESS_FILE = "progress.json"  # beside accelerate's state: the updates the loss scaler skipped so far


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Pretrain BERT (masked LM + next-sentence prediction) with LAMB in two phases (seq 128, then 512) "
        "on the Knee schedule or a baseline, under accelerate (1 GPU, multi-GPU, multi-node, CPU).",
    )
    data = parser.add_argument_group("data and model")
    data.add_argument("--data-dir", help="output of scripts/bert/prepare_data.py (phase1/, phase2/, vocab.txt)")
    data.add_argument(
        "--output-dir",
        help="where checkpoints, final weights, metrics.jsonl and the PNG go; "
        "running the same command again resumes from here",
    )
    data.add_argument(
        "--model-config",
        default="large",
        help=f"model shape: a preset ({', '.join(MODEL_PRESETS)}; default large = BERT-large) or a BertConfig json file",
    )
    data.add_argument(
        "--init-checkpoint",
        default=None,
        help="start from these BertForPreTraining weights (a save_pretrained folder); with --phase 2 alone, "
        "phase 1's weights (default: OUTPUT_DIR/phase1/final)",
    )
    data.add_argument(
        "--phase2-optimizer",
        choices=PHASE2_OPTIMIZER_STARTS,
        default="carry",
        help="how phase 2's LAMB starts: carry (default, as NVIDIA's run_pretraining.py: phase 1's moments, "
        "step counters reset, phase 2's LR and schedule; phase 1 keeps them in phase1/final/optimizer.pt) "
        "or fresh (new moments)",
    )
    plan = parser.add_argument_group("plan (one value for both phases, or two: phase 1 phase 2)")
    plan.add_argument(
        "--phase", choices=("1", "2", "both"), default="both", help="run phase 1, phase 2, or both in turn"
    )
    plan.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default="knee",
        help="knee: warmup + explore at the peak LR + linear decay to 0; linear: warmup + linear decay; "
        "poly: NVIDIA's PolyWarmUp (warmup 0.2843 / 0.128 of the phase, then (1 - t/T)^0.5)",
    )
    plan.add_argument(
        "--budget",
        default="full",
        help=f"total optimizer steps of both phases: full ({BUDGETS['full']}), short ({BUDGETS['short']}, the "
        "paper's Knee budget) or a number; split 90%% / 10%% between the phases",
    )
    plan.add_argument(
        "--phase1-steps", type=int, default=None, help="optimizer steps of phase 1 (overrides the budget's 90%%)"
    )
    plan.add_argument(
        "--phase2-steps", type=int, default=None, help="optimizer steps of phase 2 (overrides the budget's 10%%)"
    )
    plan.add_argument(
        "--warmup",
        nargs="+",
        default=None,
        help="warmup per phase: a fraction of the phase (0.1, 10%%) or steps (500); default 0.1, and NVIDIA's "
        "0.2843 0.128 with --schedule poly",
    )
    plan.add_argument(
        "--explore",
        nargs="+",
        default=None,
        help="Knee's explore phase after warmup: fraction of the phase or steps (default 0.5)",
    )
    plan.add_argument(
        "--learning-rate", nargs="+", type=float, default=None, help="peak LR per phase (default 6e-3 4e-3)"
    )
    plan.add_argument(
        "--global-batch-size",
        nargs="+",
        type=int,
        default=None,
        help="sequences per optimizer step, all processes together (default 16384 in both phases)",
    )
    plan.add_argument(
        "--per-device-batch-size",
        nargs="+",
        type=int,
        default=[64, 16],
        help="sequences per forward pass on one process (default 64 16); the gradient accumulation is "
        "global batch / (processes x per-device batch) and must be a whole number",
    )
    optim = parser.add_argument_group("optimizer and precision")
    optim.add_argument(
        "--weight-decay", type=float, default=0.01, help="LAMB weight decay (none on biases and LayerNorm)"
    )
    optim.add_argument(
        "--max-grad-norm",
        type=float,
        default=1.0,
        help="LAMB divides the gradients by max(global norm / this, 1) (0: off)",
    )
    optim.add_argument(
        "--mixed-precision",
        choices=("no", "fp16", "bf16"),
        default=None,
        help="passed to the Accelerator (default: accelerate's config / launch flag)",
    )
    optim.add_argument("--seed", type=int, default=42, help="random seed (model init, dropout, data order)")
    run = parser.add_argument_group("checkpoints, logging")
    run.add_argument("--checkpointing-steps", type=int, default=200, help="save the full state every N optimizer steps")
    run.add_argument("--save-total-limit", type=int, default=2, help="keep the newest N checkpoints of a phase")
    run.add_argument("--logging-steps", type=int, default=10, help="log MLM/NSP loss and LR every N optimizer steps")
    run.add_argument(
        "--report-to",
        default="none",
        help='trackers for the logs, comma-separated (tensorboard, wandb, mlflow, ...), "all" or "none"; '
        "metrics.jsonl in the output dir is always written",
    )
    run.add_argument(
        "--eval-batches",
        type=int,
        default=50,
        help="validation batches per process scored at the end of each phase (0: none)",
    )
    run.add_argument(
        "--eval-steps",
        type=int,
        default=0,
        help="also score the validation MLM/NSP every N optimizer steps of a phase, into eval.jsonl (0: only at "
        "the end of each phase)",
    )
    run.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    run.add_argument(
        "--dry-run", action="store_true", help="print the resolved plan and exit (no data, model or device needed)"
    )
    args = parser.parse_args(argv)
    if args.eval_steps < 0:
        parser.error(f"--eval-steps must be >= 0 (0: only at the end of each phase), got {args.eval_steps}")
    for name in ("checkpointing_steps", "save_total_limit", "logging_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.dry_run:
        for name in ("data_dir", "output_dir"):
            if getattr(args, name) is None:
                parser.error(f"--{name.replace('_', '-')} is required (unless --dry-run)")
    return parser, args


def resolve_plan(parser, args, num_processes, seq_lengths=(128, 512), max_predictions=(20, 80)):
    try:
        return plan_phases(
            budget=args.budget,
            phase_steps_override=(args.phase1_steps, args.phase2_steps),
            schedule=args.schedule,
            warmup=args.warmup,
            explore=args.explore,
            learning_rates=args.learning_rate,
            global_batch_size=args.global_batch_size,
            per_device_batch_size=args.per_device_batch_size,
            num_processes=num_processes,
            seq_lengths=seq_lengths,
            max_predictions=max_predictions,
        )
    except ValueError as error:
        parser.error(str(error))


def phases_to_run(args):
    return {"1": (1,), "2": (2,), "both": (1, 2)}[args.phase]


def main(argv=None):
    parser, args = parse_args(argv)

    if args.dry_run:
        num_processes = int(os.environ.get("WORLD_SIZE", "1"))
        plans = resolve_plan(parser, args, num_processes)
        if int(os.environ.get("RANK", "0")) == 0:
            print(format_plan(plans[phase - 1] for phase in phases_to_run(args)))
        return 0

    # Everything that can be wrong with the input is checked before the first step.
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, GradientAccumulationPlugin

    from scripts.bert.pretraining_utils import bert_config, data_phase_config

    data_dir, output_dir = Path(args.data_dir), Path(args.output_dir)
    vocab_file = data_dir / "vocab.txt"
    if not vocab_file.is_file():
        parser.error(
            f"--data-dir {data_dir} has no vocab.txt: prepare it with scripts/bert/prepare_data.py --vocab-file VOCAB"
        )
    try:
        made = [data_phase_config(data_dir, phase) for phase in (1, 2)]
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    seq_lengths = tuple(int(phase["seq_length"]) for phase in made)
    max_predictions = tuple(int(phase["max_predictions"]) for phase in made)
    # WORLD_SIZE is what accelerate launch / torchrun start; the Accelerator's count below is authoritative.
    resolve_plan(parser, args, int(os.environ.get("WORLD_SIZE", "1")), seq_lengths, max_predictions)
    from transformers import BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(str(data_dir))
    try:
        config = bert_config(args.model_config, len(tokenizer), max(512, *seq_lengths))
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    if config.max_position_embeddings < max(seq_lengths):
        parser.error(
            f"--model-config: max_position_embeddings {config.max_position_embeddings} < sequence length {max(seq_lengths)}"
        )
    if args.init_checkpoint and not Path(args.init_checkpoint).is_dir():
        parser.error(f"--init-checkpoint {args.init_checkpoint}: no such folder")
    if (
        args.phase == "2"
        and not args.init_checkpoint
        and not (output_dir / "phase1" / "final" / "config.json").is_file()
    ):
        parser.error(
            f"--phase 2 needs phase 1's weights: {output_dir}/phase1/final does not exist; pass --init-checkpoint"
        )
    if args.phase == "2" and args.phase2_optimizer == "carry":
        phase1_state = Path(args.init_checkpoint or output_dir / "phase1" / "final") / PHASE1_OPTIMIZER_FILE
        if not phase1_state.is_file():
            parser.error(
                f"--phase2-optimizer carry needs phase 1's LAMB state, {phase1_state}, which does not exist; "
                "pass --phase2-optimizer fresh to start phase 2 with new moments"
            )

    # Each phase sets its own accumulation; optimizer steps are counted in micro-batches, not epochs.
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=1, sync_with_dataloader=False),
        step_scheduler_with_optimizer=False,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        log_with=None if args.report_to == "none" else args.report_to.split(","),
        project_dir=str(output_dir),
    )
    plans = resolve_plan(parser, args, accelerator.num_processes, seq_lengths, max_predictions)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if accelerator.is_main_process else logging.WARNING,
    )
    logger.info("plan:\n%s", format_plan(plans))
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "run_config.json").write_text(json.dumps(vars(args), indent=2) + "\n")
    check_shared_output_dir(accelerator, output_dir)
    accelerator.init_trackers(
        "bert_pretraining",
        config={k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(args).items()},
    )

    stop = {"requested": False}
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(requested=True))

    trainer = PhaseTrainer(accelerator, args, tokenizer, config, output_dir, stop)
    init = Path(args.init_checkpoint) if args.init_checkpoint else None
    for phase in phases_to_run(args):
        if phase == 2 and (args.phase == "both" or init is None):
            init = output_dir / "phase1" / "final"
        outcome = trainer.run(plans[phase - 1], init, step_offset=plans[0].steps if phase == 2 else 0)
        if outcome == "stopped":
            accelerator.end_training()
            return 143

    if accelerator.is_main_process:
        from scripts.bert.pretraining_utils import plot_metrics, read_metrics

        records = read_metrics(output_dir / "metrics.jsonl")
        if records:
            png = plot_metrics(records, output_dir / "loss_lr.png", title=f"BERT pretraining, {args.schedule} schedule")
            logger.info("wrote %s", png)
    accelerator.end_training()
    return 0


def check_shared_output_dir(accelerator, output_dir: Path) -> None:
    """SystemExit on every process unless all of them see the main process's ``--output-dir``: the main
    process alone writes the saved states that every process loads on a resume, so a multi-node run
    needs the directory on a file system all nodes share."""
    import uuid

    from accelerate.utils import broadcast_object_list, gather_object

    if accelerator.num_processes == 1:
        return
    token = broadcast_object_list([uuid.uuid4().hex if accelerator.is_main_process else None])[0]
    marker = output_dir / f".shared-check-{token}"
    if accelerator.is_main_process:
        marker.write_text(f"written by process 0 on {os.uname().nodename}\n")
    accelerator.wait_for_everyone()
    sees = gather_object([(accelerator.process_index, os.uname().nodename, marker.is_file())])
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        marker.unlink()
    blind = [f"process {index} on {host}" for index, host, seen in sees if not seen]
    if blind:
        raise SystemExit(
            f"--output-dir {output_dir} is not shared: {', '.join(blind)} cannot see what process 0 writes there. "
            "The main process alone saves the states every process resumes from; put --output-dir on a file "
            "system all nodes share (as NVIDIA's recipe does)."
        )


def capture_rng() -> dict:
    """The host RNGs that ``accelerator.save_state`` records (the data order has its own seeded generators)."""
    import random

    import numpy as np
    import torch

    state = {"random": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


# What a resumed phase must share with the saved one besides its plan: each differing value is refused.
RESUME_SETTINGS = ("seed", "data_dir", "weight_decay", "max_grad_norm", "phase2_optimizer", "model_config")


def resume_settings(args) -> dict:
    settings = {name: getattr(args, name) for name in RESUME_SETTINGS}
    settings["data_dir"] = str(Path(args.data_dir).resolve())
    return settings


def resume_refusal(saved: dict, now: dict) -> str | None:
    """Why a phase saved under ``saved`` cannot resume under ``now`` (None: it can)."""
    if "plan" not in saved:  # plan.json of an older version held the plan alone
        saved = {"plan": saved, "settings": {}}
    differences = []
    for name, value in now["settings"].items():
        if saved["settings"].get(name, value) != value:
            differences.append(f"--{name.replace('_', '-')} {saved['settings'][name]} (saved) vs {value} (now)")
    for name, value in now["plan"].items():
        if saved["plan"].get(name) != value:
            differences.append(f"plan {name} {saved['plan'].get(name)} (saved) vs {value} (now)")
    return "; ".join(differences) or None


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed over it: a kill leaves the old or the new file."""
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)


class PhaseTrainer:
    """Runs one phase at a time with the same Accelerator, resuming from the phase's newest state."""

    def __init__(self, accelerator, args, tokenizer, config, output_dir, stop):
        self.skipped_steps = 0
        self.accelerator, self.args, self.tokenizer, self.config = accelerator, args, tokenizer, config
        self.output_dir, self.stop = output_dir, stop
        self.metrics_path = output_dir / "metrics.jsonl"
        self.eval_path = output_dir / "eval.jsonl"

    def run(self, plan, init, step_offset):
        import torch
        from accelerate.utils import set_seed
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm
        from transformers import BertForPreTraining, DataCollatorForTokenClassification

        from scripts.bert.pretraining_utils import PretrainingLoss, build_lamb, carry_optimizer_state, load_phase_data

        accelerator, args = self.accelerator, self.args
        phase_dir = self.output_dir / f"phase{plan.phase}"
        final_dir = phase_dir / "final"
        if (final_dir / "phase_done.json").is_file():
            logger.info("phase %d is done (%s): skipping it", plan.phase, final_dir)
            return "done"

        # A fresh start of the phase: seeds, model (phase 1: new or --init-checkpoint; phase 2: phase 1's weights).
        # The data order comes from the loaders' own generators (seed + epoch), so the global RNG that
        # save_state/load_state carry drives only dropout, and a resumed run draws what an uninterrupted one does.
        accelerator.free_memory()
        accelerator.gradient_accumulation_steps = plan.gradient_accumulation_steps
        set_seed(args.seed + plan.phase, device_specific=True)
        if init is not None:
            model = BertForPreTraining.from_pretrained(str(init))
            logger.info("phase %d starts from %s", plan.phase, init)
        else:
            model = BertForPreTraining(self.config)
        model = PretrainingLoss(model)

        data = load_phase_data(args.data_dir, plan.phase)
        collator = DataCollatorForTokenClassification(self.tokenizer, pad_to_multiple_of=8)
        train_dataloader = DataLoader(
            data["train"],
            batch_size=plan.per_device_batch_size,
            shuffle=True,
            drop_last=True,
            collate_fn=collator,
            num_workers=args.num_workers,
            generator=torch.Generator().manual_seed(args.seed),
        )
        eval_dataloader = None
        if args.eval_batches and "validation" in data and len(data["validation"]):
            eval_dataloader = DataLoader(
                data["validation"],
                batch_size=plan.per_device_batch_size,
                collate_fn=collator,
                generator=torch.Generator(),
            )

        optimizer = build_lamb(model, plan.learning_rate, args.weight_decay, args.max_grad_norm)
        if plan.phase == 2 and args.phase2_optimizer == "carry":
            carry_optimizer_state(
                optimizer, torch.load(init / PHASE1_OPTIMIZER_FILE, weights_only=True), plan.learning_rate
            )
            logger.info("phase 2 starts from phase 1's LAMB moments (%s)", init / PHASE1_OPTIMIZER_FILE)
        scheduler = plan.build_scheduler(optimizer)

        model, optimizer, train_dataloader, scheduler = accelerator.prepare(
            model, optimizer, train_dataloader, scheduler
        )
        if eval_dataloader is not None:
            eval_dataloader = accelerator.prepare(eval_dataloader)
        batches_per_epoch = len(train_dataloader)
        if batches_per_epoch < plan.gradient_accumulation_steps:
            raise SystemExit(
                f"phase {plan.phase}: {len(data['train'])} training examples give {batches_per_epoch} batches per process, "
                f"fewer than one optimizer step ({plan.gradient_accumulation_steps} accumulation steps); prepare more data "
                "or lower --global-batch-size"
            )

        # Resume from the newest complete state of this phase, if it was saved under the same plan and settings.
        checkpoint_dir = phase_dir / "checkpoints"
        plan_file = phase_dir / "plan.json"
        completed = self.skipped_steps = 0
        saved = sorted(checkpoint_dir.glob("step_*[0-9]")) if checkpoint_dir.is_dir() else []
        identity = {"plan": asdict(plan), "settings": resume_settings(args)}
        if saved and plan_file.is_file():
            refusal = resume_refusal(json.loads(plan_file.read_text()), identity)
            if refusal:
                raise SystemExit(
                    f"{saved[-1]} was saved under another plan: {refusal}; resume with the same options and number "
                    "of processes, or use a new --output-dir"
                )
        accelerator.wait_for_everyone()  # every rank has read plan.json before the main process rewrites it
        if accelerator.is_main_process:
            phase_dir.mkdir(parents=True, exist_ok=True)
            write_atomically(plan_file, json.dumps(identity) + "\n")
            for partial_save in checkpoint_dir.glob("*.tmp") if checkpoint_dir.is_dir() else []:
                shutil.rmtree(partial_save, ignore_errors=True)  # a save cut short by a kill
        if saved:
            accelerator.load_state(str(saved[-1]))
            completed = int(saved[-1].name.split("_")[1])
            progress_file = saved[-1] / PROGRESS_FILE
            if progress_file.is_file():
                self.skipped_steps = int(json.loads(progress_file.read_text())["skipped_steps"])
            logger.info("phase %d resumes at optimizer step %d from %s", plan.phase, completed, saved[-1])
        if accelerator.is_main_process:
            for path in (self.metrics_path, self.eval_path):
                self._truncate_metrics(path, plan.phase, completed)
        accelerator.wait_for_everyone()

        consumed = (completed + self.skipped_steps) * plan.gradient_accumulation_steps
        epoch, skip = divmod(consumed, batches_per_epoch)
        progress = tqdm(
            total=plan.steps,
            initial=completed,
            desc=f"phase {plan.phase}",
            disable=not accelerator.is_local_main_process,
        )
        step_rng, step_micro_batches = capture_rng(), accelerator.step
        window, window_steps = torch.zeros(3, device=accelerator.device), 0
        step_losses = torch.zeros(2, device=accelerator.device)
        step_sequences = torch.zeros((), dtype=torch.long, device=accelerator.device)
        start_time, start_step = time.perf_counter(), completed
        model.train()
        while completed < plan.steps:
            train_dataloader.set_epoch(epoch)
            loader = accelerator.skip_first_batches(train_dataloader, skip) if skip else train_dataloader
            for batch in loader:
                with accelerator.accumulate(model):
                    losses = model(**batch)
                    mlm_loss, nsp_loss = losses["mlm_loss"], losses["nsp_loss"]
                    accelerator.backward(mlm_loss + nsp_loss)
                    learning_rate = scheduler.get_last_lr()[0]
                    if accelerator.sync_gradients:
                        # The global norm LAMB pre-normalises by (max_norm inf: the gradients are left as they are).
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(), float("inf"))
                    optimizer.step()
                    if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                        scheduler.step()
                    optimizer.zero_grad()
                step_losses += torch.stack([mlm_loss.detach(), nsp_loss.detach()]) / plan.gradient_accumulation_steps
                step_sequences += batch["input_ids"].shape[0]
                if not accelerator.sync_gradients:
                    if self._stop_requested():
                        # The weights and LAMB are still those of the last completed step: save them with the
                        # RNG as it was then, so the resumed run replays this step's micro-batches exactly.
                        restore_rng(step_rng)
                        accelerator.step = step_micro_batches  # save_state records accumulate()'s counter too
                        return self._stop(checkpoint_dir, plan.phase, completed, progress, "mid-accumulation")
                    continue
                if accelerator.optimizer_step_was_skipped:
                    # The loss scaler found inf/NaN gradients: no update happened, so none is counted.
                    self.skipped_steps += 1
                    step_rng, step_micro_batches = capture_rng(), accelerator.step
                    step_losses.zero_()
                    step_sequences.zero_()
                    logger.info(
                        "phase %d: update %d skipped by the loss scaler (%d skipped so far)",
                        plan.phase,
                        completed + 1,
                        self.skipped_steps,
                    )
                    if self._stop_requested():
                        return self._stop(checkpoint_dir, plan.phase, completed, progress, "after a skipped update")
                    continue
                completed += 1
                step_rng, step_micro_batches = capture_rng(), accelerator.step
                progress.update(1)
                window[:2] += accelerator.reduce(step_losses, reduction="mean")
                window[2] += grad_norm.detach().float()
                window_steps += 1
                sequences = int(accelerator.reduce(step_sequences, reduction="sum"))
                step_losses.zero_()
                step_sequences.zero_()
                if completed % args.logging_steps == 0 or completed == plan.steps:
                    mlm, nsp, mean_grad_norm = (window / window_steps).tolist()
                    record = {
                        "phase": plan.phase,
                        "step": completed,
                        "global_step": step_offset + completed,
                        "lr": learning_rate,
                        "mlm_loss": mlm,
                        "nsp_loss": nsp,
                        "grad_norm": mean_grad_norm,
                        "loss_scale": accelerator.scaler.get_scale() if accelerator.scaler is not None else None,
                        "skipped_steps": self.skipped_steps,
                        "global_batch": sequences,
                    }
                    progress.set_postfix(mlm=f"{mlm:.3f}", nsp=f"{nsp:.3f}", lr=f"{learning_rate:.3g}")
                    accelerator.log(
                        {"mlm_loss": mlm, "nsp_loss": nsp, "lr": learning_rate, "phase": plan.phase},
                        step=step_offset + completed,
                    )
                    if accelerator.is_main_process:
                        with self.metrics_path.open("a", encoding="utf-8") as handle:
                            handle.write(json.dumps(record) + "\n")
                    window.zero_()
                    window_steps = 0
                if (
                    args.eval_steps
                    and completed % args.eval_steps == 0
                    and completed < plan.steps
                    and eval_dataloader is not None
                ):
                    evaluation = self._evaluate(model, eval_dataloader)
                    if evaluation is None:
                        return self._stop(checkpoint_dir, plan.phase, completed, progress, "during an evaluation")
                    if accelerator.is_main_process and evaluation:
                        with self.eval_path.open("a", encoding="utf-8") as handle:
                            handle.write(json.dumps({"phase": plan.phase, "step": completed, **evaluation}) + "\n")
                    accelerator.log(evaluation, step=step_offset + completed)
                if self._stop_requested():
                    return self._stop(checkpoint_dir, plan.phase, completed, progress, "at a step boundary")
                if completed % args.checkpointing_steps == 0 and completed < plan.steps:
                    self._save_state(checkpoint_dir, completed)
                if completed >= plan.steps:
                    break
            epoch, skip = epoch + 1, 0
        progress.close()
        train_seconds = time.perf_counter() - start_time

        evaluation = self._evaluate(model, eval_dataloader) if eval_dataloader is not None else {}
        if evaluation is None:
            return self._stop(checkpoint_dir, plan.phase, completed, progress, "during the final evaluation")
        summary = {
            "phase": plan.phase,
            "steps": plan.steps,
            "schedule": plan.schedule,
            "steps_this_run": completed - start_step,
            "skipped_steps": self.skipped_steps,
            "train_seconds": train_seconds,
            "steps_per_second": (completed - start_step) / train_seconds if train_seconds else None,
            **evaluation,
        }
        logger.info("phase %d done: %s", plan.phase, summary)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            staging = phase_dir / "final.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            accelerator.unwrap_model(model).model.save_pretrained(str(staging))
            if plan.phase == 1:
                torch.save(optimizer.state_dict(), staging / PHASE1_OPTIMIZER_FILE)
            self.tokenizer.save_pretrained(str(staging))
            (staging / "phase_done.json").write_text(json.dumps(summary, indent=2) + "\n")
            shutil.rmtree(final_dir, ignore_errors=True)
            staging.rename(final_dir)
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
        accelerator.wait_for_everyone()
        return "done"

    def _evaluate(self, model, dataloader):
        import torch

        accelerator = self.accelerator
        model.eval()
        totals = torch.zeros(5, device=accelerator.device, dtype=torch.float64)
        with torch.no_grad():
            for index, batch in enumerate(dataloader):
                if index >= self.args.eval_batches:
                    break
                if self._stop_requested():
                    return None
                stats = accelerator.gather_for_metrics(model(**batch, per_example=True))
                totals += torch.stack(
                    [
                        stats["mlm_loss_sum"].sum(),
                        stats["mlm_count"].sum(),
                        stats["nsp_loss"].sum(),
                        stats["nsp_correct"].sum(),
                        torch.tensor(stats["nsp_loss"].numel(), device=accelerator.device),
                    ]
                ).double()
        model.train()
        if not totals[1] or not totals[4]:
            return {}
        return {
            "eval_mlm_loss": (totals[0] / totals[1]).item(),
            "eval_nsp_loss": (totals[2] / totals[4]).item(),
            "eval_nsp_accuracy": (totals[3] / totals[4]).item(),
        }

    def _stop_requested(self):
        """SIGTERM reached any process (a collective: every rank calls it at the same micro-batch)."""
        if self.stop["requested"]:
            self.accelerator.set_trigger()
        return self.accelerator.check_trigger()

    def _stop(self, checkpoint_dir, phase, completed, progress, where):
        self._save_state(checkpoint_dir, completed)
        logger.warning(
            "SIGTERM (%s): saved the state at phase %d step %d; run the same command to resume", where, phase, completed
        )
        progress.close()
        return "stopped"

    def _save_state(self, checkpoint_dir, completed):
        """save_state into a staging folder renamed when complete, so a kill mid-save leaves the previous state usable."""
        accelerator = self.accelerator
        target = checkpoint_dir / f"step_{completed:08d}"
        staging = checkpoint_dir / f"step_{completed:08d}.tmp"
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (staging / PROGRESS_FILE).write_text(json.dumps({"skipped_steps": self.skipped_steps}) + "\n")
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
            for old in sorted(checkpoint_dir.glob("step_*[0-9]"))[: -self.args.save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    def _truncate_metrics(self, path, phase, completed):
        """Drop log records past the resumed state (written after the last save, before the kill)."""
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            if record["phase"] < phase or (record["phase"] == phase and record["step"] <= completed):
                kept.append(line)
        write_atomically(path, "".join(f"{line}\n" for line in kept))


if __name__ == "__main__":
    sys.exit(main())
