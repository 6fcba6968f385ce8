"""The average of fairseq checkpoints' model weights (what fairseq's ``scripts/average_checkpoints.py``
does, which the pip package does not ship); imports no task.

The result is the first checkpoint with its model replaced by the element-wise mean of every
checkpoint's model tensors, so ``fairseq-generate`` and ``fairseq-validate`` load it like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A fairseq checkpoint on CPU, loaded with ``weights_only=True`` as fairseq-generate loads it: the
    plugin allow-lists the types fairseq stores (its legacy ``args`` is an ``argparse.Namespace``).

    Not a temporary ``torch.serialization.safe_globals`` block: on leaving it torch restores the list it
    found, which drops the plugin's allow-list for the rest of the process if fairseq was first imported
    inside the block."""
    import knee_plugins.fairseq_plugin  # noqa: F401  (registers the plugin, and so its allow-list)

    return torch.load(path, map_location="cpu", weights_only=True)


def average_state_dicts(models: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the floating-point tensors of ``models`` (same names and shapes), in
    float64 and cast back; any other tensor must be equal in all of them and is kept."""
    if not models:
        raise ValueError("models must hold at least one state dict")
    names = list(models[0])
    for index, model in enumerate(models[1:], 1):
        if list(model) != names:
            raise ValueError(f"models[{index}] has other tensors than models[0]")
    averaged: dict[str, torch.Tensor] = {}
    for name in names:
        tensors = [model[name] for model in models]
        if any(t.shape != tensors[0].shape for t in tensors):
            raise ValueError(f"models disagree on the shape of {name}")
        if tensors[0].is_floating_point():
            total = torch.stack([t.to(torch.float64) for t in tensors]).sum(dim=0)
            averaged[name] = (total / len(tensors)).to(tensors[0].dtype)
        elif all(torch.equal(t, tensors[0]) for t in tensors):
            averaged[name] = tensors[0].clone()
        else:
            raise ValueError(f"models disagree on the non-float tensor {name}")
    return averaged


def average_checkpoints(paths: Sequence[Path], output: Path) -> Path:
    """Write to ``output`` the first of ``paths`` with its model replaced by the mean of all their
    models; return ``output``."""
    if not paths:
        raise ValueError("paths must name at least one checkpoint")
    states = [load_checkpoint(Path(path)) for path in paths]
    averaged = dict(states[0])
    averaged["model"] = average_state_dicts([state["model"] for state in states])
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    torch.save(averaged, partial)
    partial.replace(output)
    return output
