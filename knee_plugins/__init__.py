"""Knee (explore-exploit) learning-rate schedule for torch, transformers, accelerate and fairseq.

``import knee_plugins`` is cheap: it imports neither torch nor a host library. The adapters load
on first use of their names (PEP 562), so ``from knee_plugins import KneeLR`` imports torch and
``from knee_plugins import KneeCallback`` imports transformers. It changes nothing in fairseq, even
where fairseq is loaded: the fairseq plugin is :mod:`knee_plugins.fairseq_plugin`, loaded when a
program imports fairseq or by ``--user-dir`` (docs/fairseq.md).
"""

from __future__ import annotations

import importlib
from typing import Any

from .schedule import KneeSchedule, knee_factor, resolve_steps, validate_knee_args

__version__ = "0.1.0"

_LAZY_EXPORTS = {
    "KneeLR": "knee_plugins.lr_scheduler",
    "get_knee_schedule_with_warmup": "knee_plugins.hf",
    "KneeCallback": "knee_plugins.hf",
    "measure_sharpness": "knee_plugins.sharpness",
    "trainer_lr_range_test": "knee_plugins.lr_range_test",
    "accelerate_lr_range_test": "knee_plugins.lr_range_test",
}

__all__ = [
    "KneeSchedule",
    "knee_factor",
    "resolve_steps",
    "validate_knee_args",
    *_LAZY_EXPORTS,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY_EXPORTS:
        return getattr(importlib.import_module(_LAZY_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_EXPORTS))
