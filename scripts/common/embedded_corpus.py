"""The embedded German→English corpus (``data/deen-gettext/`` in this package) and its file format.

Reading it needs only the standard library; building it (:mod:`scripts.translation.corpus`) needs
``polib`` and the network. Each split is two gzipped UTF-8 files, ``{split}.de.gz`` and
``{split}.en.gz``; line ``i`` of the two is one pair.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

CORPUS_DIR = Path(__file__).resolve().parents[1] / "translation" / "data" / "deen-gettext"
SPLITS = ("train", "valid", "test")
LANGUAGES = ("de", "en")


@dataclass(frozen=True)
class Pair:
    de: str
    en: str


def write_gzip_lines(path: Path, lines: Iterable[str]) -> None:
    """Write UTF-8 lines gzipped with no timestamp or file name, so the bytes are reproducible."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as packed,
    ):
        packed.write(data)


def read_gzip_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return handle.read().splitlines()


def write_splits(splits: dict[str, list[Pair]], out_dir: Path) -> None:
    """Write ``{split}.{de,en}.gz``: line ``i`` of the two files is one pair."""
    for name, pairs in splits.items():
        write_gzip_lines(out_dir / f"{name}.de.gz", (p.de for p in pairs))
        write_gzip_lines(out_dir / f"{name}.en.gz", (p.en for p in pairs))


def read_split(corpus_dir: Path, split: str) -> list[Pair]:
    """Read one split of a corpus written by :func:`write_splits`."""
    german = read_gzip_lines(corpus_dir / f"{split}.de.gz")
    english = read_gzip_lines(corpus_dir / f"{split}.en.gz")
    if len(german) != len(english):
        raise ValueError(f"{corpus_dir}/{split}: {len(german)} German lines but {len(english)} English")
    return [Pair(de, en) for de, en in zip(german, english, strict=True)]
