"""Cost of the Knee adapters against transformers' linear schedule, as ratios measured in one run.

1. time per ``scheduler.step()``: KneeLR, get_knee_schedule_with_warmup, get_linear_schedule_with_warmup
   (interleaved rounds, median of rounds);
2. time per optimizer step of a small ``Trainer`` run: KneeCallback vs the Trainer's linear decay
   (interleaved runs, median).

    python -m benchmarks.bench_schedulers [--steps 20000] [--rounds 7] [--trainer-steps 40]
"""

import argparse
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch
import transformers
from transformers import (
    BertConfig,
    BertForMaskedLM,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    get_linear_schedule_with_warmup,
)

import knee_plugins
from knee_plugins import KneeCallback, KneeLR, get_knee_schedule_with_warmup


def make_optimizer(groups: int = 2) -> torch.optim.Optimizer:
    return torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1e-3} for _ in range(groups)])


FACTORIES = {
    "KneeLR": lambda opt, n: KneeLR(opt, total_steps=n, warmup_steps=n // 10, explore_ratio=0.5),
    "get_knee_schedule_with_warmup": lambda opt, n: get_knee_schedule_with_warmup(opt, n // 10, n),
    "get_linear_schedule_with_warmup": lambda opt, n: get_linear_schedule_with_warmup(opt, n // 10, n),
}


def time_scheduler_steps(name: str, steps: int) -> float:
    optimizer = make_optimizer()
    scheduler = FACTORIES[name](optimizer, steps)
    optimizer.step()
    started = time.perf_counter()
    for _ in range(steps):
        scheduler.step()
    return (time.perf_counter() - started) / steps


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.durations: list[float] = []
        self._started = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.durations.append(time.perf_counter() - self._started)


class Tokens(torch.utils.data.Dataset):
    def __init__(self, size: int = 256) -> None:
        self.ids = torch.randint(5, 500, (size, 32), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def trainer_step_time(schedule: str, steps: int, output_dir: Path) -> float:
    torch.manual_seed(0)
    model = BertForMaskedLM(
        BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
    )
    timer = StepTimer()
    callbacks = [timer] + ([KneeCallback()] if schedule == "knee" else [])
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        warmup_steps=0.1,
        logging_steps=10_000,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=callbacks).train()
    return statistics.median(timer.durations[2:])


def print_ratios(title: str, samples: dict[str, list[float]], *, baseline: str, unit: str, scale: float) -> None:
    """Print the median of each entry's timings (seconds x ``scale``) and its ratio to ``baseline``'s."""
    reference = statistics.median(samples[baseline])
    print(f"\n{title}; ratio to {baseline}")
    print(f"{'':<34} {unit:>9} {'ratio':>10}")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"{name:<34} {median * scale:>9.2f} {median / reference:>9.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20_000, help="scheduler.step() calls per timing")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds; the median is reported")
    parser.add_argument("--trainer-steps", type=int, default=40, help="optimizer steps per Trainer run")
    parser.add_argument("--trainer-rounds", type=int, default=3, help="interleaved Trainer runs per schedule")
    parser.add_argument(
        "--output-dir", type=Path, default=Path("outputs/bench"), help="scratch directory for the Trainer"
    )
    args = parser.parse_args()

    commit = (
        subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        or "unknown"
    )
    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, knee_plugins {knee_plugins.__version__} @ {commit}"
    )

    samples = {name: [] for name in FACTORIES}
    for _ in range(args.rounds):
        for name in FACTORIES:
            samples[name].append(time_scheduler_steps(name, args.steps))
    print_ratios(
        f"scheduler.step(), {args.steps} calls x {args.rounds} interleaved rounds (median)",
        samples,
        baseline="get_linear_schedule_with_warmup",
        unit="us/step",
        scale=1e6,
    )

    trainer_samples = {"linear": [], "knee": []}
    for _ in range(args.trainer_rounds):
        for schedule in trainer_samples:
            trainer_samples[schedule].append(
                trainer_step_time(schedule, args.trainer_steps, args.output_dir / schedule)
            )
    print_ratios(
        f"Trainer step time, tiny BERT, {args.trainer_steps} steps x {args.trainer_rounds} interleaved runs (median)",
        trainer_samples,
        baseline="linear",
        unit="ms/step",
        scale=1e3,
    )


if __name__ == "__main__":
    main()
