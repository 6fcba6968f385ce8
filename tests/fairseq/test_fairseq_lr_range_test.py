"""--lr-scheduler lr_range_test: the ramp in-process, and a real fairseq-train run that it stops."""

import json

import pytest
from knee_fairseq_helpers import make, trace, train_records


def ramp(t, start=1e-4, end=1.0, updates=5):
    return start * (end / start) ** (min(t, updates - 1) / (updates - 1))


def test_the_lr_ramps_exponentially_from_start_to_end_then_holds():
    scheduler, optimizer = make("lr_range_test", lr=1e-3, start_lr=1e-4, end_lr=1.0, range_test_updates=5)
    assert optimizer.get_lr() == pytest.approx(1e-4)  # the first update's LR is set at build time
    assert trace(scheduler, range(8)) == pytest.approx([ramp(t) for t in range(8)], rel=1e-12)
    assert trace(scheduler, [4])[0] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "options, name",
    [
        (dict(start_lr=1.0, end_lr=0.1), "--start-lr"),
        (dict(range_test_updates=1), "--range-test-updates"),
        (dict(diverge_threshold=0.5), "--diverge-threshold"),
        (dict(loss_smoothing=1.0), "smoothing"),
        (dict(suggestion_skip_start=-1), "--suggestion-skip-start"),
    ],
)
def test_bad_options_raise_value_errors_that_name_them(options, name):
    with pytest.raises(ValueError, match=name):
        make("lr_range_test", lr=1e-3, **options)


@pytest.mark.slow
def test_fairseq_train_runs_the_range_test_and_stops_when_the_loss_diverges(train, tmp_path):
    out = tmp_path / "range"
    start, end, updates = 1e-5, 10.0, 80
    proc = train(
        "--lr-scheduler", "lr_range_test", "--start-lr", str(start), "--end-lr", str(end),
        "--range-test-updates", str(updates), "--range-test-dir", out, "--max-update", "1000", "--no-save",
    )  # fmt: skip
    record = json.loads((out / "lr_range_test.json").read_text())
    records = train_records(proc.stdout)
    points = len(record["lrs"])
    # Adam at LRs up to 10 blows the loss up before the ramp ends; the run stops right there.
    assert record["diverged"] and 15 < points < updates - 1
    assert max(int(r["num_updates"]) for r in records) == points + 1
    assert "Stopping training due to num_updates" in proc.stdout
    # point i: the LR of update i + 1 and the loss fairseq logged for that update (computed before it)
    for i, lr in enumerate(record["lrs"]):
        assert lr == pytest.approx(start * (end / start) ** (i / (updates - 1)), rel=1e-9)
    logged_loss = {int(r["num_updates"]): float(r["loss"]) for r in records}
    assert [round(x, 3) for x in record["extra"]["raw_losses"]] == pytest.approx(
        [logged_loss[i + 1] for i in range(points)], abs=1.5e-3
    )
    logged_lr = {int(r["num_updates"]): float(r["lr"]) for r in records}
    assert logged_lr[1] == pytest.approx(record["lrs"][1], rel=1e-5)  # the LR fairseq set for update 2
    assert record["suggestion"] in record["lrs"] and "steepest" in record["rule"]
    assert record["losses"][-1] > 5 * min(record["losses"])
    assert (out / "lr_range_test.png").stat().st_size > 0
