"""`accelerate launch` on CPU for the tests: one process, or two gloo processes (accelerate's
`--cpu --num_processes 2` starts only one; `--multi_gpu` with ACCELERATE_USE_CPU=1 starts two)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The recipes are run as modules of the checkout (`-m scripts.<task>.<program>`), from any directory.
PYTHONPATH = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
CPU_ENV = {
    **os.environ,
    "ACCELERATE_USE_CPU": "1",
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONPATH": PYTHONPATH,
}


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def accelerate_launcher(num_processes: int) -> list[str]:
    """The `accelerate launch` prefix of a command (run it with :data:`CPU_ENV`)."""
    if num_processes not in (1, 2):
        raise ValueError(f"num_processes must be 1 or 2 on this 2-core machine, got {num_processes}")
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1"]
    launcher += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    if num_processes == 2:
        return [*launcher, "--multi_gpu", "--num_processes", "2", "--main_process_port", free_port()]
    return [*launcher, "--num_processes", "1"]
