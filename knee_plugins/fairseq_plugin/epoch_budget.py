"""Training budgets in updates for fairseq LR schedulers, including ``--max-epoch`` budgets.

fairseq's stock schedulers need ``--max-update``: they are built before the data is, and never
learn how many updates an epoch has. :class:`EpochAwareLRScheduler` does learn it, from the
plugin's patch ``epoch_budget`` (:mod:`.patches.epoch_budget`): whenever fairseq builds the
training iterator (before the first update of a run, on resume, and at every new epoch),
:meth:`~EpochAwareLRScheduler.set_epoch_length` receives the number of batches one worker sees
in that epoch. With update frequency ``F`` one epoch is ``ceil(batches / F)`` updates (``floor``
with ``--skip-remainder-batch``), exactly what fairseq's ``GroupedIterator`` yields, so
``--max-epoch N`` is a budget of ``N`` such epochs.

The epoch length is kept in the scheduler's ``state_dict``: a resumed run keeps the schedule it
started with, and the LR stays a pure function of the update count. Without the patch, budgets
in epochs fail with a clear error.
"""

import logging
from dataclasses import dataclass, field
from typing import Any, List, Optional

from fairseq.dataclass import FairseqDataclass
from fairseq.optim.lr_scheduler import FairseqLRScheduler
from omegaconf import II

from ..schedule import resolve_steps, updates_per_epoch
from . import patches

logger = logging.getLogger(__name__)


@dataclass
class EpochBudgetConfig(FairseqDataclass):
    """Budget fields shared by the plugin's schedulers (links to the global options)."""

    total_num_update: Optional[int] = field(
        default=None,
        metadata={
            "help": "total number of updates the schedule spans; defaults to --max-update, or "
            "with only --max-epoch to max-epoch x updates per epoch (the smaller of the two "
            "when both are set, since training stops at the first)"
        },
    )
    lr: List[float] = II("optimization.lr")
    max_update: int = II("optimization.max_update")
    max_epoch: int = II("optimization.max_epoch")
    update_freq: List[int] = II("optimization.update_freq")
    skip_remainder_batch: bool = II("optimization.skip_remainder_batch")


def fairseq_updates_per_epoch(num_batches: int, update_freq: int, skip_remainder_batch: bool) -> int:
    """Updates fairseq-train makes in an epoch of ``num_batches`` batches (per worker).

    ``ceil(num_batches / update_freq)``; with ``--skip-remainder-batch`` fairseq 0.12 first drops
    the epoch's last batch, full or not (``EpochBatchIterator``), then the last incomplete group of
    ``update_freq`` batches (``GroupedIterator``): ``(num_batches - 1) // update_freq``.
    """
    if skip_remainder_batch:
        return updates_per_epoch(max(0, num_batches - 1), update_freq, drop_remainder=True)
    return updates_per_epoch(num_batches, update_freq)


class EpochAwareLRScheduler(FairseqLRScheduler):
    """Base for schedulers whose budget may be given in epochs.

    Subclasses implement :meth:`build_schedule` (called once the budget in updates is known) and
    :meth:`lr_at` (a pure function of the update count).
    """

    def __init__(self, cfg: EpochBudgetConfig, optimizer) -> None:
        super().__init__(cfg, optimizer)
        lrs = list(cfg.lr) if not isinstance(cfg.lr, (int, float)) else [cfg.lr]
        if len(lrs) != 1:
            raise ValueError(
                f"--lr must be a single value with --lr-scheduler {self.scheduler_name}, got "
                f"{lrs}; the schedule shapes the LR itself (use --lr-scheduler fixed for a "
                "per-epoch list)"
            )
        self.peak_lr = float(lrs[0])
        if not self.peak_lr > 0:
            raise ValueError(
                f"--lr must be > 0 with --lr-scheduler {self.scheduler_name} (it is the seed LR), got {lrs[0]}"
            )
        if cfg.total_num_update is not None and cfg.total_num_update <= 0:
            raise ValueError(f"--total-num-update must be > 0, got {cfg.total_num_update}")
        for option, value in (("--max-update", cfg.max_update), ("--max-epoch", cfg.max_epoch)):
            if value < 0:
                raise ValueError(f"{option} must be >= 0 (0: no limit), got {value}")
        if cfg.total_num_update is None and cfg.max_update <= 0 and cfg.max_epoch <= 0:
            raise ValueError(
                f"--lr-scheduler {self.scheduler_name} needs a training budget: pass "
                "--max-update, --max-epoch or --total-num-update"
            )
        self.updates_per_epoch: Optional[int] = None
        self.num_updates = 0
        self.schedule: Any = None  # what build_schedule returns, once the budget is known
        self.check_options()
        if not self.needs_epoch_length():
            self._build()

    @property
    def scheduler_name(self) -> str:
        return getattr(self.cfg, "_name", None) or type(self).__name__

    def check_options(self) -> None:
        """Raise ``ValueError`` for bad scheduler options (runs before any schedule is built)."""

    def needs_epoch_length(self) -> bool:
        """Whether the budget or a duration is in epochs (so the epoch length is required)."""
        return self.cfg.total_num_update is None and self.cfg.max_epoch > 0

    def total_updates(self) -> int:
        """The budget ``T`` in updates (the smaller of the update and epoch budgets)."""
        cfg = self.cfg
        if cfg.total_num_update is not None:
            return int(cfg.total_num_update)
        budgets = []
        if cfg.max_update > 0:
            budgets.append(int(cfg.max_update))
        if cfg.max_epoch > 0:
            budgets.append(self.epochs_to_updates(cfg.max_epoch, "--max-epoch"))
        return min(budgets)

    def epochs_to_updates(self, epochs: float, option: str) -> int:
        return resolve_steps(f"{epochs}ep", name=option, steps_per_epoch=self.updates_per_epoch)

    def budget_description(self) -> str:
        cfg = self.cfg
        if cfg.total_num_update is not None:
            return f"--total-num-update {cfg.total_num_update}"
        parts = []
        if cfg.max_update > 0:
            parts.append(f"--max-update {cfg.max_update}")
        if cfg.max_epoch > 0:
            parts.append(f"--max-epoch {cfg.max_epoch} x {self.updates_per_epoch} updates per epoch")
        return " and ".join(parts)

    def build_schedule(self):
        raise NotImplementedError

    def lr_at(self, num_updates: int) -> float:
        raise NotImplementedError

    def _build(self) -> None:
        self.schedule = self.build_schedule()
        self.step_update(self.num_updates)

    def set_epoch_length(self, epoch: int, num_batches: int) -> None:
        """Receive the number of batches per worker of ``epoch`` (from the training iterator)."""
        if not self.needs_epoch_length():
            return
        freqs = list(self.cfg.update_freq)
        if len(set(freqs)) > 1:
            raise ValueError(
                f"--lr-scheduler {self.scheduler_name} with epoch-based durations needs a constant "
                f"--update-freq, got {freqs}; give the durations in updates instead"
            )
        length = fairseq_updates_per_epoch(num_batches, int(freqs[0]), bool(self.cfg.skip_remainder_batch))
        if length <= 0:
            raise ValueError(
                f"epoch {epoch} has no updates ({num_batches} batches, --update-freq {freqs[0]}"
                f"{', --skip-remainder-batch' if self.cfg.skip_remainder_batch else ''}); the "
                f"epoch-based durations of --lr-scheduler {self.scheduler_name} "
                f"({', '.join(self.epoch_options())}) would be empty"
            )
        if self.updates_per_epoch is None:
            self.updates_per_epoch = length
            self._build()
        elif length != self.updates_per_epoch:
            logger.warning(
                "epoch %d has %d updates, but the %s schedule was sized with %d updates per "
                "epoch; keeping that size so that the LR continues smoothly",
                epoch,
                length,
                self.scheduler_name,
                self.updates_per_epoch,
            )

    def state_dict(self):
        return {"best": self.best, "updates_per_epoch": self.updates_per_epoch}

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        stored = state_dict.get("updates_per_epoch")
        if stored is not None and self.needs_epoch_length():
            self.updates_per_epoch = int(stored)
            self._build()

    def epoch_options(self) -> List[str]:
        """The options, as typed, that are counted in epochs."""
        if self.cfg.total_num_update is None and self.cfg.max_epoch > 0:
            return [f"--max-epoch {self.cfg.max_epoch}"]
        return []

    def step_begin_epoch(self, epoch):
        if self.schedule is None:
            raise ValueError(self._unknown_epoch_length())
        return self.optimizer.get_lr()

    def _unknown_epoch_length(self) -> str:
        if patches.applied("epoch_budget"):
            why = (
                "it comes from fairseq's Trainer.get_train_iterator, which has not built the "
                "training iterator yet (outside fairseq-train?)"
            )
        else:
            state = patches.status().get("epoch_budget", "not installed")
            why = f"the plugin's 'epoch_budget' patch of fairseq, which reports it, is not in effect ({state})"
        return (
            f"--lr-scheduler {self.scheduler_name} with {' and '.join(self.epoch_options())}: "
            f"the number of updates per epoch is unknown: {why}. Give the budget and durations "
            "in updates instead (--max-update or --total-num-update; --explore-updates or "
            "--explore-ratio)"
        )

    def step(self, epoch, val_loss=None):
        super().step(epoch, val_loss)
        return self.optimizer.get_lr()

    def step_update(self, num_updates):
        """Set the LR for the update after ``num_updates`` updates."""
        self.num_updates = num_updates
        if self.schedule is None:
            return self.optimizer.get_lr()
        self.optimizer.set_lr(self.lr_at(num_updates))
        return self.optimizer.get_lr()
