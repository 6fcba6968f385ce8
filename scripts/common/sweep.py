"""The peak-LR sweep the demos share (the translation demo's ``--sweep-lr``, the HF demo's): one
protocol, one widening rule, one rule for what is already trained. Imports no task.

1. Every name (a schedule, a method) trains once at every LR of the grid, in the grid's order.
2. Per name, the LR with the lowest loss wins (ties: the smaller LR; a loss that is not finite counts
   as the worst).
3. A winner on the edge of the LRs tried for that name is not trusted: the name trains one step
   further out, by the ratio of the two outermost LRs on that side (the grid's ratio, e.g. x2 or /3;
   3 significant digits), until its winner is inside, at most :data:`MAX_WIDENINGS` steps.
4. Already trained: a run of an earlier sweep is reused when it has the same name, the same LR and
   the same settings (whatever the caller says makes two runs the same run: a command line, a
   settings record). An earlier run of other settings stops the sweep before anything trains: its
   loss cannot be compared with this sweep's. Earlier runs of names not swept now are kept.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

MAX_WIDENINGS = 3


def add_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """Add ``--sweep-lr LR [LR ...]`` (the grid; default None: no sweep) to ``parser``."""
    parser.add_argument("--sweep-lr", type=float, nargs="+", default=None, metavar="LR", help=help)


@dataclass
class SweepRecord:
    """One run of a sweep: its name and peak LR, its loss (lower is better), the settings it ran with,
    and the caller's record of it (what its sweep file holds)."""

    name: str
    lr: float
    loss: float
    settings: Any = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def score(self) -> float:
        return self.loss if math.isfinite(self.loss) else math.inf


def best_learning_rates(records: Iterable[SweepRecord]) -> dict[str, float]:
    """Per name (in order of appearance), the LR with the lowest loss; ties: the smaller LR."""
    best: dict[str, SweepRecord] = {}
    for record in records:
        current = best.get(record.name)
        if current is None or (record.score, record.lr) < (current.score, current.lr):
            best[record.name] = record
    return {name: record.lr for name, record in best.items()}


def on_grid_edge(tried: Iterable[float], lr: float) -> bool:
    """Whether ``lr`` is the lowest or the highest of two or more ``tried`` LRs."""
    values = sorted(set(tried))
    return len(values) > 1 and lr in (values[0], values[-1])


def wider_learning_rate(tried: Iterable[float], best: float) -> float | None:
    """One grid step beyond ``best`` when it is on the edge of ``tried`` (the ratio of the two outermost
    LRs on that side), else None."""
    values = sorted(set(tried))
    if not on_grid_edge(values, best):
        return None
    ratio = values[0] / values[1] if best == values[0] else values[-1] / values[-2]
    return float(f"{best * ratio:.3g}")


def _difference(recorded: Any, planned: Any) -> str:
    if isinstance(recorded, Mapping) and isinstance(planned, Mapping):
        names = [name for name in {**recorded, **planned} if recorded.get(name) != planned.get(name)]
        return ", ".join(f"{name} {recorded.get(name)!r} -> {planned.get(name)!r}" for name in names)
    if isinstance(recorded, str) and isinstance(planned, str):
        old, new = recorded.split(), planned.split()
        gone = " ".join(word for word in old if word not in new)
        added = " ".join(word for word in new if word not in old)
        return f"recorded only: {gone or '-'}; now only: {added or '-'}"
    return f"recorded {recorded!r}, now {planned!r}"


def run_sweep(
    names: Sequence[str],
    grid: Sequence[float],
    train: Callable[[str, float], SweepRecord],
    settings: Callable[[str, float], Any],
    *,
    previous: Sequence[SweepRecord] = (),
    save: Callable[[list[SweepRecord]], None] = lambda records: None,
    where: str = "the earlier sweep",
    remedy: str = "sweep into another directory",
) -> list[SweepRecord]:
    """Sweep every name over ``grid`` and widen its edge winners (the module's protocol); return every
    record, the earlier ones of other names first.

    ``train(name, lr)`` trains one run and returns its record; ``settings(name, lr)`` is what that run's
    record must hold to be the same run; ``previous`` are the records of an earlier sweep (``where``:
    their file, named in the refusal, with ``remedy``); ``save`` is called with all records after each
    newly trained run."""
    for record in previous:
        planned = settings(record.name, record.lr)
        if record.settings != planned:
            raise SystemExit(
                f"{where} holds a run of {record.name} at LR {record.lr:g} made with other settings "
                f"({_difference(record.settings, planned)}): its runs cannot be compared with this one's; {remedy}"
            )
    done = {(record.name, record.lr): record for record in previous}
    records = [record for record in previous if record.name not in names]

    def run(name: str, lr: float, position: str) -> None:
        if (name, lr) in done:
            logger.info("sweep run %s: %s at peak LR %g already trained", position, name, lr)
            records.append(done[name, lr])
            return
        logger.info("sweep run %s: %s at peak LR %g", position, name, lr)
        records.append(train(name, lr))
        save(records)

    plan = [(name, lr) for name in names for lr in grid]
    for index, (name, lr) in enumerate(plan, 1):
        run(name, lr, f"{index}/{len(plan)}")
    for name in names:
        for widening in range(1, MAX_WIDENINGS + 1):
            own = [record for record in records if record.name == name]
            wider = wider_learning_rate([r.lr for r in own], best_learning_rates(own)[name])
            if wider is None:
                break
            run(name, wider, f"widening {widening}")
    return records
