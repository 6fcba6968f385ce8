"""knee-explore-sweep: a real fairseq-train run per explore length and seed, each best checkpoint scored
by fairseq-generate and measured for sharpness; table, plot and JSON; a rerun reuses finished runs."""

import json
import math

import pytest
from knee_fairseq_helpers import TINY_MODEL, logged_lrs

from knee_plugins.explore_sweep import generated_bleu, main, markdown_table, summarise

_SEED = TINY_MODEL.index("--seed")
# The tiny recipe with validation (the sweep reads the best validation loss), without the seed it sets.
RECIPE = [arg for arg in TINY_MODEL[:_SEED] + TINY_MODEL[_SEED + 2 :] if arg != "--disable-validation"]
KNEE = [*RECIPE, "--lr-scheduler", "knee", "--max-update", "12"]


def test_dry_run_prints_one_command_per_explore_length_and_seed(tmp_path, capsys):
    argv = ["--explore-ratios", "0", "0.5", "--seeds", "1", "2", "--output-dir", str(tmp_path), "--dry-run", "--"]
    assert main([*argv, "DATA", *KNEE]) == 0
    commands = capsys.readouterr().out.splitlines()
    assert len(commands) == 4
    assert commands[3].endswith("--explore-ratio 0.5 --seed 2 --save-dir " + str(tmp_path / "explore-0.5" / "seed-2"))
    assert " DATA " in commands[0] and "--explore-ratio 0 --seed 1" in commands[0]
    # fairseq-train has no --dry-run: after `--` it is still the sweep's (and nothing trains)
    assert main([*argv[:-2], "--", "DATA", *KNEE, "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == commands


@pytest.mark.parametrize(
    "train, options, message",
    [
        (["--lr-scheduler", "knee", "--seed", "3"], [], "--seed is set by the sweep"),
        (["--lr-scheduler", "knee", "--explore-updates", "3"], [], "--explore-updates is set by the sweep"),
        (["--lr-scheduler", "cosine"], [], "--lr-scheduler knee"),
        (["--lr-scheduler", "knee"], ["--explore-ratios", "1.5"], "in [0, 1]"),
        (["--lr-scheduler", "knee"], ["--sharpness-steps", "0"], "--sharpness-steps must be >= 1"),
        ([], [], "the data directory first"),
    ],
)
def test_bad_input_is_refused_naming_the_option(tmp_path, capsys, train, options, message):
    argv = ["--explore-ratios", "0.5", "--output-dir", str(tmp_path), *options, "--"]
    with pytest.raises(SystemExit):
        main([*argv, *(["DATA", *train] if train else [])])
    assert message in capsys.readouterr().err


def test_a_checkpoint_of_another_command_is_not_continued(tmp_path):
    """fairseq-train would continue any checkpoint_last.pt in its save dir: one left by another command
    stops the sweep before it trains there."""
    save_dir = tmp_path / "explore-0.5" / "seed-1"
    save_dir.mkdir(parents=True)
    (save_dir / "checkpoint_last.pt").write_bytes(b"")
    (save_dir / "command.json").write_text(json.dumps(["fairseq-train", "DATA", "--lr", "9"]))
    with pytest.raises(SystemExit, match="checkpoint_last.pt of another"):
        main(["--explore-ratios", "0.5", "--output-dir", str(tmp_path), "--", "DATA", *KNEE])
    assert not (save_dir / "train.log").exists()


def test_summary_is_the_mean_and_std_over_seeds_per_explore_length():
    runs = [
        {"explore_ratio": 0.5, "seed": 1, "best_valid_loss": 2.0, "bleu": None, "sharpness": 1.0},
        {"explore_ratio": 0.5, "seed": 2, "best_valid_loss": 4.0, "bleu": None, "sharpness": 3.0},
        {"explore_ratio": 0.0, "seed": 1, "best_valid_loss": 5.0, "bleu": None, "sharpness": 2.0},
    ]
    rows = summarise(runs, ("best_valid_loss", "bleu", "sharpness"))
    assert [row["explore_ratio"] for row in rows] == [0.0, 0.5]
    assert rows[1]["best_valid_loss"] == 3.0 and rows[1]["best_valid_loss_std"] == pytest.approx(math.sqrt(2))
    assert rows[0]["sharpness_std"] == 0.0 and rows[0]["bleu"] is None
    table = markdown_table(rows, ("best_valid_loss", "bleu", "sharpness"))
    assert table.splitlines()[0] == "| explore | seeds | best valid loss | ε-sharpness |"
    assert "| 50% | 2 | 3 ± 1.4 | 2 ± 1.4 |" in table


def test_bleu_is_read_from_what_fairseq_generate_prints():
    assert generated_bleu("... | Generate test with beam=5: BLEU4 = 27.31, 60.1/33.2/20.6/13.1 (BP=1.000)") == 27.31
    assert generated_bleu("| Generate test with beam=4: BLEU = 11.20 40.1/15.3/7.2/3.4 (BP = 1.000 ratio") == 11.2
    with pytest.raises(ValueError, match="no BLEU line"):
        generated_bleu("Translated 10 sentences")


@pytest.mark.slow
def test_sweep_trains_scores_and_measures_each_run_and_a_rerun_reuses_them(data_bin, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["--explore-ratios", "0", "0.75", "--seeds", "1", "--output-dir", str(out), "--sharpness-batches", "2"]
    argv += ["--sharpness-max-tokens", "300", "--sharpness-steps", "5", "--eigen-iterations", "3"]
    argv += ["--generate-args", "--beam 2 --batch-size 64 --cpu", "--"]
    assert main([*argv, str(data_bin), *KNEE]) == 0
    record = json.loads((out / "sweep.json").read_text())
    runs = {run["explore_ratio"]: run for run in record["runs"]}
    assert sorted(runs) == [0.0, 0.75]
    for ratio, run in runs.items():
        save_dir = out / f"explore-{ratio:g}" / "seed-1"
        assert run["checkpoint"] == str(save_dir / "checkpoint_best.pt")
        assert math.isfinite(run["best_valid_loss"]) and run["sharpness"] > 0 and math.isfinite(run["top_eigenvalue"])
        assert 0 <= run["bleu"] <= 100 and (save_dir / "generate-test.txt").exists()
        assert run["sharpness_measurement"]["steps"] == 5 and run["sharpness_measurement"]["num_batches"] == 2
    # after 6 of 12 updates: no explore has decayed linearly to half the peak; 75% explore still holds it
    assert logged_lrs((out / "explore-0" / "seed-1" / "train.log").read_text())[6] == pytest.approx(5e-4, rel=1e-3)
    assert logged_lrs((out / "explore-0.75" / "seed-1" / "train.log").read_text())[6] == pytest.approx(1e-3, rel=1e-3)
    table = (out / "sweep.md").read_text()
    assert "| 0% | 1 |" in table and "| 75% | 1 |" in table and "test BLEU" in table
    assert (out / "sweep.png").stat().st_size > 0
    capsys.readouterr()

    stamp = (out / "explore-0" / "seed-1" / "checkpoint_best.pt").stat().st_mtime_ns
    assert main([*argv, str(data_bin), *KNEE]) == 0
    assert (out / "explore-0" / "seed-1" / "checkpoint_best.pt").stat().st_mtime_ns == stamp, "not trained again"
    assert json.loads((out / "sweep.json").read_text())["runs"] == record["runs"]
    with pytest.raises(SystemExit, match="holds a run of another command"):
        main([*argv, str(data_bin), *KNEE[:-1], "10"])
