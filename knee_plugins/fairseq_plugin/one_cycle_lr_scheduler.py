"""``--lr-scheduler one_cycle``: the fast.ai / Smith one-cycle policy, one of the paper's baselines.

Same parameters and step convention as :class:`torch.optim.lr_scheduler.OneCycleLR`. With peak
``η = --lr``, ``init = η / --div-factor``, ``final = init / --final-div-factor``, budget ``T``
updates and ``p = --pct-start``, after ``t`` updates (anneal ``a`` is cosine
``a(s, e, x) = e + (s − e)(1 + cos πx)/2`` or linear ``s + (e − s)x``)::

    two phases:   init → η over [0, pT − 1],  η → final over [pT − 1, T − 1]
    three phases: init → η over [0, pT − 1],  η → init over [pT − 1, 2pT − 2],
                  init → final over [2pT − 2, T − 1]

and ``final`` from ``T − 1`` on. The budget is resolved like ``knee``'s (``--total-num-update``,
``--max-update`` or ``--max-epoch`` × updates per epoch).
"""

import math
from dataclasses import dataclass, field

from fairseq.dataclass import ChoiceEnum
from fairseq.optim.lr_scheduler import register_lr_scheduler

from .epoch_budget import EpochAwareLRScheduler, EpochBudgetConfig

ANNEAL_STRATEGIES = ChoiceEnum(["cos", "linear"])


@dataclass
class OneCycleLRScheduleConfig(EpochBudgetConfig):
    pct_start: float = field(
        default=0.3,
        metadata={"help": "fraction of the budget spent raising the LR from --lr/--div-factor to --lr"},
    )
    div_factor: float = field(default=25.0, metadata={"help": "the cycle starts at --lr / div-factor"})
    final_div_factor: float = field(
        default=1e4,
        metadata={"help": "the cycle ends at --lr / div-factor / final-div-factor"},
    )
    anneal_strategy: ANNEAL_STRATEGIES = field(  # type: ignore[valid-type]  # fairseq's ChoiceEnum idiom
        default="cos", metadata={"help": "shape of each phase: cos (fast.ai) or linear"}
    )
    three_phase: bool = field(
        default=False,
        metadata={
            "help": "go back down to --lr/--div-factor symmetrically, then anneal to the final LR "
            "in the remaining updates (Smith's original policy)"
        },
    )


def _anneal(strategy: str, start: float, end: float, fraction: float) -> float:
    if strategy == "cos":
        return end + (start - end) / 2.0 * (math.cos(math.pi * fraction) + 1.0)
    return start + (end - start) * fraction


@register_lr_scheduler("one_cycle", dataclass=OneCycleLRScheduleConfig)
class OneCycleLRSchedule(EpochAwareLRScheduler):
    """Raise the LR to ``--lr``, then anneal it far below the start (fast.ai ``fit_one_cycle``)."""

    def check_options(self) -> None:
        cfg = self.cfg
        if not 0.0 < cfg.pct_start < 1.0:
            raise ValueError(f"--pct-start must be in (0, 1), got {cfg.pct_start}")
        if cfg.three_phase and cfg.pct_start >= 0.5:
            raise ValueError(
                f"--pct-start must be below 0.5 with --three-phase (two phases of that length "
                f"and a final one), got {cfg.pct_start}"
            )
        if cfg.div_factor <= 0 or cfg.final_div_factor <= 0:
            raise ValueError(
                f"--div-factor and --final-div-factor must be > 0, got {cfg.div_factor} and {cfg.final_div_factor}"
            )

    def build_schedule(self) -> list[tuple[float, float, float]]:
        """Phases as ``(end step, start LR, end LR)``."""
        cfg = self.cfg
        total = self.total_updates()
        init = self.peak_lr / cfg.div_factor
        final = init / cfg.final_div_factor
        rise_end = float(cfg.pct_start * total) - 1.0
        if cfg.three_phase:
            return [
                (rise_end, init, self.peak_lr),
                (2.0 * rise_end, self.peak_lr, init),
                (total - 1.0, init, final),
            ]
        return [(rise_end, init, self.peak_lr), (total - 1.0, self.peak_lr, final)]

    def lr_at(self, num_updates: int) -> float:
        start_step = 0.0
        for end_step, start_lr, end_lr in self.schedule:
            if num_updates <= end_step:
                span = end_step - start_step
                fraction = (num_updates - start_step) / span if span > 0 else 1.0
                return _anneal(str(self.cfg.anneal_strategy), start_lr, end_lr, fraction)
            start_step = end_step
        return self.schedule[-1][2]
