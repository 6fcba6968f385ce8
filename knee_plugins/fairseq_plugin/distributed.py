"""Let ``torchrun ... fairseq-train --distributed-no-spawn`` start on machines without CUDA.

fairseq reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...) in
``_infer_torch_distributed_launch_init``, which sets ``device_id = RANK % torch.cuda.device_count()``
and so fails with ZeroDivisionError on CPU-only machines (gloo runs, CI). With no CUDA device this
sets the same fields with device id 0 (which fairseq never uses with ``--cpu``); with CUDA,
fairseq's own code runs. Installed as the patch ``cpu_torchrun`` of :mod:`.patches`.
"""

import functools
import os

import torch
from fairseq.distributed import utils as distributed_utils


def allow_cpu_torchrun() -> None:
    """Wrap fairseq's torchrun environment parser (idempotent)."""
    original = distributed_utils._infer_torch_distributed_launch_init
    if getattr(original, "__knee_plugins_patch__", None):
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

    infer_torchrun_init.__knee_plugins_patch__ = "cpu_torchrun"  # type: ignore[attr-defined]
    distributed_utils._infer_torch_distributed_launch_init = infer_torchrun_init
