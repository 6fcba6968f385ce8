"""The HF demo end to end at a tiny size: real MiniLM, real KJV verses, a real Trainer per schedule."""

import json

import pytest

from knee_plugins.recipes.hf_data import SECTION_NAMES, kjv_verses, split_verses
from knee_plugins.recipes.hf_demo import main

pytestmark = pytest.mark.slow


def test_offline_data_is_the_whole_bible_with_six_sections():
    verses = kjv_verses()
    assert len(verses) == 31103
    assert (verses[0].book, SECTION_NAMES[verses[0].label]) == ("Genesis", "law")
    assert (verses[-1].book, SECTION_NAMES[verses[-1].label]) == ("Revelation", "epistles_revelation")
    train, held_out = split_verses(verses, num_eval=100, num_train=None, seed=1)
    assert len(train) + len(held_out) == len(verses) and not set(map(id, train)) & set(map(id, held_out))


def test_demo_writes_table_plots_and_results(tmp_path, capsys):
    results = main(
        [
            "--output-dir",
            str(tmp_path),
            "--max-steps",
            "6",
            "--eval-every",
            "3",
            "--eval-examples",
            "16",
            "--train-examples",
            "96",
            "--batch-size",
            "4",
            "--max-length",
            "16",
        ]
    )
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("schedule "))
    assert [line.split()[:3] for line in lines[header + 2 : header + 4]] == [["knee", "1", "6"], ["linear", "1", "6"]]
    assert {r["schedule"]: r["steps"] for r in results} == {"knee": 6, "linear": 6}
    knee = next(r for r in results if r["schedule"] == "knee")
    linear = next(r for r in results if r["schedule"] == "linear")
    # warmup 0.1 of 6 -> 1 step; Knee explores steps 1..3 at the seed LR while linear already decays
    assert [round(knee["learning_rates"][s] / 1e-4, 6) for s in range(1, 7)] == [0.0, 1.0, 1.0, 1.0, 1.0, 0.5]
    assert [round(linear["learning_rates"][s] / 1e-4, 6) for s in range(1, 7)] == [0.0, 1.0, 0.8, 0.6, 0.4, 0.2]
    for name in ("lr.png", "eval.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert len(json.loads((tmp_path / "results.json").read_text())) == 2
