"""Result types and formatting the recipes share; imports no task.

A recipe's runs are :class:`RunResult` records (one per schedule and seed), saved as JSON and
summarised as ``mean ± std`` over seeds.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class RunResult:
    """One training run of a translation recipe: its curves from fairseq's log and its test BLEU."""

    label: str
    seed: int
    wall_seconds: float
    updates: int
    best_valid_loss: float
    best_valid_ppl: float
    lr_curve: list[tuple[int, float]]
    valid_curve: list[tuple[int, float]]
    bleu_tokenized: float | None = None
    bleu_detokenized: float | None = None
    peak_lr: float | None = None
    examples: list[dict[str, str]] = field(default_factory=list)


def mean_std(values: Sequence[float | None], digits: int) -> str:
    """``"m ± s"`` over the values that are present (just ``m`` for one value, ``-`` for none)."""
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    if len(present) == 1:
        return f"{present[0]:.{digits}f}"
    return f"{statistics.mean(present):.{digits}f} ± {statistics.stdev(present):.{digits}f}"


def write_results_json(results: Sequence[RunResult], path: Path) -> None:
    path.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n", encoding="utf-8")


def read_results_json(path: Path) -> list[RunResult]:
    """The runs :func:`write_results_json` wrote (curves back as lists of pairs)."""
    return [
        RunResult(
            **{
                **record,
                "lr_curve": [tuple(p) for p in record["lr_curve"]],
                "valid_curve": [tuple(p) for p in record["valid_curve"]],
            }
        )
        for record in json.loads(path.read_text(encoding="utf-8"))
    ]
