"""A short run of the demo through the real path: corpus → Moses/BPE → fairseq-preprocess →
fairseq-train (Knee and linear) → fairseq-generate + sacrebleu → table, results.json, PNGs."""

from __future__ import annotations

import json
import math

import pytest

from knee_plugins.recipes import translation
from knee_plugins.schedule import knee_factor

UPDATES = 14
HELDOUT = 32


@pytest.mark.slow
def test_short_demo_writes_table_and_plots(tmp_path, capsys):
    argv = ["--task", "demo", "--schedule", "knee", "linear", "--max-updates", str(UPDATES),
            "--train-pairs", "300", "--heldout-pairs", str(HELDOUT), "--bpe-symbols", "500",
            "--work-dir", str(tmp_path), "--cpu", "--fairseq-args", "--log-interval 1"]
    assert translation.main(argv) == 0
    out = capsys.readouterr().out

    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table[0] == ("| schedule | seeds | BLEU tok | BLEU detok | valid loss | valid ppl | updates | "
                        "wall s |")
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    assert [row[0] for row in rows] == ["knee", "linear"]
    for row in rows:
        assert row[1] == "1" and row[6] == str(UPDATES)
        assert 0.0 <= float(row[2]) <= 100.0 and 0.0 <= float(row[3]) <= 100.0
        assert math.isfinite(float(row[4]))

    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["label"] for r in results] == ["knee", "linear"]
    assert [r["updates"] for r in results] == [UPDATES, UPDATES]
    peak = translation.TASKS["demo"].lr
    knee_lrs, linear_lrs = (dict(r["lr_curve"]) for r in results)
    assert sorted(knee_lrs) == list(range(1, UPDATES + 1))
    for step, lr in knee_lrs.items():
        expected = peak * knee_factor(step, total_steps=UPDATES, warmup_steps=0, explore_steps=UPDATES // 2)
        assert lr == pytest.approx(expected, rel=1e-3, abs=1e-9), step
    for step, lr in linear_lrs.items():
        assert lr == pytest.approx(peak * (1 - step / UPDATES), rel=1e-3, abs=1e-9), step
    assert knee_lrs[UPDATES // 2] == pytest.approx(peak) and linear_lrs[UPDATES // 2] == pytest.approx(peak / 2)
    assert results[0]["best_valid_loss"] == min(loss for _, loss in results[0]["valid_curve"])

    generated = (tmp_path / "checkpoints" / "knee-full-seed1" / "generate-test.txt").read_text()
    assert sum(line.startswith("H-") for line in generated.splitlines()) == HELDOUT
    for name in ("lr_curves.png", "valid_loss.png", "bleu.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
