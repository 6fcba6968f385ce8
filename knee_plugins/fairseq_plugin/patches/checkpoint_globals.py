"""Patch ``checkpoint_globals``: torch's ``weights_only=True`` loader (the default since torch 2.6)
reads fairseq checkpoints.

fairseq calls ``torch.load`` without ``weights_only``; on torch >= 2.6 that refuses every
checkpoint fairseq writes, because they hold a few Python objects besides tensors. Rather than
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, which turns the protection off for everything, this
allow-lists exactly those objects with :func:`torch.serialization.add_safe_globals`. Any other
global in a checkpoint is still refused.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, List, Tuple, Union

import torch

from ._shape import require

NAME = "checkpoint_globals"


def fairseq_checkpoint_globals() -> List[Union[Callable[..., Any], Tuple[Callable[..., Any], str]]]:
    """The types, besides tensors and plain containers, that fairseq 0.12 checkpoints hold.

    fairseq stores its config as plain containers (``OmegaConf.to_container``), except the model
    options, which the argparse entry points (fairseq-train) keep as an ``argparse.Namespace``;
    legacy checkpoints store all options as ``args``, also a Namespace. Found with
    ``torch.serialization.get_unsafe_globals_in_checkpoint`` on checkpoints of fairseq-train and
    fairseq-hydra-train runs (adam, radam; knee, one_cycle, inverse_sqrt; with validation).
    Unpickling a Namespace only sets attributes; it runs no code.
    """
    return [argparse.Namespace]


def check() -> None:
    require(
        callable(getattr(torch.serialization, "add_safe_globals", None)),
        "torch.serialization has no add_safe_globals (torch < 2.4)",
    )


def apply() -> None:
    """Add :func:`fairseq_checkpoint_globals` to torch's ``weights_only`` allow-list."""
    torch.serialization.add_safe_globals(fairseq_checkpoint_globals())
