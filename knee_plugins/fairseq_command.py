"""fairseq command lines, without importing fairseq (or torch): where a console script is
(:func:`console_script`), and when two ``fairseq-train`` commands train the same run (two commands
that differ only in which checkpoint files stay on disk do: the runs of a sweep, and a recipe's rerun
after a kill, compare :func:`training_identity` s).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

# Options that only choose which checkpoint files are kept (flag: 0, option with a value: 1).
CHECKPOINT_KEEPING = {
    "--no-last-checkpoints": 0,
    "--no-epoch-checkpoints": 0,
    "--keep-interval-updates": 1,
    "--keep-last-epochs": 1,
    "--keep-best-checkpoints": 1,
}


def without_options(command: Iterable[str], options: Mapping[str, int]) -> list[str]:
    """``command`` without each of ``options`` (name -> number of values it takes: 0 for a flag), given
    as ``--opt value`` or ``--opt=value``."""
    words = list(command)
    kept: list[str] = []
    index = 0
    while index < len(words):
        name = words[index].split("=", 1)[0]
        if name in options:
            index += 1 if "=" in words[index] else 1 + options[name]
            continue
        kept.append(words[index])
        index += 1
    return kept


def training_identity(command: Iterable[str]) -> list[str]:
    """``command`` without the options in :data:`CHECKPOINT_KEEPING`."""
    return without_options(command, CHECKPOINT_KEEPING)


def console_script(name: str, module: str) -> list[str]:
    """The console script ``name`` next to this interpreter, else on ``PATH``, else ``python -m module``."""
    script = Path(sys.executable).with_name(name)
    if script.exists():
        return [str(script)]
    found = shutil.which(name)
    return [found] if found else [sys.executable, "-m", module]
