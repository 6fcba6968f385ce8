"""HuggingFace adapters: a transformers-style schedule factory and a ``Trainer`` callback."""

from __future__ import annotations

import logging
from dataclasses import asdict
from functools import partial
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState

from .lr_scheduler import apply_learning_rates
from .schedule import (
    Duration,
    KneeSchedule,
    check_decay_type,
    check_fraction,
    check_min_lr_ratio,
    knee_factor,
    resolve_steps,
)

logger = logging.getLogger(__name__)

FACTORY_ARGUMENT_NAMES = {
    "total": "num_training_steps",
    "warmup": "num_warmup_steps",
    "explore": "num_explore_steps",
}
CALLBACK_ARGUMENT_NAMES = {
    "total": "the Trainer's budget (TrainingArguments.max_steps, or num_train_epochs x updates per epoch)",
    "warmup": "TrainingArguments.warmup_steps",
    "explore": "KneeCallback(num_explore_steps)",
    "explore_ratio": "KneeCallback(explore_ratio)",
    "min_lr_ratio": "KneeCallback(min_lr_ratio)",
    "decay_type": "KneeCallback(decay_type)",
}


def _knee_lr_lambda(schedule: KneeSchedule) -> partial:
    """A picklable ``step -> multiplier`` for ``LambdaLR``: the schedule's fields are knee_factor's keywords."""
    return partial(knee_factor, **asdict(schedule))


def get_knee_schedule_with_warmup(
    optimizer: Optimizer,
    num_warmup_steps: Duration,
    num_training_steps: int,
    num_explore_steps: Duration | None = None,
    explore_ratio: float = 0.5,
    min_lr_ratio: float = 0.0,
    last_epoch: int = -1,
    decay_type: str = "linear",
) -> LambdaLR:
    """
    Create a schedule with a learning rate that increases linearly from 0 to the initial lr set in the optimizer
    during a warmup period, stays at it while exploring, then decays (linearly by default, or along `decay_type`)
    to `min_lr_ratio` times the initial lr at `num_training_steps` (the Knee / explore-exploit schedule).

    Step indexing is transformers': the factor is 0 at step 0 (with warmup), 1 at `num_warmup_steps`, and
    `min_lr_ratio` from `num_training_steps` on. With `min_lr_ratio=0` (or no warmup) it equals
    `get_wsd_schedule(num_stable_steps=num_explore_steps, decay_type=decay_type)`; unlike WSD, warmup always
    starts from 0.

    Args:
        optimizer ([`~torch.optim.Optimizer`]):
            The optimizer for which to schedule the learning rate.
        num_warmup_steps (`int`, `float` or `str`):
            The warmup phase: a number of steps (`int`), or a fraction of `num_training_steps` (a `float` in
            [0, 1], or a string such as `"10%"`).
        num_training_steps (`int`):
            The total number of training steps.
        num_explore_steps (`int`, `float` or `str`, *optional*):
            The constant-LR phase after warmup, in steps or as a fraction of `num_training_steps` (as
            `num_warmup_steps`). Wins over `explore_ratio`.
        explore_ratio (`float`, *optional*, defaults to 0.5):
            The explore phase as a fraction of `num_training_steps`, used when `num_explore_steps` is None.
        min_lr_ratio (`float`, *optional*, defaults to 0.0):
            The final learning rate as a ratio of the initial learning rate.
        last_epoch (`int`, *optional*, defaults to -1):
            The index of the last epoch when resuming training.
        decay_type (`str`, *optional*, defaults to `"linear"`):
            The shape of the decay: `"linear"` (the paper's), `"cosine"` or `"1-sqrt"`, as in `get_wsd_schedule`.

    Return:
        `torch.optim.lr_scheduler.LambdaLR` with the appropriate schedule.
    """
    schedule = KneeSchedule.from_durations(
        num_training_steps,
        warmup=num_warmup_steps,
        explore=num_explore_steps,
        explore_ratio=explore_ratio,
        min_lr_ratio=min_lr_ratio,
        decay_type=decay_type,
        names=FACTORY_ARGUMENT_NAMES,
    )
    return LambdaLR(optimizer, _knee_lr_lambda(schedule), last_epoch)


def install_knee_schedule(lr_scheduler: Any, schedule: KneeSchedule) -> LambdaLR:
    """Make an existing ``LambdaLR`` follow ``schedule`` from its current step on.

    The LR becomes ``base_lr * knee_factor(last_epoch)`` at once, so a scheduler restored from a
    checkpoint continues the Knee trajectory where it stopped.
    """
    scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)
    if not isinstance(scheduler, LambdaLR):
        raise ValueError(
            f"KneeCallback needs the Trainer's LambdaLR scheduler, got {type(scheduler).__name__}; "
            "keep lr_scheduler_type at a LambdaLR type such as 'linear' (the default), or drop the "
            "callback and pass optimizers=(optimizer, get_knee_schedule_with_warmup(...)) to the Trainer"
        )
    lr_lambda = _knee_lr_lambda(schedule)
    scheduler.lr_lambdas = [lr_lambda] * len(scheduler.optimizer.param_groups)
    factor = lr_lambda(scheduler.last_epoch)
    apply_learning_rates(scheduler, [base_lr * factor for base_lr in scheduler.base_lrs])
    return scheduler


class KneeCallback(TrainerCallback, ExportableState):
    """Run a stock ``transformers.Trainer`` on the Knee schedule over its real budget.

    At ``on_train_begin`` the Trainer's budget ``state.max_steps`` (optimizer updates, whether set by
    ``max_steps`` or by ``num_train_epochs``, after gradient accumulation) and its warmup
    (``args.get_warmup_steps``) are known: the callback then makes the Trainer's own scheduler follow
    Knee. From there it only observes and logs phase changes; the Trainer steps the scheduler and saves
    it in checkpoints, so ``resume_from_checkpoint`` continues the same trajectory.

    Args:
        explore_ratio (`float`, *optional*, defaults to 0.5):
            Explore phase as a fraction of the budget (the paper's default).
        num_explore_steps (`int`, *optional*):
            Explore phase in optimizer steps; wins over `explore_ratio`.
        min_lr_ratio (`float`, *optional*, defaults to 0.0):
            Final learning rate as a ratio of `learning_rate`.
        decay_type (`str`, *optional*, defaults to `"linear"`):
            The shape of the decay: `"linear"` (the paper's), `"cosine"` or `"1-sqrt"`.
        anneal_on_budget_change (`bool`, *optional*, defaults to `False`):
            When a run resumed from a checkpoint has a new budget (`max_steps` or `num_train_epochs`) and its
            decay had already begun: `False` raises `BudgetChangeError` before the next update; `True` decays
            from the LR it had reached to the new end.

    The schedule is saved in each checkpoint's `trainer_state.json`. Resumed with a new budget while still
    exploring, the run continues exactly as a fresh run with that budget would; with `num_explore_steps`
    ending at the checkpoint's step and `max_steps` = that step + D, it branches a decay of D updates.
    """

    def __init__(
        self,
        explore_ratio: float = 0.5,
        num_explore_steps: int | None = None,
        min_lr_ratio: float = 0.0,
        decay_type: str = "linear",
        anneal_on_budget_change: bool = False,
    ) -> None:
        self.explore_ratio = check_fraction(explore_ratio, "explore_ratio")
        self.num_explore_steps = resolve_steps(num_explore_steps, name="num_explore_steps")
        self.min_lr_ratio = check_min_lr_ratio(min_lr_ratio, "min_lr_ratio")
        self.decay_type = check_decay_type(decay_type, "decay_type")
        self.anneal_on_budget_change = bool(anneal_on_budget_change)
        self.schedule: KneeSchedule | None = None
        self._phase: str | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not state.max_steps or state.max_steps <= 0:
            raise ValueError(
                "KneeCallback cannot size the schedule: the Trainer's budget (state.max_steps) is unknown; "
                "set TrainingArguments.max_steps, or num_train_epochs with a dataset that has a length"
            )
        self.schedule = KneeSchedule.from_durations(
            state.max_steps,
            warmup=args.get_warmup_steps(state.max_steps),
            explore=self.num_explore_steps,
            explore_ratio=self.explore_ratio,
            min_lr_ratio=self.min_lr_ratio,
            decay_type=self.decay_type,
            names=CALLBACK_ARGUMENT_NAMES,
        )
        saved = _saved_schedule(state)
        if saved is not None:
            self.schedule = self.schedule.resumed(
                saved,
                state.global_step,
                anneal=self.anneal_on_budget_change,
                anneal_option="KneeCallback(anneal_on_budget_change=True)",
                seed_lr=args.learning_rate,
            )
        install_knee_schedule(kwargs.get("lr_scheduler"), self.schedule)
        self._phase = self.schedule.phase(state.global_step)
        logger.info(
            "Knee schedule over %d steps: warmup %d, explore %d, decay %d (now step %d, %s)",
            self.schedule.total_steps,
            self.schedule.warmup_steps,
            self.schedule.explore_steps,
            self.schedule.decay_steps,
            state.global_step,
            self._phase,
        )

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.schedule is None:
            return
        phase = self.schedule.phase(state.global_step)
        if phase != self._phase:
            logger.info("Knee: %s phase from step %d", phase, state.global_step)
            self._phase = phase

    def state(self) -> dict[str, Any]:
        """What ``trainer_state.json`` keeps of the callback: its options and the schedule it installed."""
        return {
            "args": {
                "explore_ratio": self.explore_ratio,
                "num_explore_steps": self.num_explore_steps,
                "min_lr_ratio": self.min_lr_ratio,
                "decay_type": self.decay_type,
                "anneal_on_budget_change": self.anneal_on_budget_change,
            },
            "attributes": {"saved_schedule": asdict(self.schedule) if self.schedule is not None else None},
        }


def _saved_schedule(state: TrainerState) -> KneeSchedule | None:
    """The schedule a resumed run was trained under, from the checkpoint's ``trainer_state.json``."""
    callbacks: Any = state.stateful_callbacks  # a dict of state() records once TrainerState is built
    saved = callbacks.get(KneeCallback.__name__) if isinstance(callbacks, dict) else None
    if isinstance(saved, list):
        saved = saved[0] if saved else None
    fields = ((saved or {}).get("attributes") or {}).get("saved_schedule")
    return KneeSchedule(**fields) if fields else None
