"""Compare finished SQuAD runs: a Markdown table of EM/F1 per run and one PNG of their LR and dev F1.

python -m scripts.squad.compare runs/squad/knee/results.json runs/squad/linear/results.json --plot runs/squad/compare.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scripts.squad import squad_utils as squad


def results_files(path: Path) -> list[Path]:
    """A results.json, a run folder, or the folder of a --seeds run (its seed<N>/results.json)."""
    if not path.is_dir():
        return [path]
    if (path / "results.json").is_file():
        return [path / "results.json"]
    return sorted(path.glob("seed*/results.json")) or [path / "results.json"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Table and plot of SQuAD runs written by finetune.py / train_trainer.py."
    )
    parser.add_argument(
        "results", nargs="+", type=Path, help="results.json files, their run folders, or the folders of --seeds runs"
    )
    parser.add_argument(
        "--plot", type=Path, default=None, help="also draw the LR and dev F1 of every run into this PNG"
    )
    parser.add_argument("--dry-run", action="store_true", help="list the files that would be read and exit")
    args = parser.parse_args(argv)
    paths = [found for path in args.results for found in results_files(path)]
    if args.dry_run:
        print("\n".join(f"read {path}" for path in paths) + (f"\nplot {args.plot}" if args.plot else ""))
        return 0
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        parser.error(f"no such results file: {', '.join(missing)}")
    results = [json.loads(path.read_text(encoding="utf-8")) for path in paths]
    print(squad.compare_table(results))
    if args.plot:
        squad.plot_comparison(args.plot, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
