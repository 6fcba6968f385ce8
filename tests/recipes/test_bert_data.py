"""BERT pretraining data: real prose shipped on PyPI -> MLM + NSP examples, checked example by example."""

import importlib
import itertools
import json
import logging
import random
from collections import Counter

import pytest

from scripts.bert import pretraining_utils as bp
from scripts.common.hf_data import minilm_model_dir

SEQ_LENGTHS = (32, 64)
MAX_PREDICTIONS = (5, 10)


@pytest.fixture(scope="module")
def tokenizer():
    return bp.load_tokenizer(minilm_model_dir() / "vocab.txt")


@pytest.fixture(scope="module")
def built(tmp_path_factory, tokenizer):
    out = tmp_path_factory.mktemp("bert-data")
    documents = bp.load_documents(sources=["kjv"], max_documents=60, cache_dir=out / "cache")
    summary = bp.build_pretraining_data(
        documents,
        tokenizer,
        out,
        seq_lengths=SEQ_LENGTHS,
        max_predictions=MAX_PREDICTIONS,
        validation_fraction=0.1,
        seed=7,
    )
    return out, summary


def phase_examples(out, phase):
    return bp.load_phase_data(out, phase)["train"]


def test_the_vocab_is_the_30522_token_uncased_bert_vocab(tokenizer):
    assert len(tokenizer) == 30522
    assert tokenizer("In the beginning God created")["input_ids"] == [101, 1999, 1996, 2927, 2643, 2580, 102]


def test_phases_are_saved_with_train_and_validation_and_reload_memory_mapped(built):
    out, summary = built
    assert (out / "vocab.txt").read_text().splitlines() == (minilm_model_dir() / "vocab.txt").read_text().splitlines()
    config = json.loads((out / "data_config.json").read_text())
    assert [phase["seq_length"] for phase in config["phases"]] == list(SEQ_LENGTHS)
    assert summary["documents"] == {"train": 54, "test": 6}
    for phase in (1, 2):
        data = bp.load_phase_data(out, phase)
        assert set(data) == {"train", "validation"} and len(data["train"]) > 200 and len(data["validation"]) > 10
        assert data["train"].cache_files, "reloaded data should be memory-mapped Arrow files"


@pytest.mark.parametrize("phase", [1, 2])
def test_no_sequence_is_longer_than_its_phase_and_segments_are_well_formed(built, tokenizer, phase):
    out, _ = built
    length = SEQ_LENGTHS[phase - 1]
    examples = phase_examples(out, phase)
    lengths = [len(ids) for ids in examples["input_ids"]]
    assert max(lengths) == length  # full-length pairs are made ...
    assert min(lengths) < length  # ... and the short_seq_prob shorter ones
    for example in examples:
        ids, types, labels = example["input_ids"], example["token_type_ids"], example["labels"]
        assert len(ids) == len(types) == len(labels)
        first_b = types.index(1)
        assert types == [0] * first_b + [1] * (len(ids) - first_b)
        assert ids[0] == tokenizer.cls_token_id and ids[first_b - 1] == ids[-1] == tokenizer.sep_token_id
        for special in (0, first_b - 1, len(ids) - 1):
            assert labels[special] == -100, "special tokens are never predicted"
        assert first_b - 1 >= 2 and len(ids) - first_b >= 2, "both segments hold at least one token"


@pytest.mark.parametrize("phase", [1, 2])
def test_labels_only_at_masked_positions_and_the_80_10_10_split(built, tokenizer, phase):
    out, _ = built
    examples = phase_examples(out, phase)
    kinds = Counter()
    for example in examples:
        ids, labels = example["input_ids"], example["labels"]
        predicted = [i for i, label in enumerate(labels) if label != -100]
        assert len(predicted) == min(MAX_PREDICTIONS[phase - 1], max(1, round(0.15 * len(ids))))
        assert all(ids[i] != tokenizer.mask_token_id for i, label in enumerate(labels) if label == -100)
        for i in predicted:
            kinds["mask" if ids[i] == tokenizer.mask_token_id else "same" if ids[i] == labels[i] else "random"] += 1
    total = sum(kinds.values())
    assert total > 2000
    assert kinds["mask"] / total == pytest.approx(0.8, abs=0.03)
    assert kinds["same"] / total == pytest.approx(0.1, abs=0.03)
    assert kinds["random"] / total == pytest.approx(0.1, abs=0.03)


@pytest.mark.parametrize("phase", [1, 2])
def test_next_sentence_labels_are_about_half_random(built, phase):
    out, _ = built
    labels = phase_examples(out, phase)["next_sentence_label"]
    assert set(labels) == {0, 1}
    assert sum(labels) / len(labels) == pytest.approx(0.5, abs=0.1)


def test_an_is_next_pair_is_two_consecutive_stretches_of_one_document(tokenizer):
    special = bp.SpecialIds.from_tokenizer(tokenizer)
    document = [[1000 + 10 * s + t for t in range(6)] for s in range(8)]  # 8 sentences of 6 distinct ids
    documents = [{"sentences": document}, {"sentences": [[5000 + t for t in range(6)] for _ in range(8)]}]
    config = bp.MaskingConfig(
        seq_length=64, max_predictions=1, masked_lm_prob=1e-9, short_seq_prob=0.0
    )  # no truncation
    seen = Counter()
    for seed in range(40):
        for example in bp.document_examples(document, 0, documents, 2, special, config, random.Random(seed)):
            ids = [
                label if label != -100 else token
                for token, label in zip(example["input_ids"], example["labels"], strict=True)
            ]
            first_b = example["token_type_ids"].index(1)
            a, b = ids[1 : first_b - 1], ids[first_b:-1]
            seen[example["next_sentence_label"]] += 1
            flat = [token for sentence in document for token in sentence]
            start = flat.index(a[0])
            assert flat[start : start + len(a)] == a, "A is a stretch of the document"
            if example["next_sentence_label"] == 0:
                assert len(a) % 6 == 0 and len(b) % 6 == 0, "whole sentences (nothing to truncate)"
                assert flat[start + len(a) : start + len(a) + len(b)] == b, "B continues A"
            else:
                assert all(token >= 5000 for token in b), "B comes from the other document"
    assert seen[0] and seen[1]


def test_examples_do_not_depend_on_num_proc(tmp_path, tokenizer):
    documents = bp.load_documents(sources=["kjv"], max_documents=12, cache_dir=tmp_path / "cache")
    one = bp.build_pretraining_data(
        documents, tokenizer, tmp_path / "one", seq_lengths=(32, 48), max_predictions=(5, 8), num_proc=None
    )
    two = bp.build_pretraining_data(
        documents, tokenizer, tmp_path / "two", seq_lengths=(32, 48), max_predictions=(5, 8), num_proc=2
    )
    assert one == two
    for phase in (1, 2):
        assert phase_examples(tmp_path / "one", phase).to_dict() == phase_examples(tmp_path / "two", phase).to_dict()


def test_wikipedia_sample_is_plain_prose_without_markup():
    articles = list(itertools.islice(bp.wikipedia_sample_texts(), 3))
    assert len(articles) == 3
    assert articles[0].startswith("Anarchism is a political philosophy")
    for text in articles:
        assert len(text.split()) > 500
        for markup in ("[[", "]]", "{{", "}}", "<ref", "'''", "==", "[http"):
            assert markup not in text
    sentences = bp.split_sentences(articles[0].splitlines()[0])
    assert len(sentences) >= 3 and all(sentence[-1] in '.!?"' for sentence in sentences[:-1])


def test_lee_and_kjv_sources_and_local_text_files(tmp_path):
    lee = list(bp.lee_texts())
    assert len(lee) == 300 and lee[0].startswith("Hundreds of people have been forced to vacate their homes")
    chapters = list(itertools.islice(bp.kjv_texts(), 2))
    assert chapters[0].splitlines()[0] == "In the beginning God created the heaven and the earth."
    assert len(chapters[0].splitlines()) == 31 and chapters[1].startswith(
        "Thus the heavens and the earth were finished"
    )
    path = tmp_path / "corpus.txt"
    path.write_text("First sentence. Second one.\nA line.\n\n\nOther document here.\n")
    assert list(bp.text_file_texts(path)) == ["First sentence. Second one.\nA line.", "Other document here."]
    documents = bp.load_documents(text_files=[path], cache_dir=tmp_path / "cache")
    assert documents["text"] == ["First sentence. Second one.\nA line.", "Other document here."]
    with pytest.raises(FileNotFoundError, match="--text-file"):
        bp.load_documents(text_files=[tmp_path / "missing.txt"])
    with pytest.raises(ValueError, match="unknown text source"):
        list(bp.offline_texts("bookcorpus"))


def test_a_missing_vocab_names_the_option(tmp_path):
    with pytest.raises(FileNotFoundError, match="--vocab-file"):
        bp.load_tokenizer(tmp_path / "vocab.txt")


def test_a_datasets_builder_with_a_text_column(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(
        "\n".join(json.dumps({"id": i, "body": text}) for i, text in enumerate(itertools.islice(bp.lee_texts(), 5)))
    )
    documents = bp.load_documents(
        hub=[bp.HubSource("json", data_files=str(path), text_column="body")], cache_dir=tmp_path / "cache"
    )
    assert documents.column_names == ["text", "source"] and len(documents) == 5
    assert documents[0]["text"].startswith("Hundreds of people") and documents[0]["source"] == "json:docs.jsonl"
    with pytest.raises(ValueError, match="--text-column 'text'"):
        bp.load_documents(hub=[bp.HubSource("json", data_files=str(path))], cache_dir=tmp_path / "cache")


def test_several_hub_datasets_are_concatenated_with_their_shares_logged(tmp_path, caplog):
    """Two datasets with other text columns (as Wikipedia + BookCorpus): concatenated in order, each
    document labelled with its dataset, and each one's documents and characters reported."""
    news, bible = tmp_path / "news.jsonl", tmp_path / "bible.jsonl"
    news_texts, bible_texts = list(itertools.islice(bp.lee_texts(), 6)), list(itertools.islice(bp.kjv_texts(), 3))
    news.write_text("\n".join(json.dumps({"body": text}) for text in news_texts))
    bible.write_text("\n".join(json.dumps({"text": text}) for text in bible_texts))
    out = tmp_path / "data"
    argv = ["--output-dir", str(out), "--source", "--hub-dataset", "json", "json"]
    argv += ["--hub-data-files", str(news), str(bible), "--text-column", "body", "text", "--seq-length", "32", "64"]
    argv += ["--max-predictions", "5", "10", "--validation-fraction", "0.2"]
    with caplog.at_level(logging.INFO):
        assert importlib.import_module("scripts.bert.prepare_data").main(argv) == 0
    sources = json.loads((out / "data_config.json").read_text())["sources"]
    assert list(sources) == ["json:news.jsonl", "json:bible.jsonl"]
    assert [sources[s]["documents"] for s in sources] == [6, 3]
    characters = [sum(map(len, news_texts)), sum(map(len, bible_texts))]
    assert [sources[s]["characters"] for s in sources] == characters
    assert sources["json:news.jsonl"]["share_of_characters"] == pytest.approx(characters[0] / sum(characters))
    assert sum(s["share_of_documents"] for s in sources.values()) == pytest.approx(1.0)
    assert "source json:bible.jsonl: 3 documents (33.3%)" in caplog.text


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--hub-dataset", "a", "b", "c", "--hub-config", "x", "y"], "--hub-config takes one value for all"),
        (["--hub-dataset", "a", "b", "--text-column", "t", "u", "v"], "--text-column takes one value for all"),
        (["--source", "kjv", "--hub-data-files", "x.jsonl"], "--hub-data-files applies to --hub-dataset"),
    ],
)
def test_per_dataset_options_must_pair_with_the_datasets(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit):
        importlib.import_module("scripts.bert.prepare_data").parse_args(["--output-dir", str(tmp_path), *extra])
    assert message in capsys.readouterr().err
