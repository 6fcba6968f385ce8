"""Proximal initialisation of MAT (``knee-mat-init``): a phase-1 checkpoint → a phase-2 one.

``knee-mat-init PHASE1.pt PHASE2.pt --branches 3`` copies every attention of a single-branch
model (``transformer_mb`` with one branch, or fairseq's plain ``transformer``) into each of the N
branches of the phase-2 model, and each FFN into the ``--ffn-branches`` FFN branches; every other
weight is kept as is. Because the merge is the average of the branches (docs/mat.md), the
phase-2 model computes exactly what the phase-1 model computed until training moves the branches
apart. The saved model options get the new branch counts, and the optimizer, the LR scheduler,
the update counter, the epoch and the best-valid record are reset, so that phase 2 starts a fresh
schedule whether the file is given to ``fairseq-train --finetune-from-model`` or put into the
phase-2 save directory as ``checkpoint_last.pt``.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

logger = logging.getLogger(__name__)

_BRANCHED_KEY = re.compile(
    r"^(?P<prefix>(?:.*\.)?(?P<side>encoder|decoder)\.layers\.\d+\.)"
    r"(?P<module>self_attn|encoder_attn|fc1|fc2)\.(?:branches\.(?P<branch>\d+)\.)?(?P<param>.+)$"
)


def branch_state_dict(
    model_state: Mapping[str, torch.Tensor],
    branches: Mapping[str, int],
    ffn_branches: Mapping[str, int],
) -> dict[str, torch.Tensor]:
    """The state dict of the multi-branch model whose every attention / FFN branch is a copy of
    the single-branch ``model_state``'s attention / FFN.

    Args:
        model_state: a ``transformer`` or single-branch ``transformer_mb`` state dict.
        branches: attention branches per side, ``{"encoder": N, "decoder": N}``.
        ffn_branches: FFN branches per side.
    """
    new_state: dict[str, torch.Tensor] = {}
    for key, tensor in model_state.items():
        match = _BRANCHED_KEY.match(key)
        if match is None:
            new_state[key] = tensor
            continue
        if match["branch"] not in (None, "0"):
            raise ValueError(
                f"{key}: the phase-1 model already has several branches; proximal "
                "initialisation starts from a single-branch model"
            )
        side, module = match["side"], match["module"]
        count = ffn_branches[side] if module in ("fc1", "fc2") else branches[side]
        for index in range(count):
            new_state[f"{match['prefix']}{module}.branches.{index}.{match['param']}"] = tensor.clone()
    return new_state


def _get(options: Any, name: str, default: Any = None) -> Any:
    if isinstance(options, Mapping):
        return options.get(name, default)
    return getattr(options, name, default)


def _set(options: Any, name: str, value: Any) -> None:
    if isinstance(options, dict):
        options[name] = value
    else:
        setattr(options, name, value)


def _model_options(checkpoint: dict) -> list[Any]:
    """The objects holding the model options in a fairseq checkpoint (cfg.model and/or args)."""
    found = []
    cfg = checkpoint.get("cfg")
    if cfg is not None and _get(cfg, "model") is not None:
        found.append(_get(cfg, "model"))
    if checkpoint.get("args") is not None:
        found.append(checkpoint["args"])
    if not found:
        raise ValueError("the checkpoint holds no model options (neither cfg.model nor args)")
    return found


def _multi_branch_arch(arch: str) -> str:
    """The ``transformer_mb`` architecture for a phase-1 ``arch``."""
    from fairseq.models import ARCH_MODEL_REGISTRY

    from .models.transformer_mb import TransformerMBModel

    model = ARCH_MODEL_REGISTRY.get(arch)
    if model is not None and issubclass(model, TransformerMBModel):
        return arch
    if arch == "transformer" or arch.startswith("transformer_"):
        candidate = "transformer_mb" + arch[len("transformer") :]
        return candidate if candidate in ARCH_MODEL_REGISTRY else "transformer_mb"
    raise ValueError(f"proximal initialisation needs a transformer or transformer_mb checkpoint, got --arch {arch}")


def proximal_init(
    checkpoint: dict,
    *,
    encoder_branches: int,
    decoder_branches: int,
    encoder_ffn_branches: Optional[int] = None,
    decoder_ffn_branches: Optional[int] = None,
    branch_dropout: Optional[float] = None,
) -> dict:
    """Turn a loaded phase-1 checkpoint into the phase-2 checkpoint, in place, and return it.

    FFN branch counts default to the phase-1 model's (1 for a plain transformer); the branch
    dropout stored in the options defaults to the phase-1 value (0 for a plain transformer).
    """
    counts = {
        "encoder_branches": encoder_branches,
        "decoder_branches": decoder_branches,
        "encoder_ffn_branches": encoder_ffn_branches,
        "decoder_ffn_branches": decoder_ffn_branches,
    }
    for name, value in counts.items():
        if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
            raise ValueError(f"--{name.replace('_', '-')} must be a whole number >= 1, got {value!r}")
    if branch_dropout is not None and not 0.0 <= branch_dropout < 1.0:
        raise ValueError(f"--branch-dropout must lie in [0, 1), got {branch_dropout!r}")

    all_options = _model_options(checkpoint)
    options = all_options[0]
    arch = _get(options, "arch") or _get(options, "_name")
    if arch is None:
        raise ValueError("the checkpoint's model options name no architecture")
    new_arch = _multi_branch_arch(arch)
    for side in ("encoder", "decoder"):
        old = _get(options, f"{side}_branches", 1)
        if old != 1:
            raise ValueError(
                f"the phase-1 model has {old} {side} branches; proximal initialisation starts "
                "from a single-branch model"
            )
    ffn = {
        side: counts[f"{side}_ffn_branches"] or int(_get(options, f"{side}_pffn_branches", 1) or 1)
        for side in ("encoder", "decoder")
    }
    attention = {"encoder": encoder_branches, "decoder": decoder_branches}

    checkpoint["model"] = branch_state_dict(checkpoint["model"], attention, ffn)
    dropout = branch_dropout if branch_dropout is not None else float(_get(options, "branch_dropout", 0.0) or 0.0)
    for target in all_options:
        for name in ("arch", "_name"):
            if _get(target, name) is not None:
                _set(target, name, new_arch)
        for side in ("encoder", "decoder"):
            _set(target, f"{side}_branches", attention[side])
            _set(target, f"{side}_pffn_branches", ffn[side])
        _set(target, "branch_dropout", dropout)
        if branch_dropout is not None or _get(target, "pffn_branch_dropout") is None:
            _set(target, "pffn_branch_dropout", dropout)
        if _get(target, "join_pffn") is None:
            _set(target, "join_pffn", True)
    reset_training_state(checkpoint)
    logger.info("proximal init: %s -> %s, attention branches %s, FFN branches %s", arch, new_arch, attention, ffn)
    return checkpoint


def reset_training_state(checkpoint: dict) -> None:
    """Drop the optimizer and LR-scheduler states, the update and epoch counters and the
    best-valid record, leaving the minimal structure fairseq 0.12 expects when it loads."""
    history = checkpoint.get("optimizer_history") or [{}]
    last = history[-1]
    checkpoint["optimizer_history"] = [
        {
            "criterion_name": last.get("criterion_name", "LabelSmoothedCrossEntropyCriterion"),
            "optimizer_name": last.get("optimizer_name", "FairseqAdam"),
            "lr_scheduler_state": {"best": None},
            "num_updates": 0,
        }
    ]
    checkpoint["last_optimizer_state"] = None
    checkpoint["extra_state"] = {
        "train_iterator": {"version": 2, "epoch": 1, "iterations_in_epoch": 0, "shuffle": True},
    }


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="knee-mat-init",
        description="Proximal initialisation of MAT: build the phase-2 multi-branch checkpoint from a "
        "phase-1 single-branch one (every branch a copy), with a fresh optimizer and schedule.",
    )
    parser.add_argument("phase1", type=Path, help="phase-1 checkpoint (transformer or 1-branch transformer_mb)")
    parser.add_argument("phase2", type=Path, help="where to write the phase-2 checkpoint")
    parser.add_argument(
        "--branches", type=int, default=None, help="attention branches of the phase-2 model, encoder and decoder (N_a)"
    )
    parser.add_argument(
        "--encoder-branches", type=int, default=None, help="encoder attention branches (default: --branches)"
    )
    parser.add_argument(
        "--decoder-branches", type=int, default=None, help="decoder attention branches (default: --branches)"
    )
    parser.add_argument(
        "--ffn-branches",
        type=int,
        default=None,
        help="FFN branches, encoder and decoder (default: the phase-1 model's, usually 1)",
    )
    parser.add_argument(
        "--branch-dropout",
        type=float,
        default=None,
        help="drop-branch probability stored in the phase-2 options (default: the phase-1 "
        "value; the phase-2 fairseq-train command sets its own)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the options, print what would be written and exit without reading PHASE1",
    )
    args = parser.parse_args(argv)
    for name in ("branches", "encoder_branches", "decoder_branches", "ffn_branches"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.encoder_branches is None:
        args.encoder_branches = args.branches
    if args.decoder_branches is None:
        args.decoder_branches = args.branches
    if args.encoder_branches is None or args.decoder_branches is None:
        parser.error("--branches (or both --encoder-branches and --decoder-branches) is required")
    if args.branch_dropout is not None and not 0.0 <= args.branch_dropout < 1.0:
        parser.error(f"--branch-dropout must lie in [0, 1), got {args.branch_dropout:g}")
    if args.phase1.resolve() == args.phase2.resolve():
        parser.error("PHASE2 must differ from PHASE1 (the phase-1 checkpoint is kept)")
    if not args.dry_run and not args.phase1.is_file():
        parser.error(f"PHASE1 {args.phase1} does not exist")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ffn = "as in PHASE1" if args.ffn_branches is None else str(args.ffn_branches)
    plan = (
        f"{args.phase1} -> {args.phase2}: every attention copied into {args.encoder_branches} encoder / "
        f"{args.decoder_branches} decoder branches, FFN branches {ffn}; optimizer, LR scheduler, update "
        "and epoch counters reset"
    )
    if args.dry_run:
        print(plan)
        return 0
    logger.info("%s", plan)
    from fairseq.checkpoint_utils import torch_persistent_save

    checkpoint = torch.load(args.phase1, map_location="cpu", weights_only=True)
    try:
        proximal_init(
            checkpoint,
            encoder_branches=args.encoder_branches,
            decoder_branches=args.decoder_branches,
            encoder_ffn_branches=args.ffn_branches,
            decoder_ffn_branches=args.ffn_branches,
            branch_dropout=args.branch_dropout,
        )
    except ValueError as error:
        raise SystemExit(f"knee-mat-init: {args.phase1}: {error}") from None
    args.phase2.parent.mkdir(parents=True, exist_ok=True)
    torch_persistent_save(checkpoint, str(args.phase2))
    logger.info("wrote %s", args.phase2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
