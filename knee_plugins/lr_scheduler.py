"""``KneeLR``: the Knee schedule as a ``torch.optim.lr_scheduler.LRScheduler``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, fields
from typing import Any

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from .schedule import Duration, KneeSchedule

ARGUMENT_NAMES = {"total": "total_steps", "warmup": "warmup_steps", "explore": "explore_steps"}
_SCHEDULE_FIELDS = tuple(field.name for field in fields(KneeSchedule))


def apply_learning_rates(scheduler: LRScheduler, learning_rates: Sequence[float | Tensor]) -> None:
    """Write ``learning_rates`` into the scheduler's optimizer groups and its ``get_last_lr()``."""
    for group, learning_rate in zip(scheduler.optimizer.param_groups, learning_rates, strict=True):
        group["lr"] = learning_rate
    scheduler._last_lr = list(learning_rates)


class KneeLR(LRScheduler):
    """Warmup to each group's LR, explore at it, then decay (linearly by default) to ``min_lr_ratio`` of it.

    ``lr_g(t) = base_lr_g * m(t)`` with ``m`` from :func:`knee_plugins.schedule.knee_factor`;
    ``t`` is ``last_epoch``, the number of ``step()`` calls so far (call ``step()`` once per
    optimizer update). Every group keeps its own base LR. ``state_dict()`` holds only numbers,
    so it loads with ``torch.load(weights_only=True)`` and a resumed run continues the same
    trajectory.

    Args:
        optimizer: wrapped optimizer; each group's ``lr`` is its seed (peak) LR.
        total_steps: budget ``T`` in optimizer updates (or ``"70ep"`` with ``steps_per_epoch``).
        warmup_steps: ``W`` as steps, fraction of ``T`` or epochs. Default 0.
        explore_steps: ``E`` (after warmup) as steps, fraction or epochs; wins over
            ``explore_ratio``.
        explore_ratio: ``E`` as a fraction of ``T`` when ``explore_steps`` is None (paper: 0.5).
        min_lr_ratio: floor ``r`` in [0, 1) reached at ``T``. Default 0.
        decay_type: shape of the exploit phase: ``"linear"`` (the paper's, default), ``"cosine"``
            or ``"1-sqrt"``, as transformers' ``get_wsd_schedule`` names them.
        steps_per_epoch: optimizer updates per epoch, needed for durations in epochs.
        last_epoch: index of the last update when resuming; -1 starts fresh.
        anneal_on_budget_change: what :meth:`load_state_dict` does when the state was saved under
            another budget after the decay had begun: False (default) raises
            :class:`~knee_plugins.schedule.BudgetChangeError`; True decays from the LR the run had
            reached to the floor at the new ``total_steps``.

    Resuming under a new budget: build ``KneeLR`` with the new durations, then ``load_state_dict`` the
    saved state. The schedule given to the constructor wins (the saved one is only checked against it):
    while the run is still exploring, every later update gets exactly the LR of a fresh run under the new
    budget; a branch (``explore_steps`` ending at the saved step, ``total_steps`` = that step + D) decays
    from there.

    Example:
        >>> # lr = 10, T = 10, W = 2, explore 50%
        >>> scheduler = KneeLR(optimizer, total_steps=10, warmup_steps=2, explore_ratio=0.5)
        >>> for step in range(10):
        ...     train(...); optimizer.step(); scheduler.step()
        >>> # lr per update: 0, 5, 10, 10, 10, 10, 10, 10, 6.67, 3.33; then 0 from step 10 on
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: Duration,
        warmup_steps: Duration = 0,
        explore_steps: Duration | None = None,
        explore_ratio: float = 0.5,
        min_lr_ratio: float = 0.0,
        decay_type: str = "linear",
        steps_per_epoch: int | None = None,
        last_epoch: int = -1,
        anneal_on_budget_change: bool = False,
    ) -> None:
        schedule = KneeSchedule.from_durations(
            total_steps,
            warmup=warmup_steps,
            explore=explore_steps,
            explore_ratio=explore_ratio,
            min_lr_ratio=min_lr_ratio,
            decay_type=decay_type,
            steps_per_epoch=steps_per_epoch,
            names=ARGUMENT_NAMES,
        )
        self.total_steps = schedule.total_steps
        self.warmup_steps = schedule.warmup_steps
        self.explore_steps = schedule.explore_steps
        self.min_lr_ratio = float(schedule.min_lr_ratio)
        self.decay_type = schedule.decay_type
        self.anneal_start: int | None = None
        self.anneal_factor = 1.0
        self.anneal_on_budget_change = anneal_on_budget_change
        super().__init__(optimizer, last_epoch)

    @property
    def schedule(self) -> KneeSchedule:
        return KneeSchedule(
            self.total_steps,
            self.warmup_steps,
            self.explore_steps,
            self.min_lr_ratio,
            self.decay_type,
            self.anneal_start,
            self.anneal_factor,
        )

    def _set_schedule(self, schedule: KneeSchedule) -> None:
        for name, value in asdict(schedule).items():
            setattr(self, name, value)

    def _factor(self) -> float:
        return self.schedule.factor(self.last_epoch)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the step count and re-apply its LR, so the load order of optimizer and scheduler
        state does not matter. The schedule stays the one this scheduler was built with, checked against
        the saved one (see the class docstring)."""
        saved = KneeSchedule(**{name: state_dict[name] for name in _SCHEDULE_FIELDS if name in state_dict})
        schedule = self.schedule.resumed(
            saved,
            state_dict["last_epoch"],
            anneal=self.anneal_on_budget_change,
            anneal_option="KneeLR(..., anneal_on_budget_change=True)",
            seed_lr=float(self.base_lrs[0]),
        )
        anneal_on_budget_change = self.anneal_on_budget_change
        super().load_state_dict(state_dict)
        self._set_schedule(schedule)
        self.anneal_on_budget_change = anneal_on_budget_change
        apply_learning_rates(self, self.get_lr())

    def get_lr(self) -> list[float | Tensor]:
        factor = self._factor()
        return [base_lr * factor for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float | Tensor]:
        return self.get_lr()
