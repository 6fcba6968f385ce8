"""Run a recipe module with each process in its own working directory ``rank<RANK>/``: what a
multi-node run sees when a relative (or node-local) ``--output-dir`` is not on a shared file system.

``accelerate launch --multi_gpu --num_processes 2 tests/rank_directory.py BASE scripts.bert.pretrain ARGS``
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    base, module, *arguments = sys.argv[1:]
    workdir = Path(base) / f"rank{os.environ['RANK']}"
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    sys.argv = [module, *arguments]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
