"""The preparation path (raw readers, Moses, cleaning, joint BPE, fairseq-preprocess) on small
local samples laid out like the IWSLT'14 and WMT'14 downloads; no network."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from scripts.common import prepare

GERMAN = [
    "Das ist ein kleines Haus.",
    "Wir haben heute viel gelernt!",
    "Die Katze schläft auf dem Sofa.",
    "Ich danke Ihnen sehr herzlich.",
    "Das Wetter ist schön, oder?",
]
ENGLISH = [
    "This is a small house.",
    "We learned a lot today!",
    "The cat sleeps on the sofa.",
    "I thank you very much.",
    "The weather is nice, isn't it?",
]


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _iwslt_sample(orig: Path) -> None:
    base = orig / "de-en"
    for lang, lines in (("de", GERMAN), ("en", ENGLISH)):
        body = [f"{lines[i % 5]} ({i})" for i in range(46)]
        tags = [
            '<doc docid="1" genre="lectures">',
            "<url>http://www.ted.com/talks/x.html</url>",
            "<keywords>talks, science</keywords>",
            "<speaker>Someone</speaker>",
            "<talkid>1</talkid>",
            f"<title>{lines[0]}</title>",
            f"<description>{lines[1]}</description>",
        ]
        _write(base / f"train.tags.de-en.{lang}", tags + body + ["</doc>"])
        for name in ("TED.dev2010", "TEDX.dev2012", "TED.tst2010", "TED.tst2011", "TED.tst2012"):
            segments = [f'<seg id="{i}"> {line} </seg>' for i, line in enumerate(lines, 1)]
            _write(base / f"IWSLT14.{name}.de-en.{lang}.xml", ["<refset>", *segments, "</refset>"])


def test_iwslt14_reader_splits_like_fairseq(tmp_path):
    _iwslt_sample(tmp_path)
    raw = prepare.read_iwslt14(tmp_path)
    # title and description lines + 46 body lines = 48; lines 23 and 46 are valid.
    assert len(raw["train"][0]) == len(raw["train"][1]) == 48 - 2
    assert raw["valid"][1] == [f"{ENGLISH[20 % 5]} (20)", f"{ENGLISH[43 % 5]} (43)"]
    assert raw["train"][1][0] == ENGLISH[0] and raw["train"][1][1] == ENGLISH[1]
    assert len(raw["test"][0]) == 25 and raw["test"][0][0] == GERMAN[0]
    assert not any("<" in line for split in raw.values() for side in split for line in side)


def _wmt_sample(orig: Path) -> None:
    for corpus_name in prepare.WMT14_TRAIN_CORPORA:
        for lang, lines in (("en", ENGLISH), ("de", GERMAN)):
            _write(
                orig / "training" / f"{corpus_name}.{lang}",
                [f"{line} {i}" for i in range(40) for line in lines[:1]],
            )
    for name, lines in (("newstest2014-deen-src.en.sgm", ENGLISH), ("newstest2014-deen-ref.de.sgm", GERMAN)):
        _write(orig / "test-full" / name, [f'<seg id="{i}">{line}</seg>' for i, line in enumerate(lines, 1)])


def test_wmt14_reader(tmp_path):
    _wmt_sample(tmp_path)
    raw = prepare.read_wmt14(tmp_path)
    assert len(raw["train"][0]) == 120 - 1 and len(raw["valid"][0]) == 1
    assert raw["test"] == (ENGLISH, GERMAN)


def test_moses_preprocessor():
    lower = prepare.MosesPreprocessor("en", lowercase=True, aggressive_dash_splits=False, normalise_punctuation=False)
    assert lower("The weather is nice, isn't it?") == "the weather is nice , isn 't it ?"
    dash = prepare.MosesPreprocessor("en", lowercase=False, aggressive_dash_splits=True, normalise_punctuation=True)
    assert dash("A well-known «test»") == 'A well @-@ known " test "'


def test_clean_parallel_applies_ratio_and_length():
    source = ["a b c", "a", "a b c d e f g", "x " * 10]
    target = ["a b c", "a b c d", "a b", "y " * 10]
    assert prepare.clean_parallel(source, target, ratio=1.5, max_tokens=9) == (["a b c"], ["a b c"])


@pytest.mark.slow
def test_prepare_path_binarises_a_sample(tmp_path):
    _iwslt_sample(tmp_path / "orig")
    spec = dataclasses.replace(prepare.IWSLT14_SPEC, bpe_symbols=40)
    data_bin = prepare.prepare(prepare.read_iwslt14(tmp_path / "orig"), spec, tmp_path / "work")
    text = tmp_path / "work" / "text"
    assert len((text / "code").read_text().splitlines()) > 10
    train_en = prepare.read_lines(text / "train.en")
    assert train_en[0].replace("@@ ", "") == "this is a small house ."
    assert any("@@" in line for line in train_en)
    for split in ("train", "valid", "test"):
        for lang in ("de", "en"):
            assert (data_bin / f"{split}.de-en.{lang}.bin").stat().st_size > 0
    assert (data_bin / "dict.de.txt").exists() and (data_bin / "dict.en.txt").exists()


def test_prepare_task_refuses_a_direction_the_corpus_does_not_hold(tmp_path):
    spec = dataclasses.replace(prepare.DEMO_SPEC, source_lang="fr")
    with pytest.raises(ValueError, match="spec translates fr→en, but demo holds de-en pairs"):
        prepare.prepare_task("demo", spec, tmp_path, orig_dir=tmp_path)
    with pytest.raises(ValueError, match="task must be one of"):
        prepare.prepare_task("europarl", prepare.DEMO_SPEC, tmp_path, orig_dir=tmp_path)


@pytest.mark.slow
def test_preparation_reruns_after_a_half_written_data_bin(tmp_path):
    """An interrupted preparation leaves a dictionary in data-bin (fairseq-preprocess writes it first) and
    no raw test references; fairseq-preprocess refuses to overwrite a dictionary, so a rerun that did not
    clear the half-written outputs would stop with FileExistsError."""
    data_dir, spec = tmp_path / "prepared", dataclasses.replace(prepare.DEMO_SPEC, bpe_symbols=100)
    limits = {"train_pairs": 200, "heldout_pairs": 12}
    data_bin, references = prepare.prepare_task("demo", spec, data_dir, orig_dir=tmp_path / "orig", **limits)
    (data_dir / "raw-test.en").unlink()
    for name in ("train.de-en.de.bin", "train.de-en.de.idx"):
        (data_bin / name).unlink()
    assert (data_bin / "dict.de.txt").exists() and (data_dir / "prepared.json").exists()

    again, references_again = prepare.prepare_task("demo", spec, data_dir, orig_dir=tmp_path / "orig", **limits)
    assert again == data_bin and references_again == references and len(references) == 12
    assert (data_bin / "train.de-en.de.bin").stat().st_size > 0 and (data_dir / "raw-test.en").exists()
    stamped = (data_dir / "prepared.json").stat().st_mtime_ns
    assert prepare.prepare_task("demo", spec, data_dir, orig_dir=tmp_path / "orig", **limits)[1] == references
    assert (data_dir / "prepared.json").stat().st_mtime_ns == stamped  # prepared data is reused as it is


@pytest.mark.slow
def test_prepare_task_turns_wmt14_around_for_de_en(tmp_path, monkeypatch):
    """MAT trains WMT'14 De→En from the En-De download: the same routine, the pairs turned around."""
    _wmt_sample(tmp_path / "orig")
    monkeypatch.setattr(prepare, "download_wmt14", lambda orig_dir: orig_dir)
    spec = dataclasses.replace(prepare.WMT14_SPEC, source_lang="de", target_lang="en", bpe_symbols=30)
    data_bin, references = prepare.prepare_task("wmt14", spec, tmp_path / "prepared", orig_dir=tmp_path / "orig")
    assert references == ENGLISH
    text = tmp_path / "prepared" / "text"
    assert [line.replace("@@ ", "") for line in prepare.read_lines(text / "test.de")][0] == "Das ist ein kleines Haus ."
    assert (data_bin / "test.de-en.de.bin").stat().st_size > 0 and (data_bin / "dict.en.txt").exists()
