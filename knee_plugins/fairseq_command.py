"""What ``fairseq-train`` command lines mean, without importing fairseq (or torch).

Two commands that differ only in which checkpoint files stay on disk train the same run: the runs
of a sweep, and a recipe's rerun after a kill, compare :func:`training_identity` s.
"""

from __future__ import annotations

from collections.abc import Iterable

# Options that only choose which checkpoint files are kept (flag: 0, option with a value: 1).
CHECKPOINT_KEEPING = {
    "--no-last-checkpoints": 0,
    "--no-epoch-checkpoints": 0,
    "--keep-interval-updates": 1,
    "--keep-last-epochs": 1,
    "--keep-best-checkpoints": 1,
}


def training_identity(command: Iterable[str]) -> list[str]:
    """``command`` without the options in :data:`CHECKPOINT_KEEPING` (``--opt value`` or ``--opt=value``)."""
    words = list(command)
    kept: list[str] = []
    index = 0
    while index < len(words):
        name = words[index].split("=", 1)[0]
        if name in CHECKPOINT_KEEPING:
            index += 1 if "=" in words[index] else 1 + CHECKPOINT_KEEPING[name]
            continue
        kept.append(words[index])
        index += 1
    return kept
