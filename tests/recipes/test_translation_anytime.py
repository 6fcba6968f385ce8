"""The anytime demo: its plan and dry run, the cost arithmetic, checkpoint averaging, and a tiny family
trained for real (parent, one branch, one average, one separate run) through fairseq-train."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import torch

from scripts.common.checkpoint_average import average_checkpoints, average_state_dicts, load_checkpoint
from scripts.common.fairseq_recipe import plan_batches
from scripts.translation import anytime


def test_default_plan_branches_at_80_percent_and_keeps_the_checkpoints_it_needs():
    plan = anytime.AnytimePlan()
    plan.check()
    assert plan.warmup == 72 and plan.lr == 0.002
    assert [plan.branch_point(b) for b in plan.budgets] == [480, 720, 960]
    assert plan.averaged_updates(900) == [780, 840, 900]
    assert plan.parent_updates == 1200  # averaging at 1200 needs the parent there
    assert anytime.AnytimePlan(average_last=0).parent_updates == 960  # else the last branch point
    assert plan.parent_checkpoints == [480, 540, 600, 720, 780, 840, 900, 960, 1080, 1140, 1200]


def test_cost_ratio_arithmetic():
    assert anytime.family_cost(960, [120, 180, 240]) == 1500
    assert anytime.cost_ratio(1500, 2700) == pytest.approx(5 / 9)
    with pytest.raises(ValueError, match="separate_updates"):
        anytime.cost_ratio(1, 0)
    rows = {what: (updates, ratio) for what, updates, ratio in anytime.cost_rows(anytime.AnytimePlan())}
    assert rows["3 separate Knee runs"] == (2700, 1.0)
    assert rows["parent to 960 + linear branches"] == (1500, pytest.approx(1500 / 2700))
    assert rows["parent to 960 + 1-sqrt branches"] == (1500, pytest.approx(1500 / 2700))
    assert rows["parent to 1200, averaged (no decay)"] == (1200, pytest.approx(1200 / 2700))
    assert rows["this demo's family as run (parent to 1200, every branch)"] == (2280, pytest.approx(2280 / 2700))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--decay-fraction", "1.5"], "--decay-fraction must be in"),
        (["--save-interval", "70"], "--save-interval 70 does not divide"),
        (["--budgets", "600", "600"], "--budgets must be distinct"),
        (["--budgets", "80", "--save-interval", "1"], r"branches at update 64, which must lie in \[--warmup 72"),
        (["--average-last", "-1"], "--average-last must be >= 0"),
        (["--far-budget", "1000"], "--far-budget must exceed"),
        (["--seeds", "0"], "--seeds must be >= 1"),
    ],
)
def test_bad_options_are_refused_naming_the_option(argv, message, capsys):
    with pytest.raises(SystemExit):
        anytime.parse_args([*argv, "--dry-run"])
    assert re.search(message, capsys.readouterr().err)


def test_dry_run_prints_the_plan_and_every_command(tmp_path, capsys):
    assert anytime.main(["--work-dir", str(tmp_path), "--seeds", "2", "--cpu", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert not (tmp_path / "prepared").exists()
    assert out[0].startswith("budgets [600, 900, 1200]; branch points [480, 720, 960]; parent stops at 1200")
    assert "per seed: 4980 updates trained, 12 test scorings; 2 seed(s)" in out
    commands = [line for line in out if "fairseq-train" in line]
    assert len(commands) == 2 * (1 + 6 + 3)
    parent, branch = commands[0], commands[1]
    assert "--total-num-update 100000 --explore-updates 99928" in parent and "--max-update 1200" in parent
    assert "--keep-interval-updates -1" in parent and "--save-interval-updates 60" in parent
    assert "--warmup-updates 72 --explore-updates 408 --decay-type linear --max-update 600" in branch
    assert f"--continue-once '{tmp_path}/checkpoints/seed1/parent/checkpoint_<epoch>_480.pt'" in branch
    assert f"--save-dir {tmp_path}/checkpoints/seed1/branch-linear-600" in branch
    assert "--explore-updates 888 --decay-type 1-sqrt --max-update 1200" in commands[6]
    separate = commands[7]
    assert "--explore-updates 408 --decay-type linear --max-update 600" in separate
    assert "--continue-once" not in separate and "--total-num-update" not in separate
    for command in commands:
        assert "--lr 0.002 " in command and "--seed " in command and "--max-tokens 1024 " in command
    assert sum("# average of" in line and "[1080, 1140, 1200]" in line for line in out) == 2


def test_average_of_two_hand_made_checkpoints_is_the_mean_tensor(tmp_path):
    first = {"w": torch.tensor([1.0, 2.0]), "h": torch.tensor([1.0], dtype=torch.float16), "v": torch.tensor([3])}
    second = {"w": torch.tensor([3.0, -2.0]), "h": torch.tensor([2.0], dtype=torch.float16), "v": torch.tensor([3])}
    for name, model, updates in (("a.pt", first, 1), ("b.pt", second, 2)):
        torch.save({"model": model, "optimizer_history": [{"num_updates": updates}], "cfg": {"x": 1}}, tmp_path / name)
    out = average_checkpoints([tmp_path / "a.pt", tmp_path / "b.pt"], tmp_path / "avg.pt")
    averaged = torch.load(out, weights_only=True)
    assert torch.equal(averaged["model"]["w"], torch.tensor([2.0, 0.0]))
    assert averaged["model"]["h"].dtype == torch.float16 and averaged["model"]["h"].item() == 1.5
    assert torch.equal(averaged["model"]["v"], torch.tensor([3]))
    assert averaged["cfg"] == {"x": 1} and averaged["optimizer_history"] == [{"num_updates": 1}]
    with pytest.raises(ValueError, match="non-float tensor v"):
        average_state_dicts([first, {**second, "v": torch.tensor([4])}])
    with pytest.raises(ValueError, match="other tensors"):
        average_state_dicts([first, {"w": second["w"]}])


def test_table_and_cost_rows_from_results():
    plan = anytime.AnytimePlan(budgets=(600,), decay_types=("linear",), average_last=0)
    results = [
        anytime.RunResult(
            f"{anytime.SEPARATE} @ 600",
            seed,
            1.0,
            600,
            loss,
            1.0,
            [],
            [(540, loss), (600, loss + 0.1)],
            bleu_tokenized=bleu,
        )  # fmt: skip
        for seed, loss, bleu in ((1, 3.0, 10.0), (2, 3.2, 12.0))
    ]
    table = anytime.format_table(results, plan).splitlines()
    assert table[2] == "| 600 | Knee trained alone | 2 | 11.00 ± 1.41 | 3.100 ± 0.141 | 3.200 ± 0.141 | 600 |"
    assert "| parent to 480 + linear branches | 600 | 1.00 |" in table


@pytest.mark.slow
def test_tiny_family_trains_branches_averages_and_reports(tmp_path):
    """A 30-update parent (checkpoint every 6), one linear branch at 24 to 30, the average of the
    checkpoints at 24 and 30, and a separate Knee run of the branch's shape; rerun: nothing retrained."""
    argv = [
        "--work-dir", str(tmp_path), "--train-pairs", "300", "--heldout-pairs", "32", "--bpe-symbols", "500",
        "--budgets", "30", "--save-interval", "6", "--average-last", "2", "--warmup", "2", "--decay-types", "linear",
        "--cpu", "--fairseq-args", "--log-interval 1",
    ]  # fmt: skip
    assert anytime.main(argv) == 0
    seed_dir = tmp_path / "checkpoints" / "seed1"
    records = {r["label"]: r for r in json.loads((tmp_path / "results.json").read_text())}
    assert set(records) == {
        anytime.PARENT,
        "branch, linear decay @ 30",
        "Knee trained alone @ 30",
        "average of last 2 @ 30",
        "no decay (parent at B) @ 30",
    }
    parent, branch, alone = (
        records[k] for k in (anytime.PARENT, "branch, linear decay @ 30", "Knee trained alone @ 30")
    )
    # the parent explores at the peak to its hard stop; branch and separate run share one LR schedule
    assert parent["updates"] == 30 and {lr for u, lr in parent["lr_curve"] if u >= 2} == {0.002}
    assert [u for u, _ in branch["lr_curve"]] == list(range(25, 31))
    assert branch["lr_curve"] == [[u, lr] for u, lr in alone["lr_curve"] if u > 24]
    assert dict(alone["lr_curve"])[24] == 0.002 and dict(alone["lr_curve"])[30] == 0.0
    # before the branch point the separate run is the parent's run: same losses, update by update
    log = {u: loss for u, loss in parent["valid_curve"]}
    assert [v for u, v in alone["valid_curve"] if u <= 24] == [log[u] for u, _ in alone["valid_curve"] if u <= 24]
    for record in (branch, alone, records["average of last 2 @ 30"]):
        assert record["bleu_tokenized"] is not None and record["budget"] == 30
    # the average is the mean of the parent's two checkpoints, validated by fairseq-validate
    checkpoints = [anytime.find_checkpoint(seed_dir / "parent", u) for u in (24, 30)]
    average = load_checkpoint(seed_dir / "average2-30" / "checkpoint_average.pt")["model"]
    models = [load_checkpoint(path)["model"] for path in checkpoints]
    for name, tensor in average.items():
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, (models[0][name].double() + models[1][name].double()).div(2).float())
    # fairseq-validate (which scores the averages) gives a parent checkpoint the loss fairseq-train logged
    settings = anytime.Settings(anytime.AnytimePlan(), tmp_path, tmp_path / "prepared" / "data-bin",
                                plan_batches(1024, 1024, 1), True, [])  # fmt: skip
    output = subprocess.run(anytime.validate_command(settings, checkpoints[1]), capture_output=True, text=True)
    assert anytime.parse_validate(output.stdout + output.stderr) == pytest.approx(log[30], abs=1e-3)
    assert records["no decay (parent at B) @ 30"]["valid_curve"] == [[30, log[30]]]
    table = (tmp_path / "table.md").read_text()
    assert "| 30 | branch, linear decay | 1 |" in table and "| 1 separate Knee runs | 30 | 1.00 |" in table
    assert (tmp_path / "family.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    stamps = {p: p.stat().st_mtime_ns for p in seed_dir.glob("*/train.log")}
    assert anytime.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in seed_dir.glob("*/train.log")} == stamps
