"""The MAT recipe: its commands carry the paper's values and parse with fairseq; a tiny two-phase
run through the real fairseq-train (knee), knee-mat-init and fairseq-generate."""

from __future__ import annotations

import ast
import dataclasses
import shlex
import subprocess

import pytest
import torch
from fairseq import checkpoint_utils, options
from knee_fairseq_helpers import clean_env, logged_lrs

from knee_plugins.fairseq_plugin import mat_init
from scripts.common import prepare
from scripts.common.fairseq_cli import TINY_TRANSFORMER
from scripts.common.fairseq_recipe import DEMO, plan_batches
from scripts.mat import run as mat

PAPER = {  # task -> (arch, epochs per phase, explore until, phase-2 branches, rho, beam, lenpen, tokens/update)
    "iwslt14": ("transformer_mb_mat_iwslt_de_en", 200, 100, 3, 0.3, 5, 1.2, 4096),
    "wmt14": ("transformer_mb_mat_wmt_en_de", 70, 35, 2, 0.2, 4, 0.6, 524_288),
}


def options_of(tokens: list[str]) -> dict[str, list[str]]:
    parsed: dict[str, list[str]] = {}
    key = None
    for token in tokens:
        if token.startswith("--"):
            key = token
            parsed[key] = []
        elif key is not None:
            parsed[key].append(token)
    return parsed


def dry_run(capsys, *argv: str) -> list[list[list[str]]]:
    """The printed commands, grouped per run (phase 1, init, phase 2, generate 1, generate 2)."""
    assert mat.main(["--dry-run", "--cpu", *argv]) == 0
    groups: list[list[list[str]]] = []
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("#"):
            groups.append([])
        else:
            groups[-1].append(shlex.split(line))
    return groups


def fairseq_args(tokens: list[str]):
    """Parse a printed fairseq-train command with fairseq itself (plugin loaded)."""
    assert tokens[0].endswith("fairseq-train")
    return options.parse_args_and_arch(options.get_training_parser(), tokens[1:])


@pytest.mark.parametrize("task", sorted(PAPER))
@pytest.mark.parametrize("world_size", [1, 8])
def test_dry_run_carries_the_paper_values(capsys, task, world_size):
    arch, epochs, explore, branches, rho, beam, lenpen, tokens = PAPER[task]
    groups = dry_run(capsys, "--task", task, "--world-size", str(world_size))
    assert len(groups) == 2
    for group, schedule in zip(groups, ("knee", "inverse_sqrt"), strict=False):
        phase1, init, phase2, generate1, generate2 = group
        for phase, command in ((1, phase1), (2, phase2)):
            args = fairseq_args(command)
            assert args.arch == arch and args.share_all_embeddings
            assert args.optimizer == "adam" and ast.literal_eval(args.adam_betas) == (0.9, 0.98)
            assert args.lr == [5e-4] and args.lr_scheduler == schedule
            assert args.warmup_updates == 4000 and args.warmup_init_lr == 1e-7
            assert args.max_epoch == epochs and args.clip_norm == 0 and args.weight_decay == 0
            assert args.dropout == 0.3 and args.attention_dropout == 0 and args.activation_dropout == 0
            assert args.criterion == "label_smoothed_cross_entropy" and args.label_smoothing == 0.1
            assert world_size * args.max_tokens * args.update_freq[0] == tokens
            if schedule == "knee":
                assert args.explore_epochs == explore
            expected = (1, 0.0) if phase == 1 else (branches, rho)
            assert (args.encoder_branches, args.branch_dropout) == expected
            assert (args.decoder_branches, args.pffn_branch_dropout) == expected
            assert args.encoder_pffn_branches == 1 and args.join_pffn
        phase1_dir = options_of(phase1)["--save-dir"][0]
        assert init[-4:] == [
            f"{phase1_dir}/checkpoint_best.pt",
            options_of(phase2)["--finetune-from-model"][0],
            "--branches",
            str(branches),
        ]
        assert "--finetune-from-model" not in options_of(phase1)
        for command, phase_dir in ((generate1, phase1_dir), (generate2, options_of(phase2)["--save-dir"][0])):
            generate = options_of(command)
            assert generate["--path"] == [f"{phase_dir}/checkpoint_best.pt"]
            assert generate["--beam"] == [str(beam)] and float(generate["--lenpen"][0]) == lenpen


def test_demo_dry_run_explores_half_of_each_phase(capsys):
    (phase1, _, phase2, _, _), _ = dry_run(capsys, "--task", "demo", "--max-updates", "200")
    for command in (phase1, phase2):
        args = fairseq_args(command)
        assert args.max_update == 200 and args.warmup_updates == 12 and args.explore_updates == 100 - 12


def test_demo_inherits_the_translation_demos_calibrated_settings(capsys):
    """The MAT demo trains the translation demo's model on its data and batch, at its peak LRs (2e-3 for
    Knee and inverse-sqrt), without dropout, with its warmup ratio and explore, for 800 updates a phase."""
    groups = dry_run(capsys, "--task", "demo")
    for (phase1, _, phase2, _, _), schedule in zip(groups, mat.SCHEDULES, strict=True):
        for phase, command in ((1, phase1), (2, phase2)):
            args = fairseq_args(command)
            assert args.arch == "transformer_mb" and args.encoder_embed_dim == 128 and args.encoder_layers == 2
            assert args.lr == [DEMO.lr_of(schedule)] == [2e-3] and args.lr_scheduler == schedule
            assert args.dropout == 0 == DEMO.dropout and args.max_tokens == DEMO.tokens_per_update
            assert ast.literal_eval(args.adam_betas) == DEMO.betas
            assert args.max_update == 800 and args.warmup_updates == round(DEMO.warmup_ratio * 800) == 48
            assert args.clip_norm == 0 and args.weight_decay == 0 and args.warmup_init_lr == 1e-7
            assert (args.encoder_branches, args.branch_dropout) == ((1, 0.0) if phase == 1 else (3, 0.3))
            if schedule == "knee":
                assert args.explore_updates == round(DEMO.explore["full"] * 800) - 48


def test_bad_arguments_fail_before_anything_runs(capsys):
    for argv in (
        ["--task", "iwslt14", "--max-updates", "10"],
        ["--seeds", "0"],
        ["--schedule", "linear"],
        ["--world-size", "0"],
    ):
        with pytest.raises(SystemExit):
            mat.main(["--dry-run", *argv])
    with pytest.raises(SystemExit):
        mat_init.main(["a.pt", "b.pt"])  # --branches missing
    assert "--branches" in capsys.readouterr().err


@pytest.mark.slow
def test_two_phases_init_and_generate(data_bin, tmp_path):
    """Phase 1 (1 branch) and phase 2 (3 branches, drop-branch) through fairseq-train with
    ``--lr-scheduler knee`` over 2 epochs each, knee-mat-init in between, then fairseq-generate
    on the phase-2 best checkpoint with torch's default weights_only loading."""
    paper = mat.paper_task(
        "tiny",
        prepare.DEMO_SPEC,
        "transformer_mb",
        tokens_per_update=300,
        epochs=2,
        explore_epochs=1,
        beam=5,
        lenpen=1.2,
    )
    task = dataclasses.replace(
        paper,
        max_tokens_per_gpu=300,
        lr=1e-3,
        dropout=0.1,
        model_args=(*TINY_TRANSFORMER, *mat.ONE_JOINED_FFN, "--share-all-embeddings"),
        extra_args=("--no-epoch-checkpoints", "--num-workers", "0", "--log-interval", "1"),
        generate_args=(*paper.generate_args, "--max-len-b", "12"),
    )
    recipe = mat.MatRecipe(task, branches=3, branch_dropout=0.3, warmup_updates=3)
    run = mat.MatRun(recipe, "knee", 1, data_bin, tmp_path, plan_batches(300, 300, 1), cpu=True)

    def train(phase: int) -> str:
        command = mat.train_command(run, phase)
        proc = subprocess.run(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env(), timeout=300
        )
        assert proc.returncode == 0, proc.stdout[-3000:]
        return proc.stdout

    phase1_log = train(1)
    init = subprocess.run(mat.init_command(run), capture_output=True, text=True, env=clean_env(), timeout=120)
    assert init.returncode == 0, init.stderr[-3000:]
    phase2_log = train(2)

    lrs1, lrs2 = logged_lrs(phase1_log), logged_lrs(phase2_log)
    assert len(lrs1) >= 10
    assert lrs2 == lrs1, "phase 2 must rerun the same fresh schedule (warmup, explore, decay to 0)"
    assert lrs1[max(lrs1)] == 0 and lrs1[1] == pytest.approx(1e-7 + (1e-3 - 1e-7) / 3, rel=1e-5)

    phase1_ckpt = run.phase_dir(1) / "checkpoint_best.pt"
    init_ckpt = run.init_checkpoint
    assert set(torch.serialization.get_unsafe_globals_in_checkpoint(init_ckpt)) <= {"argparse.Namespace"}
    (model1,), _, task1 = checkpoint_utils.load_model_ensemble_and_task([str(phase1_ckpt)])
    (model2,), _, _ = checkpoint_utils.load_model_ensemble_and_task([str(init_ckpt)])
    assert len(model2.encoder.layers[0].self_attn.branches) == 3
    assert len(model2.decoder.layers[0].encoder_attn.branches) == 3
    state = torch.load(init_ckpt, weights_only=True)
    assert state["last_optimizer_state"] is None and state["optimizer_history"][-1]["num_updates"] == 0
    assert state["extra_state"]["train_iterator"]["epoch"] == 1 and "best" not in state["extra_state"]
    task1.load_dataset("test")
    sample = task1.dataset("test").collater([task1.dataset("test")[i] for i in range(8)])
    model1.eval()
    model2.eval()
    with torch.no_grad():
        out1 = model1(**sample["net_input"])[0]
        out2 = model2(**sample["net_input"])[0]
    assert torch.allclose(out1, out2, atol=1e-5), (out1 - out2).abs().max()

    command = mat.generate(run, 2)
    generate = subprocess.run(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env(), timeout=300
    )
    assert generate.returncode == 0, generate.stdout[-3000:]
    hypotheses = [line for line in generate.stdout.splitlines() if line.startswith("H-")]
    assert len(hypotheses) == 20
    assert "Exception in thread" not in phase1_log + phase2_log + generate.stdout


@pytest.mark.slow
def test_demo_runs_both_phases_for_both_schedules(tmp_path, capsys, monkeypatch):
    """The demo path end to end at a tiny size: embedded corpus -> BPE -> fairseq-preprocess ->
    for knee and inverse_sqrt: phase 1, knee-mat-init, phase 2, fairseq-generate + BLEU per phase."""
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    updates, heldout = 8, 16
    argv = [
        "--task",
        "demo",
        "--max-updates",
        str(updates),
        "--train-pairs",
        "200",
        "--heldout-pairs",
        str(heldout),
        "--bpe-symbols",
        "200",
        "--work-dir",
        str(tmp_path),
        "--cpu",
        "--fairseq-args",
        "--log-interval 1 --save-interval-updates 4",
    ]
    assert mat.main(argv) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][2:]
    assert [row.split("|")[1].strip() for row in rows] == [
        "knee phase 1",
        "knee phase 2",
        "inverse_sqrt phase 1",
        "inverse_sqrt phase 2",
    ]
    results = {(r.label, r.seed): r for r in mat.read_results(tmp_path)}
    for schedule in mat.SCHEDULES:
        phase1, phase2 = results[(f"{schedule} phase 1", 1)], results[(f"{schedule} phase 2", 1)]
        assert phase1.updates == phase2.updates == updates
        assert phase2.lr_curve == phase1.lr_curve, "phase 2 reruns the schedule from its start"
        for result in (phase1, phase2):
            assert result.bleu_tokenized is not None and result.bleu_detokenized is not None
        run_dir = tmp_path / "checkpoints" / f"{schedule}-seed1"
        for phase in (1, 2):
            hypotheses = [
                line
                for line in (run_dir / f"phase{phase}" / "generate-test.txt").read_text().splitlines()
                if line.startswith("H-")
            ]
            assert len(hypotheses) == heldout
    knee_lrs = dict(results[("knee phase 1", 1)].lr_curve)
    assert knee_lrs[updates] == 0 and knee_lrs[updates // 2] == pytest.approx(mat.TASKS["demo"].task.lr, rel=1e-4)
