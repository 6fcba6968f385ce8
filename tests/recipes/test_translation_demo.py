"""Short runs of the demo through the real path: corpus → Moses/BPE → fairseq-preprocess →
fairseq-train (every schedule the demo offers) → fairseq-generate + sacrebleu → table, examples,
results.json, PNGs; and its LR sweep."""

from __future__ import annotations

import json

import pytest
import sacrebleu
import torch
import transformers
from fairseq import checkpoint_utils
from sacremoses import MosesDetokenizer

from knee_plugins.schedule import knee_factor
from scripts.common import sweep
from scripts.translation import run as translation

UPDATES = 14
HELDOUT = 32
TINY_DEMO = [
    "--task", "demo", "--max-updates", str(UPDATES), "--train-pairs", "300", "--heldout-pairs", str(HELDOUT),
    "--bpe-symbols", "500", "--cpu",
]  # fmt: skip


def lr_after_each_update(make_scheduler, peak: float, updates: int) -> dict[int, float]:
    """The LR a torch/transformers scheduler sets after 1..``updates`` optimizer steps (the LR fairseq
    logs at that update: the one the next update will use)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    scheduler = make_scheduler(optimizer)
    trace = {}
    for update in range(1, updates + 1):
        optimizer.step()
        if update < updates or not isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR):
            scheduler.step()
            trace[update] = scheduler.get_last_lr()[0]
    return trace


def reference_lrs(label: str, peak: float, warmup: int) -> dict[int, float]:
    """Each demo schedule's LR after every update, from an implementation that is not the one the run
    used: Knee's core, transformers' linear / cosine / inverse-sqrt / WSD schedules, torch's one-cycle."""
    total = round(0.65 * UPDATES) if label == "knee (short)" else UPDATES
    if label in ("knee", "knee (short)"):
        explore = round(0.5 * total) - warmup
        return {u: peak * knee_factor(u, total_steps=total, warmup_steps=warmup, explore_steps=explore)
                for u in range(1, total + 1)}  # fmt: skip
    factories = {
        "linear": lambda opt: transformers.get_linear_schedule_with_warmup(opt, warmup, total),
        "cosine": lambda opt: transformers.get_cosine_schedule_with_warmup(opt, warmup, total),
        "inverse_sqrt": lambda opt: transformers.get_inverse_sqrt_schedule(opt, warmup),
        "wsd": lambda opt: transformers.get_wsd_schedule(
            opt, num_warmup_steps=warmup, num_decay_steps=total - round(0.8 * total), num_training_steps=total,
            decay_type="1-sqrt",
        ),
        "one_cycle": lambda opt: torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=peak, total_steps=total, div_factor=10.0, cycle_momentum=False
        ),
    }  # fmt: skip
    trace = lr_after_each_update(factories[label], peak, total)
    if label == "one_cycle":
        trace[total] = peak / 10.0 / 1e4
    return trace


@pytest.mark.slow
def test_tiny_demo_runs_every_schedule_with_its_reference_lr(tmp_path, capsys):
    argv = [*TINY_DEMO, "--work-dir", str(tmp_path), "--fairseq-args", "--log-interval 1 --save-interval-updates 7"]
    assert translation.main(argv) == 0
    out = capsys.readouterr().out

    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table[0] == (
        "| schedule | seeds | peak LR | BLEU tok | BLEU detok | valid loss | valid ppl | updates | wall s |"
    )
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    labels = ["knee", "linear", "cosine", "inverse_sqrt", "one_cycle", "wsd", "knee (short)"]
    assert [row[0] for row in rows] == labels
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["label"] for r in results] == labels
    recipe = translation.TASKS["demo"]
    warmup = round(recipe.warmup_ratio * UPDATES)
    assert warmup == 1
    for row, result in zip(rows, results, strict=True):
        schedule = result["label"].split(" ")[0]
        assert row[1] == "1" and row[2] == f"{recipe.lr_of(schedule):g}" == f"{result['peak_lr']:g}"
        assert row[7] == str(result["updates"])
        assert (row[3], row[4], row[5]) == (
            f"{result['bleu_tokenized']:.2f}",
            f"{result['bleu_detokenized']:.2f}",
            f"{result['best_valid_loss']:.3f}",
        )
        logged = dict(result["lr_curve"])
        expected = reference_lrs(result["label"], recipe.lr_of(schedule), warmup)
        assert sorted(logged) == sorted(expected), result["label"]
        if result["label"] == "cosine":
            # fairseq's cosine starts its next cycle (at lr_shrink × peak) once the budget is spent: that LR
            # is logged after the last update but no update uses it
            assert logged.pop(UPDATES) == pytest.approx(0.1 * recipe.lr_of("cosine"))
        for update, lr in logged.items():
            assert lr == pytest.approx(expected[update], rel=1e-3, abs=1e-9), (result["label"], update)
    # the knee runs explore at the peak while linear decays, and WSD's 1-sqrt cooldown starts at 80%
    knee, linear, wsd = (dict(r["lr_curve"]) for r in (results[0], results[1], results[5]))
    assert knee[7] == pytest.approx(recipe.lr_of("knee")) and linear[7] < 0.6 * recipe.lr_of("linear")
    assert wsd[11] == pytest.approx(recipe.lr_of("wsd")) and wsd[12] < recipe.lr_of("wsd")

    # three example translations per schedule, beside source and reference, from fairseq-generate's output
    examples = (tmp_path / "examples.md").read_text()
    assert examples.strip() in out
    for result in results:
        assert len(result["examples"]) == 3
        save_dir = (
            tmp_path
            / "checkpoints"
            / (f"{result['label'].split(' ')[0]}-{'short' if 'short' in result['label'] else 'full'}-seed1")
        )
        output = (save_dir / "generate-test.txt").read_text()
        hypotheses, references = generated_lines(output, "H"), generated_lines(output, "T")
        for example in result["examples"]:
            index = int(example["id"])
            assert example["hypothesis"] == MosesDetokenizer("en").detokenize(hypotheses[index].split())
            assert example["reference"] == MosesDetokenizer("en").detokenize(references[index].split())
            assert f"  {result['label']:<12}  {example['hypothesis']}" in examples
            assert f"  {'reference':<12}  {example['reference']}" in examples
        assert [e["id"] for e in result["examples"]] == [e["id"] for e in results[0]["examples"]]

    for result in results[:2]:
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


@pytest.mark.slow
def test_tiny_lr_sweep_picks_the_best_widens_an_edge_winner_and_reuses_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sweep, "MAX_WIDENINGS", 1)
    argv = [*TINY_DEMO, "--work-dir", str(tmp_path), "--schedule", "knee", "--sweep-lr", "3e-4", "3e-3",
            "--fairseq-args", "--save-interval-updates 7"]  # fmt: skip
    assert translation.main(argv) == 0
    out = capsys.readouterr().out
    records = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    # two grid points: the winner is on an edge, so the grid is widened by one step (its ratio, x10) that way
    assert [r["lr"] for r in records[:2]] == [3e-4, 3e-3] and len(records) == 3
    grid_best = min(records[:2], key=lambda r: r["best_valid_loss"])["lr"]
    assert records[2]["lr"] == pytest.approx(3e-2 if grid_best == 3e-3 else 3e-5)
    for record in records:
        log = (tmp_path / "sweep" / f"knee-lr{record['lr']:g}" / "train.log").read_text()
        losses = [json.loads(line.split("| valid | ", 1)[1])["valid_loss"] for line in log.splitlines()
                  if "| valid | " in line]  # fmt: skip
        assert record["best_valid_loss"] == float(min(losses, key=float)) and record["updates"] == UPDATES
        assert f"--lr {record['lr']:g} " in record["command"]
    chosen = min(records, key=lambda r: r["best_valid_loss"])
    assert f'best peak LR per schedule: {{"knee": {chosen["lr"]}}}' in out
    table = (tmp_path / "sweep" / "sweep.md").read_text().splitlines()
    assert (
        table[0]
        == "| schedule | " + " | ".join(f"lr {lr:g}" for lr in sorted(r["lr"] for r in records)) + " | best LR |"
    )
    assert f"**{chosen['best_valid_loss']:.3f}**" in table[2]
    edge = chosen["lr"] in (min(r["lr"] for r in records), max(r["lr"] for r in records))
    assert table[2].endswith(f"| {chosen['lr']:g}{' (grid edge)' if edge else ''} |")
    assert (tmp_path / "sweep" / "sweep.png").read_bytes()[:4] == b"\x89PNG"

    before = {path: path.stat().st_mtime_ns for path in (tmp_path / "sweep").glob("*/train.log")}
    assert translation.main(argv) == 0
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "sweep").glob("*/train.log")} == before
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text()) == records

    # the demo's seed-1 run at a swept LR is the sweep's run: reused (copied), not trained again
    demo = [
        *argv[: argv.index("--sweep-lr")],
        "--lr",
        f"{chosen['lr']:g}",
        "--fairseq-args",
        "--save-interval-updates 7",
    ]
    assert translation.main(demo) == 0
    assert (tmp_path / "checkpoints" / "knee-full-seed1" / "train.log").read_text() == (
        tmp_path / "sweep" / f"knee-lr{chosen['lr']:g}" / "train.log"
    ).read_text()
    (result,) = json.loads((tmp_path / "results.json").read_text())
    assert result["best_valid_loss"] == chosen["best_valid_loss"] and result["wall_seconds"] == chosen["wall_seconds"]
    assert result["bleu_tokenized"] is not None


def generated_lines(output: str, kind: str) -> dict[int, str]:
    return {
        int(line.split("\t", 1)[0][2:]): line.split("\t")[-1]
        for line in output.splitlines()
        if line.startswith(f"{kind}-")
    }


def generated_pairs(output: str) -> tuple[list[str], list[str]]:
    """(hypotheses, references) in sentence order from a fairseq-generate output."""
    hypotheses, references = {}, {}
    for line in output.splitlines():
        if line.startswith(("H-", "T-")):
            tag, text = line.split("\t", 1)[0], line.split("\t")[-1]
            (hypotheses if tag[0] == "H" else references)[int(tag[2:])] = text
    order = sorted(references)
    return [hypotheses[i] for i in order], [references[i] for i in order]
