"""A short run of the demo (two schedules, a few updates) produces the table and the plots."""

from __future__ import annotations

import json

import pytest

from knee_plugins.recipes import translation


@pytest.mark.slow
def test_short_demo_writes_table_and_plots(tmp_path, capsys):
    argv = ["--task", "demo", "--schedule", "knee", "linear", "--max-updates", "12", "--train-pairs", "600",
            "--heldout-pairs", "40", "--work-dir", str(tmp_path), "--cpu"]
    assert translation.main(argv) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| schedule | seeds | BLEU tok | BLEU detok | valid loss | valid ppl | updates")
    assert [row.split(" | ")[0] for row in table[2:]] == ["| knee", "| linear"]
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["updates"] for r in results] == [12, 12]
    knee_lrs = dict(results[0]["lr_curve"])
    assert knee_lrs[10] == pytest.approx(1.5e-3 * 2 / 6, rel=0.02)  # decay half: (12 - 10) / 6
    for name in ("lr_curves.png", "valid_loss.png", "bleu.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
