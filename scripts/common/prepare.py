"""Text preparation shared by the translation recipes: Moses tokenisation (sacremoses), corpus
cleaning, joint BPE (subword-nmt) and binarisation (``fairseq-preprocess``).

This is the path of fairseq's ``examples/translation/prepare-iwslt14.sh`` and
``prepare-wmt14en2de.sh`` in Python, used unchanged by the IWSLT'14, WMT'14, demo and MAT recipes;
only the raw readers (:func:`read_iwslt14`, :func:`read_wmt14`, :func:`read_embedded_corpus`)
and the :class:`PreparationSpec` differ. :func:`prepare_task` is the one routine the recipes call:
a task's data in either direction, prepared once.
"""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import subprocess
import tarfile
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sacremoses import MosesPunctNormalizer, MosesTokenizer
from subword_nmt.apply_bpe import BPE
from subword_nmt.learn_bpe import learn_bpe
from tqdm import tqdm

from scripts.common import embedded_corpus
from scripts.common.fairseq_cli import fairseq_command

logger = logging.getLogger(__name__)

Parallel = tuple[list[str], list[str]]


@dataclass(frozen=True)
class PreparationSpec:
    """How one task's text is turned into BPE'd, binarised fairseq data."""

    source_lang: str
    target_lang: str
    bpe_symbols: int
    lowercase: bool
    aggressive_dash_splits: bool
    normalise_punctuation: bool
    joined_dictionary: bool
    clean_ratio: float = 1.5
    clean_max_tokens: int = 175
    clean_after_bpe: bool = False


IWSLT14_SPEC = PreparationSpec(
    "de",
    "en",
    bpe_symbols=10_000,
    lowercase=True,
    aggressive_dash_splits=False,
    normalise_punctuation=False,
    joined_dictionary=False,
)
WMT14_SPEC = PreparationSpec(
    "en",
    "de",
    bpe_symbols=40_000,
    lowercase=False,
    aggressive_dash_splits=True,
    normalise_punctuation=True,
    joined_dictionary=True,
    clean_max_tokens=250,
    clean_after_bpe=True,
)
DEMO_SPEC = PreparationSpec(
    "de",
    "en",
    bpe_symbols=2_000,
    lowercase=False,
    aggressive_dash_splits=False,
    normalise_punctuation=False,
    joined_dictionary=True,
)

IWSLT14_URL = "http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz"
WMT14_URLS = (
    "http://statmt.org/wmt13/training-parallel-europarl-v7.tgz",
    "http://statmt.org/wmt13/training-parallel-commoncrawl.tgz",
    "http://data.statmt.org/wmt17/translation-task/training-parallel-nc-v12.tgz",
    "http://data.statmt.org/wmt17/translation-task/dev.tgz",
    "http://statmt.org/wmt14/test-full.tgz",
)
WMT14_TRAIN_CORPORA = ("europarl-v7.de-en", "commoncrawl.de-en", "news-commentary-v12.de-en")


class MosesPreprocessor:
    """Moses punctuation normalisation (optional), tokenisation and lowercasing for one language."""

    def __init__(
        self, lang: str, *, lowercase: bool, aggressive_dash_splits: bool, normalise_punctuation: bool
    ) -> None:
        self.tokenizer = MosesTokenizer(lang=lang)
        self.normaliser = (
            MosesPunctNormalizer(lang=lang, post_remove_control_chars=True) if normalise_punctuation else None
        )
        self.lowercase = lowercase
        self.aggressive_dash_splits = aggressive_dash_splits

    def __call__(self, line: str) -> str:
        if self.normaliser is not None:
            line = self.normaliser.normalize(line)
        text = self.tokenizer.tokenize(
            line.strip(), aggressive_dash_splits=self.aggressive_dash_splits, escape=False, return_str=True
        )
        return text.lower() if self.lowercase else text


def tokenize(lines: Sequence[str], preprocessor: MosesPreprocessor, description: str) -> list[str]:
    return [preprocessor(line) for line in tqdm(lines, desc=description, unit="line", leave=False, mininterval=2.0)]


def clean_parallel(
    source: Sequence[str], target: Sequence[str], *, ratio: float, min_tokens: int = 1, max_tokens: int
) -> Parallel:
    """Keep pairs whose token counts lie in [min, max] with a ratio at most ``ratio`` (the rule of
    Moses' ``clean-corpus-n.perl``)."""
    kept_source, kept_target = [], []
    for src, tgt in zip(source, target, strict=True):
        n_src, n_tgt = len(src.split()), len(tgt.split())
        if not (min_tokens <= n_src <= max_tokens and min_tokens <= n_tgt <= max_tokens):
            continue
        if n_src / n_tgt > ratio or n_tgt / n_src > ratio:
            continue
        kept_source.append(src)
        kept_target.append(tgt)
    return kept_source, kept_target


def learn_joint_bpe(texts: Iterable[Sequence[str]], codes_path: Path, num_symbols: int) -> BPE:
    """Learn ``num_symbols`` BPE merges on the concatenation of ``texts`` (joint BPE, as fairseq's
    prepare scripts do) and return the segmenter."""
    joined = io.StringIO("".join(line + "\n" for lines in texts for line in lines))
    with open(codes_path, "w", encoding="utf-8") as codes:
        learn_bpe(joined, codes, num_symbols)
    with open(codes_path, encoding="utf-8") as codes:
        return BPE(codes)


def write_lines(path: Path, lines: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(line + "\n" for line in lines)


def read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle]


def prepare_text(raw: dict[str, Parallel], spec: PreparationSpec, out_dir: Path) -> Path:
    """Tokenise, clean, learn and apply joint BPE; write ``{split}.{lang}`` and ``code`` to
    ``out_dir`` and return it. ``raw`` maps train/valid/test to (source lines, target lines)."""
    preprocessors = {
        lang: MosesPreprocessor(
            lang,
            lowercase=spec.lowercase,
            aggressive_dash_splits=spec.aggressive_dash_splits,
            normalise_punctuation=spec.normalise_punctuation,
        )
        for lang in (spec.source_lang, spec.target_lang)
    }
    tokenized = {}
    for split, (source, target) in raw.items():
        tokenized[split] = (
            tokenize(source, preprocessors[spec.source_lang], f"tokenise {split}.{spec.source_lang}"),
            tokenize(target, preprocessors[spec.target_lang], f"tokenise {split}.{spec.target_lang}"),
        )
    if not spec.clean_after_bpe:
        tokenized["train"] = clean_parallel(
            *tokenized["train"], ratio=spec.clean_ratio, max_tokens=spec.clean_max_tokens
        )
    logger.info("learning %d joint BPE merges on %d training pairs", spec.bpe_symbols, len(tokenized["train"][0]))
    out_dir.mkdir(parents=True, exist_ok=True)
    bpe = learn_joint_bpe(tokenized["train"], out_dir / "code", spec.bpe_symbols)
    for split, (source, target) in tokenized.items():
        source = [bpe.process_line(line) for line in source]
        target = [bpe.process_line(line) for line in target]
        if spec.clean_after_bpe and split in ("train", "valid"):
            source, target = clean_parallel(source, target, ratio=spec.clean_ratio, max_tokens=spec.clean_max_tokens)
        write_lines(out_dir / f"{split}.{spec.source_lang}", source)
        write_lines(out_dir / f"{split}.{spec.target_lang}", target)
        logger.info("%s: %d pairs", split, len(source))
    return out_dir


def binarize_command(text_dir: Path, dest_dir: Path, spec: PreparationSpec, workers: int = 1) -> list[str]:
    command = fairseq_command("preprocess") + [
        "--source-lang",
        spec.source_lang,
        "--target-lang",
        spec.target_lang,
        "--trainpref",
        str(text_dir / "train"),
        "--validpref",
        str(text_dir / "valid"),
        "--testpref",
        str(text_dir / "test"),
        "--destdir",
        str(dest_dir),
        "--workers",
        str(workers),
    ]
    return command + (["--joined-dictionary"] if spec.joined_dictionary else [])


def binarize(text_dir: Path, dest_dir: Path, spec: PreparationSpec, workers: int = 1) -> Path:
    """Run ``fairseq-preprocess`` on the BPE'd text; return the data-bin directory."""
    command = binarize_command(text_dir, dest_dir, spec, workers)
    logger.info("running %s", " ".join(command))
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return dest_dir


def prepare(raw: dict[str, Parallel], spec: PreparationSpec, work_dir: Path, workers: int = 1) -> Path:
    """The whole path: text under ``work_dir/text``, binarised data under ``work_dir/data-bin``."""
    text_dir = prepare_text(raw, spec, work_dir / "text")
    return binarize(text_dir, work_dir / "data-bin", spec, workers)


# --- raw readers -------------------------------------------------------------------------------


def read_embedded_corpus(
    corpus_dir: Path = embedded_corpus.CORPUS_DIR,
    max_train_pairs: int | None = None,
    max_heldout_pairs: int | None = None,
) -> dict[str, Parallel]:
    """The committed De→En gettext corpus as (German, English) line lists per split, optionally
    only the first pairs of train and of valid/test."""
    raw = {}
    for split in embedded_corpus.SPLITS:
        pairs = embedded_corpus.read_split(corpus_dir, split)
        limit = max_train_pairs if split == "train" else max_heldout_pairs
        if limit is not None:
            pairs = pairs[:limit]
        raw[split] = ([p.de for p in pairs], [p.en for p in pairs])
    return raw


def download(url: str, orig_dir: Path) -> Path:
    """Download ``url`` into ``orig_dir`` (once) and unpack it there."""
    orig_dir.mkdir(parents=True, exist_ok=True)
    archive = orig_dir / url.rsplit("/", 1)[-1]
    if not archive.exists():
        logger.info("downloading %s", url)
        partial = archive.with_suffix(archive.suffix + ".part")
        with urllib.request.urlopen(url) as response, open(partial, "wb") as handle:
            shutil.copyfileobj(response, handle)
        partial.rename(archive)
    with tarfile.open(archive) as tar:
        tar.extractall(orig_dir, filter="data")
    return orig_dir


_TED_TAG_LINE = re.compile(r"<(url|talkid|keywords|speaker|reviewer|translator|doc|/doc)\b")
_TED_TITLE_TAGS = re.compile(r"</?(title|description)>")
_SEGMENT = re.compile(r'<seg id="?\d+"?>\s*(.*?)\s*</seg>')


def _ted_train_lines(path: Path) -> list[str]:
    return [_TED_TITLE_TAGS.sub("", line.rstrip("\n")) for line in read_lines(path) if not _TED_TAG_LINE.search(line)]


def _segments(path: Path) -> list[str]:
    return [match.group(1).replace("\u2019", "'") for line in read_lines(path) if (match := _SEGMENT.search(line))]


def read_iwslt14(orig_dir: Path) -> dict[str, Parallel]:
    """IWSLT'14 De→En as ``prepare-iwslt14.sh`` splits it: every 23rd training line is valid,
    test is dev2010 + dev2012 + tst2010-2012 (reads ``orig_dir/de-en``)."""
    base = orig_dir / "de-en"
    german, english = (_ted_train_lines(base / f"train.tags.de-en.{lang}") for lang in ("de", "en"))
    if len(german) != len(english):
        raise ValueError(f"{base}: train.tags has {len(german)} German but {len(english)} English lines")
    train = ([g for i, g in enumerate(german, 1) if i % 23], [e for i, e in enumerate(english, 1) if i % 23])
    valid = ([g for i, g in enumerate(german, 1) if not i % 23], [e for i, e in enumerate(english, 1) if not i % 23])
    test_sets = ("TED.dev2010", "TEDX.dev2012", "TED.tst2010", "TED.tst2011", "TED.tst2012")
    german_test, english_test = (
        [line for name in test_sets for line in _segments(base / f"IWSLT14.{name}.de-en.{lang}.xml")]
        for lang in ("de", "en")
    )
    return {"train": train, "valid": valid, "test": (german_test, english_test)}


def read_wmt14(orig_dir: Path) -> dict[str, Parallel]:
    """WMT'14 En→De as ``prepare-wmt14en2de.sh`` builds it: Europarl v7 + Common Crawl + News
    Commentary v12 for training, every 100th line as valid, newstest2014 as test."""
    english: list[str] = []
    german: list[str] = []
    for name in WMT14_TRAIN_CORPORA:
        for lang, lines in (("en", english), ("de", german)):
            matches = sorted(orig_dir.rglob(f"{name}.{lang}"))
            if not matches:
                raise FileNotFoundError(f"{name}.{lang} not found under {orig_dir}; run the download first")
            lines.extend(read_lines(matches[0]))
    train = ([e for i, e in enumerate(english, 1) if i % 100], [g for i, g in enumerate(german, 1) if i % 100])
    valid = ([e for i, e in enumerate(english, 1) if not i % 100], [g for i, g in enumerate(german, 1) if not i % 100])
    test_dir = orig_dir / "test-full"
    test = (_segments(test_dir / "newstest2014-deen-src.en.sgm"), _segments(test_dir / "newstest2014-deen-ref.de.sgm"))
    return {"train": train, "valid": valid, "test": test}


def download_iwslt14(orig_dir: Path) -> Path:
    download(IWSLT14_URL, orig_dir)
    if not (orig_dir / "de-en" / "train.tags.de-en.de").exists():
        raise FileNotFoundError(f"{IWSLT14_URL} did not unpack to {orig_dir}/de-en/train.tags.de-en.de")
    return orig_dir


def download_wmt14(orig_dir: Path) -> Path:
    for url in WMT14_URLS:
        download(url, orig_dir)
    return orig_dir


# --- one task's data, prepared once --------------------------------------------------------------

# The direction in which each task's raw reader returns its pairs.
TASK_DIRECTIONS = {"iwslt14": ("de", "en"), "wmt14": ("en", "de"), "demo": ("de", "en")}


def read_task(
    task: str, orig_dir: Path, train_pairs: int | None = None, heldout_pairs: int | None = None
) -> dict[str, Parallel]:
    """The raw pairs of ``task`` in its reader's direction (:data:`TASK_DIRECTIONS`): the embedded
    corpus (optionally only its first pairs), or IWSLT'14 / WMT'14 downloaded once into ``orig_dir``."""
    if task == "demo":
        return read_embedded_corpus(max_train_pairs=train_pairs, max_heldout_pairs=heldout_pairs)
    if task == "iwslt14":
        return read_iwslt14(download_iwslt14(orig_dir))
    if task == "wmt14":
        return read_wmt14(download_wmt14(orig_dir))
    raise ValueError(f"task must be one of {', '.join(TASK_DIRECTIONS)}, got {task!r}")


def prepare_task(
    task: str,
    spec: PreparationSpec,
    data_dir: Path,
    *,
    orig_dir: Path,
    train_pairs: int | None = None,
    heldout_pairs: int | None = None,
) -> tuple[Path, list[str]]:
    """Prepare ``task``'s data in ``data_dir`` in the direction of ``spec`` (its reader's, or the
    reverse: MAT reads WMT'14 En-De and trains De→En) and return the data-bin directory and the raw
    test references.

    ``prepared.json`` (task, spec, pair limits) marks finished data: a rerun with the same stamp reuses
    it. Otherwise whatever an earlier preparation left (other settings, or the half-written outputs of
    an interrupted one) is removed first, so that ``fairseq-preprocess`` starts from nothing."""
    native = TASK_DIRECTIONS.get(task)
    if native is None:
        raise ValueError(f"task must be one of {', '.join(TASK_DIRECTIONS)}, got {task!r}")
    direction = (spec.source_lang, spec.target_lang)
    if direction not in (native, native[::-1]):
        raise ValueError(f"spec translates {'→'.join(direction)}, but {task} holds {'-'.join(native)} pairs")
    data_bin, text_dir = data_dir / "data-bin", data_dir / "text"
    raw_test = data_dir / f"raw-test.{spec.target_lang}"
    stamp_path = data_dir / "prepared.json"
    stamp = {"task": task, "spec": repr(spec), "train_pairs": train_pairs, "heldout_pairs": heldout_pairs}
    if (
        stamp_path.exists()
        and json.loads(stamp_path.read_text(encoding="utf-8")) == stamp
        and (data_bin / f"dict.{spec.target_lang}.txt").exists()
        and raw_test.exists()
    ):
        logger.info("reusing the prepared data in %s", data_dir)
        return data_bin, read_lines(raw_test)
    stamp_path.unlink(missing_ok=True)
    for stale in (data_bin, text_dir):
        if stale.exists():
            logger.info("removing %s, left by an earlier preparation", stale)
            shutil.rmtree(stale)
    raw = read_task(task, orig_dir, train_pairs, heldout_pairs)
    if direction != native:
        raw = {split: (target, source) for split, (source, target) in raw.items()}
    prepare(raw, spec, data_dir)
    write_lines(raw_test, raw["test"][1])
    stamp_path.write_text(json.dumps(stamp) + "\n", encoding="utf-8")
    return data_bin, raw["test"][1]
