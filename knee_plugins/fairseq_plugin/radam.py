"""``--optimizer radam``: torch's RAdam (Liu et al. 2020) for fairseq.

The paper trains IWSLT'14 and WMT'14 with RAdam, betas (0.9, 0.999) and weight decay 1e-4.
``--radam-weight-decay-mode`` picks how the decay is applied:

* ``decoupled`` (default): ``p ← p − lr · wd · p`` applied to the weights, separately from the
  adaptive step (AdamW style), as in the RAdam authors' own implementation, which the paper used,
  and as fairseq's ``adam`` does;
* ``l2``: ``wd · p`` is added to the gradient (torch's ``RAdam`` default).
"""

import ast
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, List

import torch
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.optim import FairseqOptimizer, register_optimizer
from omegaconf import II, OmegaConf

WEIGHT_DECAY_MODES = ChoiceEnum(["decoupled", "l2"])


@dataclass
class FairseqRAdamConfig(FairseqDataclass):
    radam_betas: Any = field(default=(0.9, 0.999), metadata={"help": "betas for RAdam, e.g. '(0.9, 0.999)'"})
    radam_eps: float = field(default=1e-8, metadata={"help": "epsilon for RAdam"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay (the paper uses 1e-4)"})
    radam_weight_decay_mode: WEIGHT_DECAY_MODES = field(  # type: ignore[valid-type]  # fairseq's ChoiceEnum idiom
        default="decoupled",
        metadata={
            "help": "decoupled: shrink the weights by lr*wd each step (AdamW style, as the RAdam "
            "authors' code); l2: add wd*p to the gradient (torch's RAdam default)"
        },
    )
    lr: List[float] = II("optimization.lr")


def _betas(value: Any) -> tuple[float, float]:
    if isinstance(value, str):
        value = ast.literal_eval(value)
    elif OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    betas = tuple(float(b) for b in value)
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"--radam-betas must be two numbers in [0, 1), got {value!r}")
    return betas


@register_optimizer("radam", dataclass=FairseqRAdamConfig)
class FairseqRAdam(FairseqOptimizer):
    """fairseq wrapper of :class:`torch.optim.RAdam`."""

    def __init__(self, cfg: FairseqRAdamConfig, params) -> None:
        super().__init__(cfg)
        for option, value in (("--radam-eps", cfg.radam_eps), ("--weight-decay", cfg.weight_decay)):
            if not value >= 0:
                raise ValueError(f"{option} must be >= 0 with --optimizer radam, got {value}")
        self._optimizer = torch.optim.RAdam(params, **self.optimizer_config)

    @property
    def optimizer_config(self) -> dict:
        """Arguments that override those stored in a checkpoint on resume."""
        lr = self.cfg.lr[0] if isinstance(self.cfg.lr, Sequence) else self.cfg.lr
        return {
            "lr": lr,
            "betas": _betas(self.cfg.radam_betas),
            "eps": self.cfg.radam_eps,
            "weight_decay": self.cfg.weight_decay,
            "decoupled_weight_decay": str(self.cfg.radam_weight_decay_mode) == "decoupled",
        }

    @property
    def supports_flat_params(self) -> bool:
        return True
