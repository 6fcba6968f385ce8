"""The demo's table and plots again, from a finished ``--work-dir``'s results.json.

python -m scripts.translation.report runs/demo
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from scripts.common.report import format_table, write_plots
from scripts.common.results import read_results_json


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.translation.report", description=__doc__.splitlines()[0])
    parser.add_argument("work_dir", type=Path, help="a demo's --work-dir (holds results.json)")
    args = parser.parse_args(argv)
    results = read_results_json(args.work_dir / "results.json")
    print(format_table(results))
    for path in write_plots(results, args.work_dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
