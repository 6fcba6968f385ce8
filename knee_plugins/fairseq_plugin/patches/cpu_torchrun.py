"""Patch ``cpu_torchrun``: ``torchrun ... fairseq-train --distributed-no-spawn`` starts without CUDA.

fairseq reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...) in
``_infer_torch_distributed_launch_init``, which sets ``device_id = RANK % torch.cuda.device_count()``
and so fails with ZeroDivisionError on CPU-only machines (gloo runs, CI). With no CUDA device this
sets the same fields with device id 0 (which fairseq never uses with ``--cpu``); with CUDA,
fairseq's own code runs.
"""

from __future__ import annotations

import functools
import os

import torch

from ._shape import is_patched, mark, parameters, require, require_names, unpatched

NAME = "cpu_torchrun"


def check() -> None:
    from fairseq.distributed import utils as distributed_utils

    func = unpatched(distributed_utils._infer_torch_distributed_launch_init)
    params = parameters(func)
    require(params == ["cfg"], f"_infer_torch_distributed_launch_init{tuple(params)}")
    require_names(
        func,
        ["device_count", "distributed_init_method", "distributed_world_size", "distributed_rank",
         "device_id", "distributed_no_spawn"],
    )  # fmt: skip
    require_names(distributed_utils.infer_init_method, ["_infer_torch_distributed_launch_init"])


def apply() -> None:
    """Wrap fairseq's torchrun environment parser (idempotent)."""
    from fairseq.distributed import utils as distributed_utils

    original = distributed_utils._infer_torch_distributed_launch_init
    if is_patched(original):
        return

    @functools.wraps(original)
    def infer_torchrun_init(cfg):
        if torch.cuda.device_count() > 0:
            return original(cfg)
        cfg.distributed_init_method = "env://"
        cfg.distributed_world_size = int(os.environ["WORLD_SIZE"])
        cfg.distributed_rank = int(os.environ["RANK"])
        cfg.device_id = 0
        cfg.distributed_no_spawn = True

    distributed_utils._infer_torch_distributed_launch_init = mark(infer_torchrun_init, NAME)
