"""Compare finished pretraining runs: MLM loss per phase, validation MLM loss / NSP accuracy, and
optimizer steps per second of each run against the first one.

    python -m scripts.bert.compare runs/bert-demo/knee runs/bert-demo/linear
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scripts.bert.pretraining_utils import format_comparison, run_summary


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Table of finished BERT pretraining runs (written by scripts/bert/pretrain.py)."
    )
    parser.add_argument(
        "runs", nargs="+", help="output dirs of pretrain.py; the first is the reference of the steps/s ratios"
    )
    parser.add_argument("--dry-run", action="store_true", help="print which files would be read and exit")
    args = parser.parse_args(argv)
    if args.dry_run:
        for run in args.runs:
            print(f"{run}: metrics.jsonl, run_config.json, phase1/final/phase_done.json, phase2/final/phase_done.json")
        return 0
    for run in args.runs:
        if not (Path(run) / "metrics.jsonl").is_file():
            parser.error(f"{run}: no metrics.jsonl (not an output dir of scripts/bert/pretrain.py)")
    print(format_comparison([run_summary(run) for run in args.runs]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
