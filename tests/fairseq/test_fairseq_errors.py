"""Every invalid fairseq option of the plugin fails with a ValueError naming what the user typed.

One table: the options given (as fairseq's config fields), the epoch length fairseq would report
(``None``: none reported), and the fragments the message must contain: the options as they are
spelled on the command line, with the values typed. test_fairseq_knee_cli.py checks that such
errors stop fairseq-train before its first update.
"""

import pytest
import torch
from fairseq.optim import build_optimizer
from knee_fairseq_helpers import LR, make
from omegaconf import OmegaConf

ERRORS = [
    # scheduler, options, batches per epoch reported, fragments of the message
    ("knee", {"max_update": 10, "warmup_updates": -1}, None, ["--warmup-updates must be >= 0, got -1"]),
    ("knee", {"max_update": 10, "warmup_init_lr": -1.0}, None, ["--warmup-init-lr must be >= 0, got -1.0"]),
    ("knee", {"max_update": 10, "explore_updates": -3}, None, ["--explore-updates must be >= 0, got -3"]),
    ("knee", {"max_update": 10, "explore_epochs": -1.0}, None, ["--explore-epochs must be >= 0, got -1.0"]),
    ("knee", {"max_update": 10, "explore_ratio": 1.5}, None, ["--explore-ratio", "got 1.5", "--explore-updates"]),
    ("knee", {"max_update": 10, "explore_ratio": -0.1}, None, ["--explore-ratio must be >= 0, got -0.1"]),
    ("knee", {"max_update": 10, "explore_ratio": 0.5, "explore_updates": 3}, None,
     ["--explore-updates 3", "--explore-ratio 0.5"]),
    ("knee", {"max_update": 10, "explore_ratio": 0.2, "explore_epochs": 1.0}, None,
     ["--explore-epochs 1.0", "--explore-ratio 0.2"]),
    ("knee", {"max_update": 10, "explore_updates": 11}, None, ["--explore-updates 11", "--max-update 10"]),
    ("knee", {"max_update": 10, "warmup_updates": 6, "explore_updates": 5}, None,
     ["--warmup-updates", "warmup 6", "--explore-updates 5", "--max-update 10"]),
    ("knee", {"max_update": 10, "warmup_updates": 8}, None,
     ["--warmup-updates", "warmup 8", "default --explore-ratio 0.5", "--max-update 10"]),
    ("knee", {"max_update": 10, "total_num_update": 0}, None, ["--total-num-update must be > 0, got 0"]),
    ("knee", {"max_update": 100, "total_num_update": 5, "explore_updates": 6}, None,
     ["--explore-updates 6", "--total-num-update 5"]),
    ("knee", {}, None, ["--max-update, --max-epoch or --total-num-update"]),
    ("knee", {"max_update": -1}, None, ["--max-update must be >= 0", "got -1"]),
    ("knee", {"max_epoch": -2}, None, ["--max-epoch must be >= 0", "got -2"]),
    ("knee", {"max_epoch": 2, "explore_epochs": 3.0}, 10, ["--explore-epochs 3.0", "--max-epoch 2 x 10"]),
    ("knee", {"max_update": 100, "explore_epochs": 1.0, "warmup_updates": 20}, 10,
     ["--explore-epochs 1.0", "--warmup-updates 20"]),
    ("knee", {"max_update": 50, "max_epoch": 2, "explore_updates": 25}, 10,
     ["--explore-updates 25", "--max-update 50 and --max-epoch 2 x 10"]),
    ("knee", {"max_epoch": 2, "update_freq": (1, 2)}, 10, ["--update-freq", "[1, 2]"]),
    ("knee", {"max_epoch": 2, "update_freq": (4,)}, 0, ["--max-epoch 2", "--update-freq 4"]),
    ("knee", {"max_update": 10, "end_learning_rate": 20.0}, None,
     ["--end-learning-rate", f"--lr {LR}", "got 20.0"]),
    ("knee", {"max_update": 10, "end_lr_ratio": 1.0}, None, ["--end-lr-ratio must be in [0, 1), got 1.0"]),
    ("knee", {"max_update": 10, "end_learning_rate": 1.0, "end_lr_ratio": 0.1}, None,
     ["--end-learning-rate", "--end-lr-ratio"]),
    ("knee", {"max_update": 10, "lr": [1.0, 2.0]}, None, ["--lr must be a single value", "[1.0, 2.0]"]),
    ("knee", {"max_update": 10, "lr": 0.0}, None, ["--lr must be > 0", "got 0.0"]),
    ("one_cycle", {"max_update": 10, "pct_start": 1.0}, None, ["--pct-start must be in (0, 1), got 1.0"]),
    ("one_cycle", {"max_update": 10, "pct_start": 0.5, "three_phase": True}, None,
     ["--pct-start", "--three-phase", "got 0.5"]),
    ("one_cycle", {"max_update": 10, "div_factor": 0.0}, None, ["--div-factor", "got 0.0"]),
    ("one_cycle", {"max_epoch": 3, "total_num_update": -4}, None, ["--total-num-update must be > 0, got -4"]),
    ("radam", {"radam_betas": "(0.9, 1.5)"}, None, ["--radam-betas", "(0.9, 1.5)"]),
    ("radam", {"radam_eps": -1e-8}, None, ["--radam-eps must be >= 0", "got -1e-08"]),
    ("radam", {"weight_decay": -0.1}, None, ["--weight-decay must be >= 0", "got -0.1"]),
]  # fmt: skip


def build(component: str, options: dict, batches_per_epoch: int | None) -> None:
    """Build ``component`` as fairseq does; report one epoch's length if fairseq would."""
    if component == "radam":
        cfg = OmegaConf.create({"_name": "radam", "lr": [LR], **options})
        build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(2))])
        return
    scheduler, _ = make(component, **options)
    if batches_per_epoch is not None:
        scheduler.set_epoch_length(1, batches_per_epoch)


def case_id(case) -> str:
    component, options, batches, _ = case
    shown = " ".join(f"{k}={v}" for k, v in options.items()) or "no budget"
    return f"{component} {shown}" + ("" if batches is None else f" ({batches} batches)")


@pytest.mark.parametrize("case", ERRORS, ids=[case_id(c) for c in ERRORS])
def test_error_names_the_options_typed(case):
    component, options, batches_per_epoch, fragments = case
    with pytest.raises(ValueError) as info:
        build(component, options, batches_per_epoch)
    message = str(info.value)
    missing = [fragment for fragment in fragments if fragment not in message]
    assert not missing, f"{missing} not in: {message}"


def test_an_epoch_budget_without_epoch_length_names_the_epoch_options():
    """fairseq asks for the first epoch's LR before any update: the budget must be known then."""
    scheduler, _ = make("knee", max_epoch=2, explore_epochs=1.0)
    with pytest.raises(ValueError) as info:
        scheduler.step_begin_epoch(1)
    message = str(info.value)
    assert "--max-epoch 2 and --explore-epochs 1.0" in message
    assert "updates per epoch is unknown" in message and "--max-update" in message
