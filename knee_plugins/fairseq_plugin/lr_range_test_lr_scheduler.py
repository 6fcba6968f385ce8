"""``--lr-scheduler lr_range_test``: an LR range test run by fairseq-train itself.

The LR of update ``t + 1`` (``t`` updates done) is ``--start-lr · (--end-lr / --start-lr)^(t / (N − 1))``
with ``N = --range-test-updates``: an exponential ramp that reaches ``--end-lr`` at update ``N``,
the ramp of :func:`knee_plugins.lr_range_test.lr_range_test`. After each update the scheduler reads
the training loss fairseq logged (the criterion's ``loss``, the same on every worker), smooths it
with the factor ``--loss-smoothing``, and ends training once the smoothed loss exceeds
``--diverge-threshold`` times its minimum or the ramp is done: it lowers the run's
``--max-update`` to the current update, so fairseq-train stops as it does at its budget. The curve,
the suggestion and its rule go to ``lr_range_test.json`` and ``lr_range_test.png`` in
``--range-test-dir`` (default ``--save-dir``); they are also rewritten at the end of each epoch.

fairseq logs an update's loss after it has set the next update's LR, so the scheduler sees each
loss one update late and the last update's loss not at all: the curve holds ``N − 1`` points,
each the loss computed right before the update made with that point's LR (torch-lr-finder's
pairing). Run it as its own short run from the weights you want to test (``--no-save``, or a
separate ``--save-dir``), then train with the LR you choose.
"""

import logging
import math
from dataclasses import dataclass, field

import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics
from fairseq.optim.lr_scheduler import FairseqLRScheduler, register_lr_scheduler
from omegaconf import II, DictConfig, OmegaConf

from ..lr_range_test import LRRangeTestResult, smooth

logger = logging.getLogger(__name__)


@dataclass
class LRRangeTestLRScheduleConfig(FairseqDataclass):
    start_lr: float = field(default=1e-7, metadata={"help": "LR of the first update of the ramp"})
    end_lr: float = field(default=10.0, metadata={"help": "LR of the last update of the ramp"})
    range_test_updates: int = field(
        default=100,
        metadata={"help": "updates of the exponential ramp from --start-lr to --end-lr; training stops after them"},
    )
    loss_smoothing: float = field(
        default=0.05,
        metadata={"help": "moving-average factor of the training loss, in [0, 1): s = f * loss + (1 - f) * s"},
    )
    diverge_threshold: float = field(
        default=5.0,
        metadata={"help": "stop once the smoothed loss exceeds this multiple of its minimum"},
    )
    suggestion_skip_start: int = field(
        default=10, metadata={"help": "points at the start of the curve that the suggestion ignores"}
    )
    suggestion_skip_end: int = field(
        default=5, metadata={"help": "points at the end of the curve that the suggestion ignores"}
    )
    range_test_dir: str = field(
        default="",
        metadata={"help": "directory for lr_range_test.json and lr_range_test.png (default: --save-dir)"},
    )
    save_dir: str = II("checkpoint.save_dir")


@register_lr_scheduler("lr_range_test", dataclass=LRRangeTestLRScheduleConfig)
class LRRangeTestLRSchedule(FairseqLRScheduler):
    """Ramp the LR exponentially, record the smoothed loss, stop on divergence (see the module docstring)."""

    def __init__(self, cfg: LRRangeTestLRScheduleConfig, optimizer):
        super().__init__(cfg, optimizer)
        if not 0 < cfg.start_lr < cfg.end_lr:
            raise ValueError(
                f"--start-lr and --end-lr need 0 < start < end, got --start-lr {cfg.start_lr} --end-lr {cfg.end_lr}"
            )
        if cfg.range_test_updates < 2:
            raise ValueError(f"--range-test-updates must be >= 2, got {cfg.range_test_updates}")
        if not cfg.diverge_threshold > 1:
            raise ValueError(f"--diverge-threshold must be > 1, got {cfg.diverge_threshold}")
        if cfg.suggestion_skip_start < 0 or cfg.suggestion_skip_end < 0:
            raise ValueError(
                f"--suggestion-skip-start and --suggestion-skip-end must be >= 0, "
                f"got {cfg.suggestion_skip_start} and {cfg.suggestion_skip_end}"
            )
        smooth([], cfg.loss_smoothing)
        self.lrs: list[float] = []
        self.raw_losses: list[float] = []
        self.last_update = 0
        self.stopped = False
        self.optimizer.set_lr(self.lr_at(0))

    def lr_at(self, num_updates: int) -> float:
        """The LR of update ``num_updates + 1``."""
        cfg = self.cfg
        t = min(num_updates, cfg.range_test_updates - 1)
        return cfg.start_lr * (cfg.end_lr / cfg.start_lr) ** (t / (cfg.range_test_updates - 1))

    def state_dict(self):
        return {"best": self.best, "lrs": self.lrs, "raw_losses": self.raw_losses, "last_update": self.last_update}

    def load_state_dict(self, state_dict):
        self.best = state_dict.get("best")
        self.lrs = list(state_dict.get("lrs", []))
        self.raw_losses = list(state_dict.get("raw_losses", []))
        self.last_update = int(state_dict.get("last_update", 0))

    def result(self) -> LRRangeTestResult:
        cfg = self.cfg
        return LRRangeTestResult(
            lrs=list(self.lrs),
            losses=smooth(self.raw_losses, cfg.loss_smoothing),
            start_lr=cfg.start_lr,
            end_lr=cfg.end_lr,
            num_iter=cfg.range_test_updates,
            smoothing=cfg.loss_smoothing,
            diverge_threshold=cfg.diverge_threshold,
            skip_start=cfg.suggestion_skip_start,
            skip_end=cfg.suggestion_skip_end,
            extra={"host": "fairseq-train", "raw_losses": list(self.raw_losses)},
        )

    def step(self, epoch, val_loss=None):
        super().step(epoch, val_loss)
        self._save()

    def step_update(self, num_updates):
        if num_updates > self.last_update:
            self.last_update = num_updates
            self._record(num_updates)
        self.optimizer.set_lr(self.lr_at(num_updates))
        return self.optimizer.get_lr()

    def _record(self, num_updates: int) -> None:
        # At this call the newest logged loss is update num_updates - 1's, computed before that
        # update, which used the LR of point num_updates - 2.
        meter = metrics.get_meter("default", "loss")
        if num_updates < 2 or meter is None or meter.val is None or self.stopped:
            return
        self.lrs.append(self.lr_at(num_updates - 2))
        self.raw_losses.append(float(meter.val))
        smoothed = smooth(self.raw_losses, self.cfg.loss_smoothing)
        diverged = not math.isfinite(smoothed[-1]) or smoothed[-1] > self.cfg.diverge_threshold * min(smoothed)
        if diverged or num_updates >= self.cfg.range_test_updates:
            reason = "the smoothed loss diverged" if diverged else "the ramp is done"
            self._stop(num_updates, reason)

    def _stop(self, num_updates: int, reason: str) -> None:
        self.stopped = True
        result = self._save()
        logger.info(
            f"LR range test: {reason} at update {num_updates} (LR {self.lrs[-1]:.3g}); suggestion "
            f"{result.suggestion} by the rule: {result.rule}"
        )
        # The scheduler's config hangs off the run's (fairseq's merge_with_parent keeps the parent),
        # and fairseq-train checks that config's --max-update after every update.
        root = self.cfg._get_root() if isinstance(self.cfg, DictConfig) else None
        if root is not None and OmegaConf.select(root, "optimization.max_update") is not None:
            OmegaConf.update(root, "optimization.max_update", num_updates)
        else:
            logger.warning("LR range test: no run config to end; the LR stays at --end-lr")

    def _save(self) -> LRRangeTestResult:
        result = self.result()
        if (
            torch.distributed.is_available()
            and torch.distributed.is_initialized()
            and torch.distributed.get_rank() != 0
        ):
            return result
        if self.lrs:
            path = result.save(self.cfg.range_test_dir or self.cfg.save_dir)
            logger.info(f"LR range test: {len(self.lrs)} points written to {path}")
        return result
