"""Patch ``epoch_budget``: tell the LR scheduler how many batches each epoch has.

fairseq builds the LR scheduler before the data and never tells it the length of an epoch, so
its schedulers cannot take a budget in epochs. This wraps ``Trainer.get_train_iterator``:
whenever fairseq builds the training iterator (before the first update of a run, on resume, and
at every new epoch), a scheduler that has a ``set_epoch_length(epoch, num_batches)`` method
(:class:`~knee_plugins.fairseq_plugin.epoch_budget.EpochAwareLRScheduler`) receives the number
of batches one worker sees in that epoch. Runs with any other ``--lr-scheduler`` are unaffected.
"""

from __future__ import annotations

import functools
import inspect

from ._shape import is_patched, mark, parameters, require, require_names, unpatched

NAME = "epoch_budget"


def _wants_epoch_length(trainer) -> bool:
    from fairseq.optim.lr_scheduler import LR_SCHEDULER_REGISTRY

    name = getattr(trainer.cfg.lr_scheduler, "_name", None)
    cls = LR_SCHEDULER_REGISTRY.get(name) if isinstance(name, str) else None
    return callable(getattr(cls, "set_epoch_length", None))


def check() -> None:
    from fairseq.data import iterators
    from fairseq.trainer import Trainer

    func = unpatched(Trainer.get_train_iterator)
    params = parameters(func)
    require(params[:2] == ["self", "epoch"], f"Trainer.get_train_iterator{tuple(params)}")
    require_names(func, ["get_batch_iterator"])
    require(
        isinstance(inspect.getattr_static(Trainer, "lr_scheduler", None), property),
        "Trainer.lr_scheduler is not a property",
    )
    require(hasattr(iterators.EpochBatchIterator, "__len__"), "EpochBatchIterator has no len()")


def apply() -> None:
    """Wrap ``fairseq.trainer.Trainer.get_train_iterator`` to report each epoch's length (idempotent)."""
    from fairseq.trainer import Trainer

    original = Trainer.get_train_iterator
    if is_patched(original):
        return

    @functools.wraps(original)
    def get_train_iterator(self, epoch, *args, **kwargs):
        epoch_itr = original(self, epoch, *args, **kwargs)
        if _wants_epoch_length(self):
            self.lr_scheduler.set_epoch_length(epoch, len(epoch_itr))
        return epoch_itr

    Trainer.get_train_iterator = mark(get_train_iterator, NAME)
