"""The Knee (explore-exploit) learning-rate schedule: the one definition of its math.

Framework-free (standard library only): every adapter in this package (torch, transformers,
fairseq, the CLI) calls :func:`knee_factor` and never re-codes the formula.

With total budget ``T`` optimizer steps, warmup ``W`` steps, explore ``E`` steps (the constant
phase that *follows* warmup), decay ``D = T - W - E`` steps and floor ratio ``r``::

    m(t) = t / W                        0 <= t < W           (linear warmup from 0)
    m(t) = 1                            W <= t < W + E       (explore at the seed LR)
    m(t) = r + (1 - r) * d(p)           W + E <= t < T       (exploit, p = (t - W - E) / D)
    m(t) = r                            t >= T

with the decay shape ``d`` (``decay_type``, named as transformers' WSD schedule names them):
``linear`` ``d(p) = 1 - p`` (the paper's, default), ``cosine`` ``d(p) = (1 + cos(pi p)) / 2``,
``1-sqrt`` ``d(p) = 1 - sqrt(p)`` (the cooldown of Hägele et al. 2024).

``lr_g(t) = base_lr_g * m(t)`` for every parameter group ``g``. Step indexing follows
transformers' schedules: ``t`` counts the optimizer updates already made, so the first update
uses ``m(0)`` (0 when there is warmup) and ``m(W) = 1``. Zero-length phases are legal.

Durations may be given as steps (``int``), as a fraction of the budget (``float`` in [0, 1], or a
string ``"50%"``), or in epochs (string ``"40ep"``, which needs ``steps_per_epoch``); see
:func:`resolve_steps`.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import overload

Duration = int | float | str

PHASES = ("warmup", "explore", "exploit", "done")
DECAY_TYPES = ("linear", "cosine", "1-sqrt")

_EPOCHS = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(?:ep|epoch|epochs)\s*$", re.IGNORECASE)
_PERCENT = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*%\s*$")


def _check_step_count(value: object, name: str, *, allow_zero: bool = True) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(
                f"{name} must be a whole number of steps, got {value!r}; "
                "pass an int (or a fraction of the budget where a duration is accepted)"
            )
    value = int(value)
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def check_fraction(value: object, name: str) -> float:
    """Return ``value`` as a float in [0, 1] or raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(float(value)):
        raise ValueError(f"{name} must be a fraction in [0, 1], got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(
            f"{name}={value!r}: a fraction of the budget must be in [0, 1]; "
            "pass an int where a number of steps is meant"
        )
    return float(value)


def check_min_lr_ratio(value: object, name: str = "min_lr_ratio") -> float:
    """Return the floor ratio as a float in [0, 1) or raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) < 1.0:
        raise ValueError(
            f"{name} must be in [0, 1), got {value!r}; "
            "0 decays to zero as in the paper, 0.1 ends at a tenth of the seed LR"
        )
    return float(value)


def check_decay_type(value: object, name: str = "decay_type") -> str:
    """Return ``value`` if it is one of :data:`DECAY_TYPES`, else raise ``ValueError`` naming ``name``."""
    if value not in DECAY_TYPES:
        raise ValueError(f"{name} must be one of {', '.join(DECAY_TYPES)}, got {value!r}")
    return str(value)


def decay_shape(progress: float, decay_type: str = "linear") -> float:
    """``d(p)``: the share of the seed LR above the floor left at decay progress ``p`` in [0, 1]."""
    if decay_type == "linear":
        return 1.0 - progress
    if decay_type == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if decay_type == "1-sqrt":
        return 1.0 - math.sqrt(progress)
    raise ValueError(f"decay_type must be one of {', '.join(DECAY_TYPES)}, got {decay_type!r}")


def validate_knee_args(
    *,
    total_steps: int,
    warmup_steps: int,
    explore_steps: int,
    min_lr_ratio: float = 0.0,
    decay_type: str = "linear",
    names: Mapping[str, str] | None = None,
) -> None:
    """Raise ``ValueError`` naming the argument and the fix if the Knee arguments are invalid.

    ``names`` maps ``total_steps``, ``warmup_steps``, ``explore_steps``, ``min_lr_ratio`` and
    ``decay_type`` to the names the caller's user typed (e.g. ``num_training_steps``, ``--warmup-updates``).
    """
    name = {key: key for key in ("total_steps", "warmup_steps", "explore_steps", "min_lr_ratio", "decay_type")}
    name.update(names or {})
    total_steps = _check_step_count(total_steps, name["total_steps"], allow_zero=False)
    warmup_steps = _check_step_count(warmup_steps, name["warmup_steps"])
    explore_steps = _check_step_count(explore_steps, name["explore_steps"])
    check_min_lr_ratio(min_lr_ratio, name["min_lr_ratio"])
    check_decay_type(decay_type, name["decay_type"])
    if warmup_steps + explore_steps > total_steps:
        raise ValueError(
            f"{name['warmup_steps']} ({warmup_steps} steps) + {name['explore_steps']} ({explore_steps} steps) "
            f"= {warmup_steps + explore_steps} steps exceed {name['total_steps']} = {total_steps}; "
            f"shorten {name['warmup_steps']} or {name['explore_steps']}, or raise {name['total_steps']}"
        )


def knee_factor(
    step: int,
    *,
    total_steps: int,
    warmup_steps: int,
    explore_steps: int,
    min_lr_ratio: float = 0.0,
    decay_type: str = "linear",
    anneal_start: int | None = None,
    anneal_factor: float = 1.0,
) -> float:
    """Multiplier ``m(step)`` of the seed LR (see the module docstring for the formula).

    Args:
        step: optimizer updates already made (0 for the first update).
        total_steps: the budget ``T``.
        warmup_steps: ``W``, linear warmup from 0.
        explore_steps: ``E``, constant phase after warmup.
        min_lr_ratio: floor ``r`` reached at ``T``.
        decay_type: shape of the exploit phase, one of :data:`DECAY_TYPES`.
        anneal_start: ``s``, set when a run whose decay had begun was given a new budget
            (:meth:`KneeSchedule.resumed` with ``anneal=True``): from update ``s`` on the LR decays
            from ``anneal_factor`` (the LR the run had reached) to ``r`` at ``T``,
            ``m(t) = r + (a - r) * d((t - s) / (T - s))``.
        anneal_factor: ``a``, the multiplier at ``anneal_start``.
    """
    if anneal_start is not None and step >= anneal_start:
        if step >= total_steps:
            return float(min_lr_ratio)
        progress = (step - anneal_start) / (total_steps - anneal_start)
        return min_lr_ratio + (anneal_factor - min_lr_ratio) * decay_shape(progress, decay_type)
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    decay_start = warmup_steps + explore_steps
    if step < decay_start:
        return 1.0
    if step >= total_steps:
        return float(min_lr_ratio)
    remaining = decay_shape((step - decay_start) / (total_steps - decay_start), decay_type)
    return remaining * (1.0 - min_lr_ratio) + min_lr_ratio


@overload
def resolve_steps(
    value: None,
    *,
    name: str,
    total_steps: int | None = None,
    steps_per_epoch: int | None = None,
    steps_per_epoch_name: str = "steps_per_epoch",
) -> None: ...


@overload
def resolve_steps(
    value: Duration,
    *,
    name: str,
    total_steps: int | None = None,
    steps_per_epoch: int | None = None,
    steps_per_epoch_name: str = "steps_per_epoch",
) -> int: ...


def resolve_steps(
    value: Duration | None,
    *,
    name: str,
    total_steps: int | None = None,
    steps_per_epoch: int | None = None,
    steps_per_epoch_name: str = "steps_per_epoch",
) -> int | None:
    """Turn a duration into a whole number of optimizer steps.

    ``int`` -> steps; ``float`` in [0, 1] or ``"N%"`` -> fraction of ``total_steps``;
    ``"Nep"`` / ``"N epochs"`` -> ``round(N * steps_per_epoch)``; a string of digits -> steps;
    ``None`` stays ``None``.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        epochs = _EPOCHS.match(text)
        percent = _PERCENT.match(text)
        if epochs:
            return _epochs_to_steps(float(epochs.group(1)), name, steps_per_epoch, steps_per_epoch_name)
        if percent:
            return resolve_steps(float(percent.group(1)) / 100.0, name=name, total_steps=total_steps)
        try:
            number: float | int = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                raise ValueError(
                    f"{name}={value!r} is not a duration; use steps (4000), a fraction of the "
                    "budget (0.5 or 50%) or epochs (40ep)"
                ) from None
        return resolve_steps(
            number,
            name=name,
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            steps_per_epoch_name=steps_per_epoch_name,
        )
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a duration, got the bool {value!r}")
    if isinstance(value, numbers.Integral):
        return _check_step_count(value, name)
    if isinstance(value, numbers.Real):
        fraction = check_fraction(value, name)
        if total_steps is None:
            raise ValueError(f"{name}={value!r} is a fraction of the budget, but the budget is unknown")
        return int(round(fraction * _check_step_count(total_steps, "total_steps", allow_zero=False)))
    raise ValueError(f"{name} must be an int, a float fraction or a string duration, got {value!r}")


def updates_per_epoch(num_batches: int, accumulation_steps: int = 1, drop_remainder: bool = False) -> int:
    """Optimizer updates in one epoch of ``num_batches`` batches, ``accumulation_steps`` batches per update.

    ``ceil(num_batches / accumulation_steps)``: a shorter last group still makes an update (fairseq's
    ``GroupedIterator`` with ``--update-freq``, accelerate's gradient accumulation at the end of a
    dataloader); ``num_batches // accumulation_steps`` when the remainder is dropped (fairseq's
    ``--skip-remainder-batch``). Every recipe sizes epoch budgets with this one function.
    """
    num_batches = _check_step_count(num_batches, "num_batches")
    accumulation_steps = _check_step_count(accumulation_steps, "accumulation_steps", allow_zero=False)
    if drop_remainder:
        return num_batches // accumulation_steps
    return -(-num_batches // accumulation_steps)


def _epochs_to_steps(epochs: float, name: str, steps_per_epoch: int | None, steps_per_epoch_name: str) -> int:
    if steps_per_epoch is None:
        raise ValueError(
            f"{name} is given in epochs but the number of steps per epoch is unknown; "
            f"pass {steps_per_epoch_name} (optimizer updates per epoch) or give {name} in steps"
        )
    steps_per_epoch = _check_step_count(steps_per_epoch, steps_per_epoch_name, allow_zero=False)
    return int(round(epochs * steps_per_epoch))


@dataclass(frozen=True)
class KneeSchedule:
    """A validated Knee schedule in optimizer steps; call :meth:`factor` for ``m(step)``."""

    total_steps: int
    warmup_steps: int = 0
    explore_steps: int = 0
    min_lr_ratio: float = 0.0
    decay_type: str = "linear"
    anneal_start: int | None = None
    anneal_factor: float = 1.0

    def __post_init__(self) -> None:
        validate_knee_args(
            total_steps=self.total_steps,
            warmup_steps=self.warmup_steps,
            explore_steps=self.explore_steps,
            min_lr_ratio=self.min_lr_ratio,
            decay_type=self.decay_type,
        )
        if self.anneal_start is not None:
            start = _check_step_count(self.anneal_start, "anneal_start")
            if start >= self.total_steps:
                raise ValueError(f"anneal_start ({start}) must be before the end of the budget ({self.total_steps})")
            if not self.min_lr_ratio <= self.anneal_factor <= 1.0:
                raise ValueError(f"anneal_factor must be in [min_lr_ratio, 1], got {self.anneal_factor!r}")

    @classmethod
    def from_durations(
        cls,
        total: Duration,
        *,
        warmup: Duration | None = 0,
        explore: Duration | None = None,
        explore_ratio: float = 0.5,
        min_lr_ratio: float = 0.0,
        decay_type: str = "linear",
        steps_per_epoch: int | None = None,
        names: Mapping[str, str] | None = None,
    ) -> KneeSchedule:
        """Build a schedule from durations in steps, fractions or epochs.

        ``explore`` wins over ``explore_ratio`` (a fraction of the total budget, the paper's
        default 0.5). A fractional ``total`` makes no sense and is refused. ``names`` maps this
        method's argument names (``total``, ``warmup``, ``explore``, ``explore_ratio``,
        ``min_lr_ratio``, ``decay_type``, ``steps_per_epoch``) to the caller's, so that errors name what the user typed.
        """
        name = {
            key: key
            for key in ("total", "warmup", "explore", "explore_ratio", "min_lr_ratio", "decay_type", "steps_per_epoch")
        }
        name.update(names or {})
        if isinstance(total, float) and not total.is_integer():
            raise ValueError(
                f"{name['total']}={total!r} must be a number of steps (int) or epochs ('50ep'), not a fraction"
            )
        total_steps = resolve_steps(
            total, name=name["total"], steps_per_epoch=steps_per_epoch, steps_per_epoch_name=name["steps_per_epoch"]
        )
        if not total_steps:
            raise ValueError(f"{name['total']} must be > 0, got {total!r}: the budget of optimizer steps is empty")
        warmup_steps = resolve_steps(
            warmup or 0,
            name=name["warmup"],
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            steps_per_epoch_name=name["steps_per_epoch"],
        )
        if explore is None:
            explore_name = name["explore_ratio"]
            explore = check_fraction(explore_ratio, explore_name)
        else:
            explore_name = name["explore"]
        explore_steps = resolve_steps(
            explore,
            name=explore_name,
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            steps_per_epoch_name=name["steps_per_epoch"],
        )
        validate_knee_args(
            total_steps=total_steps,
            warmup_steps=warmup_steps,
            explore_steps=explore_steps,
            min_lr_ratio=min_lr_ratio,
            decay_type=decay_type,
            names={
                "total_steps": name["total"],
                "warmup_steps": name["warmup"],
                "explore_steps": explore_name,
                "min_lr_ratio": name["min_lr_ratio"],
                "decay_type": name["decay_type"],
            },
        )
        return cls(total_steps, warmup_steps, explore_steps, min_lr_ratio, decay_type)

    @property
    def decay_start(self) -> int:
        return self.warmup_steps + self.explore_steps

    @property
    def decay_steps(self) -> int:
        return self.total_steps - self.decay_start

    def factor(self, step: int) -> float:
        return knee_factor(step, **asdict(self))

    def phase(self, step: int) -> str:
        """Name of the phase the update at ``step`` belongs to (one of :data:`PHASES`)."""
        if step >= self.total_steps:
            return "done"
        if self.anneal_start is not None and step >= self.anneal_start:
            return "exploit"
        if step < self.warmup_steps:
            return "warmup"
        if step < self.decay_start:
            return "explore"
        return "exploit"

    def describe(self) -> str:
        text = (
            f"{self.total_steps} updates: warmup {self.warmup_steps}, explore {self.explore_steps}, "
            f"{self.decay_type} decay {self.decay_steps}"
        )
        if self.anneal_start is not None:
            text += f", annealed from {self.anneal_factor:.4g} x the seed LR at update {self.anneal_start}"
        return text

    def resumed(
        self,
        saved: KneeSchedule,
        step: int,
        *,
        anneal: bool = False,
        anneal_option: str = "anneal=True",
        seed_lr: float | None = None,
    ) -> KneeSchedule:
        """This schedule, for a run that made ``step`` updates under ``saved`` and resumes under this one.

        Accepted as it is when the two agree on every update already made: the LR from ``step`` on is then
        exactly what a fresh run under this schedule would have had (a budget changed while exploring, or a
        branch). Otherwise (the decay had begun, or the new budget's decay would already have begun) a
        :class:`BudgetChangeError` names the update, the LR and ``anneal_option``; with ``anneal=True`` the
        LR instead decays from the value the run had reached (``saved.factor(step)``) to the floor at this
        schedule's end, as OLMo-core's anneals do.
        """
        step = _check_step_count(step, "step")
        if saved == self or all(saved.factor(t) == self.factor(t) for t in range(step)):
            return self
        reached = saved.factor(step)
        if anneal:
            if step >= self.total_steps:
                raise BudgetChangeError(
                    f"cannot anneal from update {step}: the new budget ({self.total_steps} updates) ends before it"
                )
            return replace(self, anneal_start=step, anneal_factor=reached)
        decay_began = saved.decay_start if saved.anneal_start is None else min(saved.decay_start, saved.anneal_start)
        if step > decay_began:
            why = f"its decay began at update {decay_began}"
        else:
            why = f"the new budget's decay would have begun at update {self.decay_start}, before it"
        lr = f" ({reached * seed_lr:.4g})" if seed_lr is not None else ""
        raise BudgetChangeError(
            f"the run resumes at update {step} with the LR at {reached:.4g} x the seed LR{lr}, trained under "
            f"[{saved.describe()}], and a new budget [{self.describe()}] cannot continue it exactly: {why}. "
            f"Keep the budget, or pass {anneal_option} to decay from the current LR to the new end "
            f"(update {self.total_steps})."
        )


class BudgetChangeError(ValueError):
    """A resumed run's new budget would change LRs its past updates already used."""
