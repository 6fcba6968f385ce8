"""The translation demo's outputs: one table (mean ± std over seeds) and PNG plots of the LR
curves, the valid loss and the BLEU of every schedule, all read from fairseq's own logs."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scripts.common import sweep
from scripts.common.results import RunResult, mean_std


def _by_label(results: Sequence[RunResult]) -> dict[str, list[RunResult]]:
    groups: dict[str, list[RunResult]] = defaultdict(list)
    for result in results:
        groups[result.label].append(result)
    return groups


def format_table(results: Sequence[RunResult]) -> str:
    """A Markdown table, one row per schedule: test BLEU (tokenised, detokenised), best valid loss
    and ppl, updates, wall time (and the peak LR when the runs recorded it); mean ± std when there
    are several seeds."""
    with_lr = any(r.peak_lr is not None for r in results)
    header: tuple[str, ...] = (
        "schedule",
        "seeds",
        "BLEU tok",
        "BLEU detok",
        "valid loss",
        "valid ppl",
        "updates",
        "wall s",
    )
    header = header[:2] + ("peak LR",) + header[2:] if with_lr else header
    rows = [header, tuple("---" for _ in header)]
    for label, group in _by_label(results).items():
        lr = (" / ".join(sorted({f"{r.peak_lr:g}" for r in group if r.peak_lr is not None})) or "-",) if with_lr else ()
        rows.append(
            (
                label,
                str(len(group)),
                *lr,
                mean_std([r.bleu_tokenized for r in group], 2),
                mean_std([r.bleu_detokenized for r in group], 2),
                mean_std([r.best_valid_loss for r in group], 3),
                mean_std([r.best_valid_ppl for r in group], 2),
                mean_std([r.updates for r in group], 0),
                mean_std([r.wall_seconds for r in group], 0),
            )
        )
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def format_examples(results: Sequence[RunResult]) -> str:
    """The example test translations of every schedule (first seed) beside source and reference."""
    firsts = [group[0] for group in _by_label(results).values() if group[0].examples]
    if not firsts:
        return ""
    width = max(len("reference"), *(len(r.label) for r in firsts))
    blocks = []
    for position, example in enumerate(firsts[0].examples):
        lines = [
            f"test sentence {example['id']} (seed {firsts[0].seed})",
            f"  {'source':<{width}}  {example['source']}",
        ]
        lines.append(f"  {'reference':<{width}}  {example['reference']}")
        lines += [f"  {r.label:<{width}}  {r.examples[position]['hypothesis']}" for r in firsts]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def best_learning_rates(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Per schedule, the swept peak LR with the lowest best valid loss (the sweep's rule,
    :func:`scripts.common.sweep.best_learning_rates`)."""
    return sweep.best_learning_rates(
        sweep.SweepRecord(r["schedule"], float(r["lr"]), float(r["best_valid_loss"])) for r in records
    )


def format_sweep_table(records: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: one row per schedule, the best valid loss at each swept LR (the chosen one in bold)."""
    learning_rates = sorted({float(r["lr"]) for r in records})
    chosen = best_learning_rates(records)
    header = ("schedule", *(f"lr {lr:g}" for lr in learning_rates), "best LR")
    rows = [header, tuple("---" for _ in header)]
    for schedule in dict.fromkeys(r["schedule"] for r in records):
        losses = {float(r["lr"]): float(r["best_valid_loss"]) for r in records if r["schedule"] == schedule}
        cells = [
            "-" if lr not in losses else (f"**{losses[lr]:.3f}**" if lr == chosen[schedule] else f"{losses[lr]:.3f}")
            for lr in learning_rates
        ]
        edge = " (grid edge)" if sweep.on_grid_edge(losses, chosen[schedule]) else ""
        rows.append((schedule, *cells, f"{chosen[schedule]:g}{edge}"))
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def write_sweep_plot(records: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Best valid loss against peak LR (log scale), one line per schedule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.8))
    for schedule in dict.fromkeys(r["schedule"] for r in records):
        points = sorted((float(r["lr"]), float(r["best_valid_loss"])) for r in records if r["schedule"] == schedule)
        axes.plot([lr for lr, _ in points], [loss for _, loss in points], marker="o", label=schedule)
    axes.set_xscale("log")
    axes.set_xlabel("peak learning rate")
    axes.set_ylabel("best valid loss (label-smoothed)")
    axes.set_title("LR sweep: best valid loss at the demo's budget, seed 1")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_plots(results: Sequence[RunResult], out_dir: Path) -> list[Path]:
    """Write ``lr_curves.png``, ``valid_loss.png`` and ``bleu.png`` (first seed's curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    groups = _by_label(results)
    paths = []

    for name, curve_of, ylabel in (
        ("lr_curves.png", lambda r: r.lr_curve, "learning rate"),
        ("valid_loss.png", lambda r: r.valid_curve, "valid loss (label-smoothed)"),
    ):
        figure, axes = plt.subplots(figsize=(8, 4.8))
        for label, group in groups.items():
            curve = curve_of(group[0])
            axes.plot(
                [u for u, _ in curve],
                [v for _, v in curve],
                label=label,
                linestyle="--" if "(" in label else "-",
                linewidth=1.6,
                marker="o" if name == "valid_loss.png" else None,
                markersize=4,
            )
        axes.set_xlabel("updates")
        axes.set_ylabel(ylabel)
        axes.set_title(f"{ylabel} per schedule (seed {min(r.seed for r in results)})")
        axes.legend()
        axes.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(out_dir / name, dpi=120)
        plt.close(figure)
        paths.append(out_dir / name)

    figure, axes = plt.subplots(figsize=(8, 4.8))
    labels = list(groups)
    means, errors = [], []
    for label in labels:
        values = [r.bleu_tokenized if r.bleu_tokenized is not None else float("nan") for r in groups[label]]
        means.append(statistics.mean(values))
        errors.append(statistics.stdev(values) if len(values) > 1 else 0.0)
    bars = axes.bar(labels, means, yerr=errors, capsize=4, color="tab:blue")
    axes.bar_label(bars, labels=[f"{m:.2f}" for m in means], padding=3)
    axes.set_ylabel("test BLEU (tokenised)")
    seeds = max(len(group) for group in groups.values())
    axes.set_title(f"test BLEU of the best-valid checkpoint (mean ± std over {seeds} seed{'s' * (seeds > 1)})")
    axes.set_ylim(0, max([m + e for m, e in zip(means, errors, strict=False) if not math.isnan(m)] + [1.0]) * 1.15)
    axes.tick_params(axis="x", rotation=20)
    figure.tight_layout()
    figure.savefig(out_dir / "bleu.png", dpi=120)
    plt.close(figure)
    paths.append(out_dir / "bleu.png")
    return paths
