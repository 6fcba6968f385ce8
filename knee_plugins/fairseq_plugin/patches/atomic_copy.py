"""Patch ``atomic_copy``: a kill while fairseq saves never leaves a truncated ``checkpoint_last.pt``.

``fairseq.checkpoint_utils.save_checkpoint`` writes the first checkpoint of a save atomically (to
``<name>.tmp``, then renamed) but makes the others (``checkpoint_best.pt``, ``checkpoint_last.pt``,
...) with ``PathManager.copy``, which writes the destination in place. A job killed during that copy
(a scheduler's SIGKILL after its grace period, a node failure) leaves a truncated
``checkpoint_last.pt``, and the rerun that should continue the run fails to load it. On local paths
the copy goes to ``<destination>.tmp`` and is renamed over the destination (``os.replace``), so the
destination is always either the previous checkpoint or the new one; other paths (fairseq's ioPath
handlers) are copied as fairseq does.
"""

from __future__ import annotations

import contextlib
import functools
import os

from ._shape import is_patched, mark, parameters, require, require_names, unpatched

NAME = "atomic_copy"


def check() -> None:
    from fairseq import checkpoint_utils
    from fairseq.file_io import PathManager

    params = parameters(unpatched(PathManager.copy))
    require(params == ["src_path", "dst_path", "overwrite"], f"PathManager.copy{tuple(params)}")
    require(callable(getattr(PathManager, "supports_rename", None)), "PathManager.supports_rename is missing")
    require(checkpoint_utils.PathManager is PathManager, "checkpoint_utils no longer uses fairseq.file_io.PathManager")
    require_names(checkpoint_utils.save_checkpoint, ["PathManager", "copy"])


def apply() -> None:
    """Make ``PathManager.copy`` write local destinations atomically (idempotent)."""
    from fairseq.file_io import PathManager

    original = PathManager.copy
    if is_patched(original):
        return

    @functools.wraps(original)
    def atomic_copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if not PathManager.supports_rename(dst_path):
            return original(src_path, dst_path, overwrite)
        if os.path.exists(dst_path) and not overwrite:
            raise FileExistsError(f"{dst_path} exists and overwrite=False")
        partial = dst_path + ".tmp"
        try:
            copied = original(src_path, partial, True)
            os.replace(partial, dst_path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(partial)
            raise
        return bool(copied)

    PathManager.copy = staticmethod(mark(atomic_copy, NAME))
