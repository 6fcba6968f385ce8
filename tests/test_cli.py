"""knee-plan, the console command that shows a schedule before a run is spent on it."""

import shutil
import subprocess
import sys

import pytest

from knee_plugins.cli import plan_main


def test_prints_the_phase_boundaries_of_the_bert_recipe(capsys, tmp_path):
    out = tmp_path / "lr.png"
    assert (
        plan_main(["--total-steps", "31250", "--warmup", "0.1", "--explore", "0.5", "--lr", "6e-3", "--out", str(out)])
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:5] == ["warmup", "0", "3125", "3125", "10.0%"]
    assert lines[2].split()[:5] == ["explore", "3125", "18750", "15625", "50.0%"]
    assert lines[3].split()[:5] == ["exploit", "18750", "31250", "12500", "40.0%"]
    assert float(lines[2].split()[5]) == pytest.approx(6e-3)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_durations_in_epochs(capsys):
    plan_main(["--total-steps", "50ep", "--explore", "40ep", "--steps-per-epoch", "1100"])
    assert capsys.readouterr().out.splitlines()[3].split()[:4] == ["exploit", "44000", "55000", "11000"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--total-steps", "100", "--explore", "1.5"], "error: --explore=1.5"),
        (
            ["--total-steps", "100", "--warmup", "60", "--explore", "50"],
            "error: --warmup (60 steps) + --explore (50 steps) = 110 steps exceed --total-steps = 100",
        ),
        (["--total-steps", "50ep"], "error: --total-steps is given in epochs"),
        (
            ["--total-steps", "100", "--explore", "2ep", "--steps-per-epoch", "0"],
            "error: --steps-per-epoch must be > 0",
        ),
        (["--total-steps", "0"], "error: --total-steps must be > 0"),
        (["--total-steps", "100", "--lr", "-1"], "error: --lr must be > 0"),
        (["--total-steps", "100", "--min-lr-ratio", "1"], "error: --min-lr-ratio must be in [0, 1)"),
        (["--total-steps", "100", "--decay-type", "step"], "--decay-type: invalid choice: 'step'"),
    ],
)
def test_bad_input_exits_nonzero_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        plan_main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_installed_console_script_runs():
    executable = shutil.which("knee-plan") or str(__import__("pathlib").Path(sys.executable).with_name("knee-plan"))
    result = subprocess.run([executable, "--total-steps", "10", "--warmup", "2"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[2].split()[:3] == ["explore", "2", "7"]
