"""knee-sharpness on a real fairseq checkpoint, through fairseq's own model, task and criterion."""

import json
import math

import pytest

from knee_plugins.sharpness import main

pytestmark = pytest.mark.slow


def test_cli_measures_a_fairseq_checkpoint(train, data_bin, tmp_path, capsys):
    save_dir = tmp_path / "ckpt"
    train(
        "--max-update",
        "6",
        "--criterion",
        "label_smoothed_cross_entropy",
        "--label-smoothing",
        "0.1",
        save_dir=save_dir,
    )
    checkpoint = save_dir / "checkpoint_last.pt"
    argv = ["--fairseq-checkpoint", str(checkpoint), "--fairseq-data", str(data_bin), "--max-tokens", "300"]
    argv += ["--num-batches", "2", "--steps", "10", "--eigen-iterations", "4", "--no-progress"]
    assert main(argv) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["checkpoint"] == str(checkpoint)
    assert record["num_batches"] == 2 and record["num_parameters"] > 0
    assert record["max_loss"] > record["loss"] > 0 and record["sharpness"] > 0
    assert math.isfinite(record["top_eigenvalue"])
