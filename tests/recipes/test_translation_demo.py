"""A short run of the demo through the real path: corpus → Moses/BPE → fairseq-preprocess →
fairseq-train (Knee and linear) → fairseq-generate + sacrebleu → table, results.json, PNGs."""

from __future__ import annotations

import json

import pytest
import sacrebleu
from fairseq import checkpoint_utils

from knee_plugins.recipes import translation
from knee_plugins.schedule import knee_factor

UPDATES = 14
HELDOUT = 32


@pytest.mark.slow
def test_short_demo_writes_table_and_plots(tmp_path, capsys):
    argv = [
        "--task",
        "demo",
        "--schedule",
        "knee",
        "linear",
        "--max-updates",
        str(UPDATES),
        "--train-pairs",
        "300",
        "--heldout-pairs",
        str(HELDOUT),
        "--bpe-symbols",
        "500",
        "--work-dir",
        str(tmp_path),
        "--cpu",
        "--fairseq-args",
        "--log-interval 1",
    ]
    assert translation.main(argv) == 0
    out = capsys.readouterr().out

    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table[0] == ("| schedule | seeds | BLEU tok | BLEU detok | valid loss | valid ppl | updates | wall s |")
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    assert [row[0] for row in rows] == ["knee", "linear"]
    results = json.loads((tmp_path / "results.json").read_text())
    for row, result in zip(rows, results, strict=True):
        assert row[1] == "1" and row[6] == str(UPDATES)
        assert (row[2], row[3], row[4]) == (
            f"{result['bleu_tokenized']:.2f}",
            f"{result['bleu_detokenized']:.2f}",
            f"{result['best_valid_loss']:.3f}",
        )
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

    for result in results:
        save_dir = tmp_path / "checkpoints" / f"{result['label']}-full-seed1"
        # the table's BLEU is sacrebleu's on the translations fairseq-generate wrote
        hypotheses, references = generated_pairs((save_dir / "generate-test.txt").read_text())
        assert len(hypotheses) == HELDOUT
        assert result["bleu_tokenized"] == pytest.approx(
            sacrebleu.corpus_bleu(hypotheses, [references], tokenize="none").score, abs=1e-9
        )
        # the scored checkpoint is the one whose valid loss is lowest in fairseq's own log
        valid = {}
        for line in (save_dir / "train.log").read_text().splitlines():
            if "| valid | " in line:
                record = json.loads(line.split("| valid | ", 1)[1])
                valid[int(record["valid_num_updates"])] = float(record["valid_loss"])
        best = checkpoint_utils.load_checkpoint_to_cpu(str(save_dir / "checkpoint_best.pt"))
        best_updates = best["optimizer_history"][-1]["num_updates"]
        assert len(valid) >= 2 and valid[best_updates] == min(valid.values())
        assert result["best_valid_loss"] == valid[best_updates]
    for name in ("lr_curves.png", "valid_loss.png", "bleu.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name


def generated_pairs(output: str) -> tuple[list[str], list[str]]:
    """(hypotheses, references) in sentence order from a fairseq-generate output."""
    hypotheses, references = {}, {}
    for line in output.splitlines():
        if line.startswith(("H-", "T-")):
            tag, text = line.split("\t", 1)[0], line.split("\t")[-1]
            (hypotheses if tag[0] == "H" else references)[int(tag[2:])] = text
    order = sorted(references)
    return [hypotheses[i] for i in order], [references[i] for i in order]
