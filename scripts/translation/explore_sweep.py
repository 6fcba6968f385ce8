"""The explore sweep (``knee-explore-sweep``) on the translation demo: its Knee run at several explore
lengths and seeds, each best checkpoint's valid loss, test BLEU and sharpness.

``python -m scripts.translation.explore_sweep`` prepares the embedded corpus as the demo does, takes
the demo's Knee ``fairseq-train`` command (its model, data, peak LR 2e-3, 6% warmup, 1200 updates,
validation every 100), drops the options the sweep sets (explore, seed, save dir) and hands it to
:mod:`knee_plugins.explore_sweep` with the demo's scoring (``fairseq-generate``, beam 4, BLEU by
sacrebleu on the tokenised text: the demo's "BLEU tok"). The explore length is
``--explore-ratio``: the fraction of the budget held at the peak LR after the warmup (the demo's own
Knee explores 528 of 1200 updates, 0.44). Sharpness is measured on the first 4 training batches of
1024 tokens with 200 projected-ascent steps (not the paper's 1000: ~1 minute a checkpoint on 2 CPU
cores) and 20 Lanczos steps; docs/choosing-lr-and-explore.md shows the result.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from knee_plugins import explore_sweep
from knee_plugins.fairseq_command import without_options
from scripts.common.fairseq_cli import fairseq_command
from scripts.common.fairseq_recipe import DEMO, RunConfig, generate_command, train_command
from scripts.common.runner import RunnerOptions

SWEEP_SETS = {"--explore-updates": 1, "--seed": 1, "--save-dir": 1}
SACREBLEU_TOKENISED = ("--scoring", "sacrebleu", "--sacrebleu-tokenizer", "none")


def demo_sweep_arguments(options: RunnerOptions, data_bin: Path) -> tuple[list[str], str]:
    """The demo's Knee fairseq-train arguments without what the sweep sets, and the arguments that
    score a checkpoint on test as the demo does."""
    recipe = options.recipe(DEMO)
    run = RunConfig(recipe, "knee", "full", 1, data_bin, Path("unused"), options.batches(recipe), cpu=options.use_cpu)
    train = train_command(run)[len(fairseq_command("train")) :]
    generate = generate_command(recipe, data_bin, Path("unused"), options.use_cpu)[len(fairseq_command("generate")) :]
    generate = without_options(generate[1:], {"--path": 1, "--gen-subset": 1})
    return without_options(train, SWEEP_SETS), shlex.join([*generate, *SACREBLEU_TOKENISED])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.translation.explore_sweep",
        description="The demo's Knee run at several explore lengths and seeds: valid loss, test BLEU and "
        "sharpness of each best checkpoint (table, plot, JSON).",
    )
    parser.add_argument("--explore-ratios", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 1..N for every explore length")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/explore-sweep"))
    parser.add_argument("--max-updates", type=int, default=None, help="the budget (default: the demo's 1200)")
    parser.add_argument("--train-pairs", type=int, default=None, help="use the first N training pairs")
    parser.add_argument("--heldout-pairs", type=int, default=None, help="use the first N valid and test pairs")
    parser.add_argument("--bpe-symbols", type=int, default=None, help="joint BPE merges (default: 2000)")
    parser.add_argument("--sharpness-steps", type=int, default=200)
    parser.add_argument("--sharpness-batches", type=int, default=4)
    parser.add_argument("--eigen-iterations", type=int, default=20)
    parser.add_argument("--dry-run", action="store_true", help="print the fairseq-train commands and exit")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    options = RunnerOptions(
        "demo",
        max_updates=args.max_updates,
        train_pairs=args.train_pairs,
        heldout_pairs=args.heldout_pairs,
        bpe_symbols=args.bpe_symbols,
    )
    options.check()
    work_dir = args.work_dir.resolve()
    data_bin = work_dir / "prepared" / "data-bin"
    if not args.dry_run:
        data_bin, _ = options.prepare(options.recipe(DEMO), work_dir)
    train, generate = demo_sweep_arguments(options, data_bin)
    return explore_sweep.main(
        [
            "--explore-ratios",
            *(f"{ratio:g}" for ratio in args.explore_ratios),
            "--seeds",
            *(str(seed) for seed in range(1, args.seeds + 1)),
            "--output-dir",
            str(work_dir / "sweep"),
            "--generate-args",
            generate,
            "--sharpness-batches",
            str(args.sharpness_batches),
            "--sharpness-max-tokens",
            str(options.recipe(DEMO).max_tokens_per_gpu),
            "--sharpness-steps",
            str(args.sharpness_steps),
            "--eigen-iterations",
            str(args.eigen_iterations),
            "--title",
            f"Knee on the demo: explore length at a budget of {options.recipe(DEMO).budget['full']} updates",
            *(["--dry-run"] if args.dry_run else []),
            "--",
            *train,
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
