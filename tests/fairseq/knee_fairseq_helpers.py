"""Helpers of the fairseq plugin tests: running the CLIs, a tiny model, parsing the json log,
building the plugin's schedulers in-process."""

import torch
from fairseq.optim import build_optimizer
from fairseq.optim.lr_scheduler import LR_SCHEDULER_DATACLASS_REGISTRY, build_lr_scheduler
from omegaconf import OmegaConf

from scripts.common.fairseq_cli import BIN, TINY_MODEL, clean_env, run_cli, train_records  # noqa: F401
from scripts.common.fairseq_cli import write_tiny_corpus as write_corpus  # noqa: F401

PEAK_LR = 1e-3


def logged_lrs(output: str) -> dict[int, float]:
    """``{num_updates: lr}``: the LR fairseq logs after each update (the next update's LR)."""
    return {int(r["num_updates"]): float(r["lr"]) for r in train_records(output)}


def updates_in_epoch(output: str, epoch: int = 1) -> int:
    return sum(1 for r in train_records(output) if int(r["epoch"]) == epoch)


def as_logged(value: float) -> float:
    """fairseq's json log prints floats with ``{:g}`` (6 significant digits)."""
    return float(f"{value:g}")


LR = 10.0


def make(scheduler: str, optimizer: str = "radam", lr: float = LR, max_update: int = 0,
         max_epoch: int = 0, update_freq=(1,), **options):  # fmt: skip
    """Build ``scheduler`` as fairseq does, on an optimizer over one parameter."""
    lrs = lr if isinstance(lr, list) else [lr]
    globals_ = {"lr": lrs, "max_update": max_update, "max_epoch": max_epoch,
                "update_freq": list(update_freq), "skip_remainder_batch": False}  # fmt: skip
    fields = LR_SCHEDULER_DATACLASS_REGISTRY[scheduler].__dataclass_fields__
    opt = build_optimizer(OmegaConf.create({"_name": optimizer, "lr": lrs[:1]}), [torch.nn.Parameter(torch.zeros(2))])
    globals_ = {k: v for k, v in globals_.items() if k in fields}
    cfg = OmegaConf.create({"_name": scheduler, **globals_, **options})
    return build_lr_scheduler(cfg, opt), opt


def trace(scheduler, steps):
    return [scheduler.step_update(t) for t in steps]
