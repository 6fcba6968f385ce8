"""Console commands. ``knee-plan``: print a Knee schedule's phases and plot its LR curve before a run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .schedule import DECAY_TYPES, KneeSchedule

DURATION_HELP = "steps (4000), a fraction of the budget (0.1 or 10%%) or epochs (40ep, needs --steps-per-epoch)"


def build_plan_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="knee-plan",
        description="Print the phase boundaries of a Knee (explore-exploit) schedule and write a PNG of its "
        "learning-rate curve, to check a long run before spending it.",
        epilog="Example: knee-plan --total-steps 31250 --warmup 0.1 --explore 0.5 --lr 6e-3 --out lr.png",
    )
    parser.add_argument("--total-steps", required=True, help="budget in optimizer updates (31250) or in epochs (50ep)")
    parser.add_argument("--warmup", default="0", help=f"warmup length from 0 to the seed LR: {DURATION_HELP}")
    parser.add_argument(
        "--explore",
        default="0.5",
        help=f"constant phase after warmup: {DURATION_HELP}; default 0.5, the paper's no-tuning choice",
    )
    parser.add_argument(
        "--lr", type=float, default=1.0, help="seed (peak) learning rate; default 1 prints the multiplier"
    )
    parser.add_argument(
        "--min-lr-ratio", type=float, default=0.0, help="final LR as a fraction of the seed LR, in [0, 1)"
    )
    parser.add_argument(
        "--decay-type",
        choices=DECAY_TYPES,
        default="linear",
        help="shape of the exploit phase: linear (the paper's), cosine, or 1-sqrt (the WSD cooldown)",
    )
    parser.add_argument(
        "--steps-per-epoch", type=int, default=None, help="optimizer updates per epoch, for durations in epochs"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the LR curve to this PNG file")
    return parser


def phase_table(schedule: KneeSchedule, lr: float) -> str:
    rows = [
        ("warmup", 0, schedule.warmup_steps),
        ("explore", schedule.warmup_steps, schedule.decay_start),
        ("exploit", schedule.decay_start, schedule.total_steps),
    ]
    lines = [
        f"{'phase':<8} {'from step':>10} {'to step':>10} {'steps':>8} {'share':>7} {'lr at start':>12} {'lr at end':>12}"
    ]
    for name, start, end in rows:
        length = end - start
        lines.append(
            f"{name:<8} {start:>10} {end:>10} {length:>8} {length / schedule.total_steps:>7.1%} "
            f"{lr * schedule.factor(start) if length else float('nan'):>12.4g} "
            f"{lr * schedule.factor(end):>12.4g}"
        )
    return "\n".join(lines)


def plot_schedule(schedule: KneeSchedule, lr: float, out: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit(
            "knee-plan: --out needs matplotlib; install it with: pip install 'knee-plugins[plot]'"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stride = max(1, schedule.total_steps // 2000)
    steps = list(range(0, schedule.total_steps + 1, stride))
    if steps[-1] != schedule.total_steps:
        steps.append(schedule.total_steps)
    figure, axes = plt.subplots(figsize=(7, 3.5))
    axes.plot(steps, [lr * schedule.factor(step) for step in steps], color="tab:blue", label="Knee")
    for boundary, label in ((schedule.warmup_steps, "explore"), (schedule.decay_start, "exploit")):
        if 0 < boundary < schedule.total_steps:
            axes.axvline(boundary, color="grey", linestyle=":", linewidth=1)
            axes.annotate(label, (boundary, lr * 1.02), fontsize=8, color="grey")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("learning rate")
    axes.set_ylim(0, lr * 1.1)
    axes.set_title(f"Knee: T={schedule.total_steps}, warmup={schedule.warmup_steps}, explore={schedule.explore_steps}")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    plt.close(figure)


def plan_main(argv: Sequence[str] | None = None) -> int:
    parser = build_plan_parser()
    args = parser.parse_args(argv)
    if args.lr <= 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    try:
        schedule = KneeSchedule.from_durations(
            args.total_steps,
            warmup=args.warmup,
            explore=args.explore,
            min_lr_ratio=args.min_lr_ratio,
            decay_type=args.decay_type,
            steps_per_epoch=args.steps_per_epoch,
            names={
                "total": "--total-steps",
                "warmup": "--warmup",
                "explore": "--explore",
                "min_lr_ratio": "--min-lr-ratio",
                "steps_per_epoch": "--steps-per-epoch",
            },
        )
    except ValueError as error:
        parser.error(str(error))
    print(phase_table(schedule, args.lr))
    if args.out is not None:
        plot_schedule(schedule, args.lr, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(plan_main())
