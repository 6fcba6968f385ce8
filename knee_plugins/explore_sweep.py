"""``knee-explore-sweep``: does a longer explore phase find a flatter minimum, and a better model?

The Knee paper's analysis on your own recipe: one ``fairseq-train`` recipe with ``--lr-scheduler
knee`` and a fixed budget, trained at several explore lengths (``--explore-ratio``: the fraction of
the budget held at the seed LR after warmup; 0 is warmup straight into a linear decay) and seeds.
For each run the sweep reads the best validation loss fairseq logged, optionally scores the best
checkpoint on test with ``fairseq-generate`` (``--generate-args``: BLEU as fairseq prints it), and
measures that checkpoint's sharpness (:mod:`knee_plugins.sharpness`: Keskar's ε-sharpness and the top
Hessian eigenvalue, on the same first training batches for every run). It writes

* ``sweep.json``: every run (command, metrics, sharpness settings) and the per-length summary;
* ``sweep.md``: per explore length, the mean ± standard deviation over the seeds;
* ``sweep.png``: each metric against the explore length (error bars: the seeds' standard deviation).

Each run saves into ``OUTPUT/explore-<ratio>/seed-<seed>`` with its command (``command.json``) and,
once measured, ``result.json``: a rerun of the same sweep reuses finished runs, and an unfinished run
continues from its ``checkpoint_last.pt`` (fairseq's own restore). A folder holding a run of another
command stops the sweep before it trains there.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .fairseq_command import console_script, training_identity

OWNED_OPTIONS = ("--explore-updates", "--explore-epochs", "--explore-ratio", "--seed", "--save-dir")
METRICS = ("best_valid_loss", "bleu", "sharpness", "top_eigenvalue")
METRIC_LABELS = {
    "best_valid_loss": "best valid loss",
    "bleu": "test BLEU",
    "sharpness": "ε-sharpness",
    "top_eigenvalue": "top Hessian eigenvalue",
}
_BLEU_LINE = re.compile(r"Generate \S+ with beam=\d+: BLEU4? = ([0-9.]+)")


def best_valid_loss(log: str) -> float | None:
    """The lowest ``valid_loss`` a ``--log-format json`` fairseq-train log holds (None: no validation)."""
    losses = []
    for line in log.splitlines():
        if "| valid | " in line:
            losses.append(float(json.loads(line.split("| valid | ", 1)[1])["valid_loss"]))
    return min(losses) if losses else None


def generated_bleu(output: str) -> float:
    """The corpus BLEU ``fairseq-generate`` prints at the end (``Generate test with beam=5: BLEU4 = ...``,
    or ``BLEU = ...`` with ``--scoring sacrebleu``)."""
    found = _BLEU_LINE.findall(output)
    if not found:
        raise ValueError("fairseq-generate printed no BLEU line (give --generate-args that score BLEU)")
    return float(found[-1])


def summarise(runs: Sequence[dict[str, Any]], metrics: Sequence[str] = METRICS) -> list[dict[str, Any]]:
    """Per explore ratio (ascending): the number of seeds and each metric's mean and standard deviation
    (``<metric>_std``; 0 for one seed; None where no run has the metric)."""
    rows = []
    for ratio in sorted({float(run["explore_ratio"]) for run in runs}):
        group = [run for run in runs if float(run["explore_ratio"]) == ratio]
        row: dict[str, Any] = {"explore_ratio": ratio, "seeds": len(group)}
        for metric in metrics:
            values = [float(run[metric]) for run in group if run.get(metric) is not None]
            row[metric] = statistics.fmean(values) if values else None
            row[metric + "_std"] = (statistics.stdev(values) if len(values) > 1 else 0.0) if values else None
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[dict[str, Any]], metrics: Sequence[str] = METRICS) -> str:
    """The summary as a Markdown table, ``mean ± std`` over the seeds."""
    shown = [m for m in metrics if any(row.get(m) is not None for row in rows)]
    lines = [
        "| explore | seeds | " + " | ".join(METRIC_LABELS.get(m, m) for m in shown) + " |",
        "|" + " --- |" * (2 + len(shown)),
    ]
    for row in rows:
        cells = []
        for metric in shown:
            mean, std = row.get(metric), row.get(metric + "_std")
            cells.append("-" if mean is None else f"{mean:.4g}" + (f" ± {std:.2g}" if row["seeds"] > 1 else ""))
        lines.append(f"| {row['explore_ratio']:.0%} | {row['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict[str, Any]], path: Path, metrics: Sequence[str] = METRICS, title: str = "") -> Path:
    """One panel per metric against the explore length (% of the budget), seeds' std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in metrics if any(row.get(m) is not None for row in rows)]
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], shown, strict=True):
        points = [row for row in rows if row.get(metric) is not None]
        ax.errorbar(
            [100 * row["explore_ratio"] for row in points],
            [row[metric] for row in points],
            yerr=[row[metric + "_std"] for row in points],
            marker="o",
            capsize=3,
        )
        ax.set_xlabel("explore (% of the budget)")
        ax.set_title(METRIC_LABELS.get(metric, metric))
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="knee-explore-sweep",
        description="Train one fairseq-train recipe (--lr-scheduler knee, a fixed budget) at several explore "
        "lengths and seeds; table and plot of each best checkpoint's valid loss, test BLEU (with "
        "--generate-args) and sharpness. Give the recipe's fairseq-train arguments after `--`, data directory first.",
    )
    parser.add_argument(
        "--explore-ratios",
        type=float,
        nargs="+",
        required=True,
        help="explore lengths as fractions of the budget (--explore-ratio), e.g. 0 0.25 0.5 0.75",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1], help="the seeds every explore length trains with")
    parser.add_argument(
        "--output-dir", type=Path, required=True, help="runs, sweep.json, sweep.md and sweep.png go here"
    )
    parser.add_argument(
        "--generate-args",
        default=None,
        help="score each best checkpoint on test: fairseq-generate DATA --path BEST --gen-subset test "
        "followed by these arguments (quoted), e.g. '--beam 5 --remove-bpe'",
    )
    parser.add_argument(
        "--sharpness-batches", type=int, default=4, help="first training batches the sharpness is measured on"
    )
    parser.add_argument("--sharpness-max-tokens", type=int, default=4096, help="tokens per sharpness batch")
    parser.add_argument(
        "--sharpness-steps", type=int, default=1000, help="projected ascent steps of the ε-sharpness (the paper: 1000)"
    )
    parser.add_argument(
        "--sharpness-epsilon", type=float, default=1e-4, help="ε of the ε-sharpness box (the paper: 1e-4)"
    )
    parser.add_argument("--eigen-iterations", type=int, default=20, help="Lanczos steps for the top Hessian eigenvalue")
    parser.add_argument("--title", default="", help="title of the plot")
    parser.add_argument("--dry-run", action="store_true", help="print the fairseq-train commands and exit")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="`--`, then the fairseq-train arguments")
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace, train_args: list[str]) -> None:
    if not train_args or train_args[0].startswith("-"):
        parser.error("give the fairseq-train arguments after --, the data directory first")
    scheduler = [train_args[i + 1] for i, arg in enumerate(train_args[:-1]) if arg == "--lr-scheduler"]
    if scheduler[-1:] != ["knee"] and "--lr-scheduler=knee" not in train_args:
        parser.error("the fairseq-train arguments must use --lr-scheduler knee")
    for option in OWNED_OPTIONS:
        if any(arg == option or arg.startswith(option + "=") for arg in train_args):
            parser.error(f"{option} is set by the sweep: leave it out of the fairseq-train arguments")
    if len(set(args.explore_ratios)) != len(args.explore_ratios) or len(set(args.seeds)) != len(args.seeds):
        parser.error("--explore-ratios and --seeds must not repeat a value")
    if any(not 0.0 <= ratio <= 1.0 for ratio in args.explore_ratios):
        parser.error(f"--explore-ratios are fractions of the budget in [0, 1], got {args.explore_ratios}")
    for name in ("sharpness_batches", "sharpness_max_tokens", "sharpness_steps", "eigen_iterations"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.sharpness_epsilon <= 0:
        parser.error(f"--sharpness-epsilon must be > 0, got {args.sharpness_epsilon}")


def plan_runs(
    train_args: Sequence[str], explore_ratios: Sequence[float], seeds: Sequence[int], output_dir: Path
) -> list[tuple[float, int, Path, list[str]]]:
    """``(ratio, seed, save_dir, fairseq-train command)`` of every run, explore length by explore length."""
    fairseq_train = console_script("fairseq-train", "fairseq_cli.train")
    plans = []
    for ratio in explore_ratios:
        for seed in seeds:
            save_dir = output_dir / f"explore-{ratio:g}" / f"seed-{seed}"
            command = [*fairseq_train, *train_args, "--explore-ratio", f"{ratio:g}", "--seed", str(seed)]
            plans.append((ratio, seed, save_dir, [*command, "--save-dir", str(save_dir)]))
    return plans


def _finished(save_dir: Path, command: list[str]) -> dict[str, Any] | None:
    result_path = save_dir / "result.json"
    if not result_path.is_file():
        return None
    run: dict[str, Any] = json.loads(result_path.read_text(encoding="utf-8"))
    if training_identity(run["command"]) != training_identity(command):
        raise SystemExit(
            f"{save_dir} holds a run of another command:\n  recorded: {shlex.join(run['command'])}\n"
            f"  planned:  {shlex.join(command)}\nUse another --output-dir, or delete {save_dir}."
        )
    return run


def _train(command: list[str], save_dir: Path) -> str:
    save_dir.mkdir(parents=True, exist_ok=True)
    log_path, record = save_dir / "train.log", save_dir / "command.json"
    resuming = (save_dir / "checkpoint_last.pt").exists()
    if resuming and (
        not record.is_file()
        or training_identity(json.loads(record.read_text(encoding="utf-8"))) != training_identity(command)
    ):
        raise SystemExit(
            f"{save_dir} holds a checkpoint_last.pt of another (or an unrecorded) command, which fairseq-train "
            f"would continue: use another --output-dir, or delete {save_dir}."
        )
    record.write_text(json.dumps(command) + "\n", encoding="utf-8")
    with open(log_path, "a" if resuming else "w", encoding="utf-8") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    text = log_path.read_text(encoding="utf-8")
    if done.returncode != 0:
        raise SystemExit(f"fairseq-train failed (exit {done.returncode}); see {log_path}:\n{text[-3000:]}")
    return text


def _generate(data: str, checkpoint: Path, generate_args: str) -> float:
    command = [
        *console_script("fairseq-generate", "fairseq_cli.generate"),
        data,
        "--path",
        str(checkpoint),
        "--gen-subset",
        "test",
        *shlex.split(generate_args),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"fairseq-generate failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    (checkpoint.parent / "generate-test.txt").write_text(done.stdout, encoding="utf-8")
    return generated_bleu(done.stdout + done.stderr)


def run_sweep(args: argparse.Namespace, train_args: list[str]) -> list[dict[str, Any]]:
    """Train (or reuse) every run of the sweep and measure it; returns one record per run."""
    from tqdm import tqdm

    from .sharpness import fairseq_model_and_batches, measure_sharpness

    data = train_args[0]
    runs = []
    plans = plan_runs(train_args, args.explore_ratios, args.seeds, args.output_dir)
    with tqdm(plans, desc="explore sweep", unit="run") as bar:
        for ratio, seed, save_dir, command in bar:
            bar.set_postfix(explore=f"{ratio:.0%}", seed=seed)
            finished = _finished(save_dir, command)
            if finished is not None:
                runs.append(finished)
                continue
            log = _train(command, save_dir)
            checkpoint = save_dir / "checkpoint_best.pt"
            if not checkpoint.is_file():
                checkpoint = save_dir / "checkpoint_last.pt"
            bleu = _generate(data, checkpoint, args.generate_args) if args.generate_args else None
            model, batches, loss_fn = fairseq_model_and_batches(
                checkpoint, data, max_tokens=args.sharpness_max_tokens, num_batches=args.sharpness_batches
            )
            measured = measure_sharpness(
                model,
                batches,
                loss_fn,
                epsilon=args.sharpness_epsilon,
                steps=args.sharpness_steps,
                eigen_iterations=args.eigen_iterations,
                progress=False,
            )
            run = {
                "explore_ratio": ratio,
                "seed": seed,
                "command": command,
                "checkpoint": str(checkpoint),
                "best_valid_loss": best_valid_loss(log),
                "bleu": bleu,
                "sharpness": measured.sharpness,
                "top_eigenvalue": measured.top_eigenvalue,
                "sharpness_measurement": measured.to_dict(),
            }
            (save_dir / "result.json").write_text(json.dumps(run, indent=1) + "\n", encoding="utf-8")
            runs.append(run)
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    """``knee-explore-sweep``: run the sweep, write sweep.json / sweep.md / sweep.png, print the table."""
    parser = _parser()
    args = parser.parse_args(argv)
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else list(args.train_args)
    if "--dry-run" in train_args:  # fairseq-train has no --dry-run: given after `--`, it is still the sweep's
        train_args.remove("--dry-run")
        args.dry_run = True
    _check(parser, args, train_args)
    if args.dry_run:
        plans = plan_runs(train_args, args.explore_ratios, args.seeds, args.output_dir)
        sys.stdout.write("".join(shlex.join(command) + "\n" for *_, command in plans))
        return 0
    args.output_dir.mkdir(parents=True, exist_ok=True)
    runs = run_sweep(args, train_args)
    rows = summarise(runs)
    summary = {"runs": runs, "summary": rows}
    (args.output_dir / "sweep.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    table = markdown_table(rows)
    (args.output_dir / "sweep.md").write_text(table, encoding="utf-8")
    plot(rows, args.output_dir / "sweep.png", title=args.title)
    sys.stdout.write(table)
    sys.stdout.write(f"wrote {args.output_dir / 'sweep.png'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
