"""``--lr-scheduler knee``: the Knee (explore-exploit) schedule for fairseq.

The math is :func:`knee_plugins.schedule.knee_factor`; this module only maps fairseq's options
onto it. With seed LR ``--lr`` = ``η``, after ``t`` updates::

    lr(t) = init + (η - init) · m(t)    during warmup (init = --warmup-init-lr, 0 by default)
    lr(t) = η · m(t)                    afterwards, down to η · r at the end of the budget

where ``m`` is the Knee multiplier over the budget ``T`` (``--total-num-update``, else
``--max-update``, else ``--max-epoch`` × updates per epoch), warmup ``W`` (``--warmup-updates``),
explore ``E`` (``--explore-updates`` | ``--explore-epochs`` | ``--explore-ratio`` × ``T``,
default ``0.5 T``), floor ``r`` (``--end-lr-ratio``, or ``--end-learning-rate`` / ``η``) and the
decay's shape (``--decay-type linear|cosine|1-sqrt``).
"""

import logging
from dataclasses import asdict, dataclass, field
from typing import List, Optional

from fairseq.dataclass import ChoiceEnum
from fairseq.optim.lr_scheduler import register_lr_scheduler

from ..schedule import DECAY_TYPES, KneeSchedule, resolve_steps
from .epoch_budget import EpochAwareLRScheduler, EpochBudgetConfig

logger = logging.getLogger(__name__)

DEFAULT_EXPLORE_RATIO = 0.5
DECAY_TYPE_CHOICES = ChoiceEnum(list(DECAY_TYPES))


@dataclass
class KneeLRScheduleConfig(EpochBudgetConfig):
    warmup_updates: int = field(
        default=0,
        metadata={"help": "warm the LR up linearly over the first N updates (0: no warmup)"},
    )
    warmup_init_lr: float = field(
        default=0.0,
        metadata={"help": "LR at update 0 when warming up (the Knee schedule starts from 0)"},
    )
    explore_updates: Optional[int] = field(
        default=None,
        metadata={
            "help": "explore (keep --lr constant) for N updates after warmup; give at most one "
            "of --explore-updates, --explore-epochs, --explore-ratio"
        },
    )
    explore_epochs: Optional[float] = field(
        default=None,
        metadata={
            "help": "explore for N epochs (x updates per epoch, counted from the start of "
            "training; warmup is part of them), e.g. 40 of --max-epoch 50"
        },
    )
    explore_ratio: Optional[float] = field(
        default=None,
        metadata={
            "help": "explore for this fraction of the total budget, in [0, 1] "
            f"(default {DEFAULT_EXPLORE_RATIO}, the paper's setting that needs no tuning)"
        },
    )
    end_learning_rate: Optional[float] = field(
        default=None,
        metadata={"help": "LR reached at the end of the budget (default 0, as in the paper)"},
    )
    end_lr_ratio: Optional[float] = field(
        default=None,
        metadata={"help": "LR reached at the end of the budget, as a fraction of --lr, in [0, 1)"},
    )
    decay_type: DECAY_TYPE_CHOICES = field(  # type: ignore[valid-type]  # fairseq's ChoiceEnum idiom
        default="linear",
        metadata={
            "help": "shape of the exploit phase: linear (the paper's), cosine, or 1-sqrt (the cooldown "
            "of WSD schedules); named as transformers' get_wsd_schedule names them"
        },
    )
    anneal_on_budget_change: bool = field(
        default=False,
        metadata={
            "help": "when a run restored from a checkpoint has a new budget (--max-update, --max-epoch, "
            "explore option) and its decay had already begun: decay from the LR it had reached to the new "
            "end instead of refusing the change (while it explores, a new budget needs no option)"
        },
    )


@register_lr_scheduler("knee", dataclass=KneeLRScheduleConfig)
class KneeLRSchedule(EpochAwareLRScheduler):
    """Warm up, explore at the seed LR ``--lr``, then decay to the floor (the Knee), in the shape
    ``--decay-type`` names (linear by default, as in the paper)."""

    def check_options(self) -> None:
        cfg = self.cfg
        given = {
            name: value
            for name, value in (
                ("--explore-updates", cfg.explore_updates),
                ("--explore-epochs", cfg.explore_epochs),
                ("--explore-ratio", cfg.explore_ratio),
            )
            if value is not None
        }
        if len(given) > 1:
            shown = ", ".join(f"{name} {value}" for name, value in given.items())
            raise ValueError(
                f"--lr-scheduler knee takes one of --explore-updates, --explore-epochs, --explore-ratio; got {shown}"
            )
        for name, value in given.items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if cfg.explore_ratio is not None and not 0.0 <= cfg.explore_ratio <= 1.0:
            raise ValueError(
                f"--explore-ratio is a fraction of the budget and must be in [0, 1], got "
                f"{cfg.explore_ratio}; use --explore-updates for a number of updates"
            )
        if cfg.warmup_updates < 0:
            raise ValueError(f"--warmup-updates must be >= 0, got {cfg.warmup_updates}")
        if cfg.warmup_init_lr < 0:
            raise ValueError(
                f"--warmup-init-lr must be >= 0, got {cfg.warmup_init_lr} (knee's warmup starts "
                "from 0 by default; inverse_sqrt's -1 has no meaning here)"
            )
        if cfg.end_learning_rate is not None and cfg.end_lr_ratio is not None:
            raise ValueError("give --end-learning-rate (an LR) or --end-lr-ratio (a fraction of --lr), not both")
        self.end_lr_ratio = self._floor_ratio()

    def needs_epoch_length(self) -> bool:
        return super().needs_epoch_length() or self.cfg.explore_epochs is not None

    def epoch_options(self) -> List[str]:
        options = super().epoch_options()
        if self.cfg.explore_epochs is not None:
            options.append(f"--explore-epochs {self.cfg.explore_epochs}")
        return options

    def _floor_ratio(self) -> float:
        cfg = self.cfg
        if cfg.end_lr_ratio is not None:
            if not 0.0 <= cfg.end_lr_ratio < 1.0:
                raise ValueError(f"--end-lr-ratio must be in [0, 1), got {cfg.end_lr_ratio}")
            return float(cfg.end_lr_ratio)
        end_lr = cfg.end_learning_rate or 0.0
        if not 0.0 <= end_lr < self.peak_lr:
            raise ValueError(f"--end-learning-rate must be >= 0 and below --lr {self.peak_lr}, got {end_lr}")
        return end_lr / self.peak_lr

    def build_schedule(self) -> KneeSchedule:
        cfg = self.cfg
        total = self.total_updates()
        warmup = int(cfg.warmup_updates)
        if cfg.explore_updates is not None:
            explore, source = int(cfg.explore_updates), f"--explore-updates {cfg.explore_updates}"
        elif cfg.explore_epochs is not None:
            # Explore epochs count from the start of training (the paper: "explore till epoch 40").
            explore = self.epochs_to_updates(cfg.explore_epochs, "--explore-epochs") - warmup
            source = (
                f"--explore-epochs {cfg.explore_epochs} x {self.updates_per_epoch} updates per "
                f"epoch - --warmup-updates {warmup}"
            )
            if explore < 0:
                raise ValueError(
                    f"--explore-epochs {cfg.explore_epochs} ({explore + warmup} updates) is shorter "
                    f"than --warmup-updates {warmup}; the explore phase would be negative"
                )
        else:
            ratio = DEFAULT_EXPLORE_RATIO if cfg.explore_ratio is None else cfg.explore_ratio
            explore = resolve_steps(float(ratio), name="--explore-ratio", total_steps=total)
            default = "the default " if cfg.explore_ratio is None else ""
            source = f"{default}--explore-ratio {ratio} x {total}"
        try:
            schedule = KneeSchedule(total, warmup, explore, self.end_lr_ratio, str(cfg.decay_type))
        except ValueError as exc:
            raise ValueError(
                f"--lr-scheduler knee: warmup {warmup} + explore {explore} updates ({source}) "
                f"exceed the budget of {total} updates ({self.budget_description()}); shorten "
                f"--warmup-updates or the explore option, or raise the budget [{exc}]"
            ) from None
        logger.info(
            "Knee schedule: %d updates (%s): warmup %d, explore %d (%s), %s decay %d to %g x lr",
            total,
            self.budget_description(),
            schedule.warmup_steps,
            schedule.explore_steps,
            source,
            schedule.decay_type,
            schedule.decay_steps,
            schedule.min_lr_ratio,
        )
        return self.resume(schedule)

    def state_dict(self):
        state = super().state_dict()
        if self.schedule is not None:
            state["knee_schedule"] = asdict(self.schedule)
            state["num_updates"] = self.num_updates
        return state

    def load_state_dict(self, state_dict) -> None:
        """Restore a checkpoint's scheduler state; its schedule is checked against this run's budget
        (:meth:`knee_plugins.schedule.KneeSchedule.resumed`) before the next update."""
        saved = state_dict.get("knee_schedule")
        if saved is not None:
            self.saved_schedule = (KneeSchedule(**saved), int(state_dict["num_updates"]))
        built = self.schedule
        super().load_state_dict(state_dict)
        if saved is not None and built is not None and self.schedule is built:
            self._build()

    def resume(self, schedule: KneeSchedule) -> KneeSchedule:
        """``schedule`` for a run restored from a checkpoint trained under another budget."""
        saved, step = getattr(self, "saved_schedule", (None, 0))
        if saved is None or saved == schedule:
            return schedule
        resumed = schedule.resumed(
            saved,
            step,
            anneal=bool(self.cfg.anneal_on_budget_change),
            anneal_option="--anneal-on-budget-change",
            seed_lr=self.peak_lr,
        )
        logger.info(
            "Knee schedule changed on resume at update %d: was [%s], now [%s]",
            step,
            saved.describe(),
            resumed.describe(),
        )
        return resumed

    def lr_at(self, num_updates: int) -> float:
        factor = self.schedule.factor(num_updates)
        if self.schedule.phase(num_updates) == "warmup":
            init = self.cfg.warmup_init_lr
            return init + (self.peak_lr - init) * factor
        return self.peak_lr * factor
