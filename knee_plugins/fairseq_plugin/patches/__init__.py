"""Every change the plugin makes to fairseq (and torch) beyond registering its components.

Registering ``--lr-scheduler knee``/``one_cycle``, ``--optimizer radam`` and ``--arch
transformer_mb`` uses fairseq's public registries. Six more changes touch objects that fairseq
(or torch) does not offer as extension points. Each is a module of this package named after it,
with a ``check()`` and an idempotent ``apply()``; this registry lists them in :data:`PATCHES`, and
:func:`install` applies them when the plugin is registered. Each was written for one fairseq
series, and before it changes anything it checks

* that ``fairseq.__version__`` is in that series, and
* that the object it changes has the shape it was written for (the attribute exists, its
  parameters and the names its code uses are the expected ones).

If either check fails, it leaves fairseq alone and warns once (a :class:`FairseqPatchWarning`
naming the patch); the schedulers keep working, with what the patch provided unavailable
(e.g. without ``epoch_budget``, budgets in epochs fail with an error instead of a mis-sized
schedule). ``KNEE_PLUGINS_DISABLE_PATCHES=name,name`` (or ``all``) switches patches off;
``KNEE_PLUGINS_NO_AUTOREGISTER=1`` keeps the whole plugin away unless ``--user-dir`` loads it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from . import atomic_copy, checkpoint_globals, clean_exit, cli_help, cpu_torchrun, epoch_budget
from ._shape import ShapeMismatch

DISABLE_ENV = "KNEE_PLUGINS_DISABLE_PATCHES"
FAIRSEQ_SERIES = ">=0.12,<0.13"
APPLIED = "applied"


class FairseqPatchWarning(RuntimeWarning):
    """A patch of fairseq was skipped (unexpected fairseq version or shape) or misnamed."""


@dataclass(frozen=True)
class Patch:
    """One change to fairseq: what it fixes, what it was written for, how it checks and applies.

    ``check`` raises :class:`ShapeMismatch` (or fails to find its target) when fairseq differs
    from what the patch was written for; ``apply`` is idempotent.
    """

    name: str
    target: str
    fixes: str
    without: str
    fairseq_versions: str
    check: Callable[[], None]
    apply: Callable[[], None]


PATCHES: tuple[Patch, ...] = (
    Patch(
        name=epoch_budget.NAME,
        target="fairseq.trainer.Trainer.get_train_iterator (wrapped)",
        fixes="tells --lr-scheduler knee/one_cycle the number of updates per epoch, for "
        "--max-epoch budgets and --explore-epochs",
        without="budgets and durations in epochs fail; give them in updates (--max-update, "
        "--total-num-update, --explore-updates, --explore-ratio)",
        fairseq_versions=FAIRSEQ_SERIES,
        check=epoch_budget.check,
        apply=epoch_budget.apply,
    ),
    Patch(
        name=clean_exit.NAME,
        target="fairseq.data.iterators.BackgroundConsumer._queue (replaced at exit)",
        fixes="stops fairseq's prefetch threads at exit, so fairseq-train does not abort (SIGABRT) after training",
        without="fairseq-train may abort after 'done training'; --data-buffer-size 0 avoids it",
        fairseq_versions=FAIRSEQ_SERIES,
        check=clean_exit.check,
        apply=clean_exit.apply,
    ),
    Patch(
        name=cpu_torchrun.NAME,
        target="fairseq.distributed.utils._infer_torch_distributed_launch_init (wrapped)",
        fixes="lets torchrun start fairseq-train on machines without CUDA (gloo)",
        without="torchrun without CUDA devices fails in fairseq with ZeroDivisionError",
        fairseq_versions=FAIRSEQ_SERIES,
        check=cpu_torchrun.check,
        apply=cpu_torchrun.apply,
    ),
    Patch(
        name=cli_help.NAME,
        target="fairseq.options.parse_args_and_arch (wrapped; reads the parser's _option_string_actions)",
        fixes="lists the options of knee, one_cycle and radam in fairseq-train --help",
        without="--help does not show the plugin's options (they still work)",
        fairseq_versions=FAIRSEQ_SERIES,
        check=cli_help.check,
        apply=cli_help.apply,
    ),
    Patch(
        name=checkpoint_globals.NAME,
        target="torch.serialization.add_safe_globals (argparse.Namespace allow-listed)",
        fixes="lets torch >= 2.6 load fairseq checkpoints with weights_only=True",
        without="fairseq-generate --path and --restore-file fail on torch >= 2.6 (weights_only)",
        fairseq_versions=FAIRSEQ_SERIES,
        check=checkpoint_globals.check,
        apply=checkpoint_globals.apply,
    ),
    Patch(
        name=atomic_copy.NAME,
        target="fairseq.file_io.PathManager.copy (wrapped; local paths copied to <dst>.tmp, then renamed)",
        fixes="a kill during a save leaves checkpoint_last.pt / checkpoint_best.pt whole (old or new), never truncated",
        without="a job killed while fairseq copies a save may leave a truncated checkpoint_last.pt that the rerun cannot load",
        fairseq_versions=FAIRSEQ_SERIES,
        check=atomic_copy.check,
        apply=atomic_copy.apply,
    ),
)

_status: dict[str, str] = {}
_warned: set[str] = set()


def patch_names() -> tuple[str, ...]:
    return tuple(patch.name for patch in PATCHES)


def fairseq_version() -> str:
    import fairseq

    return str(getattr(fairseq, "__version__", "unknown"))


def _version_matches(version: str, specifier: str) -> bool:
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:
        return SpecifierSet(specifier).contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


def disabled_by_user() -> frozenset[str]:
    """The patch names listed in ``KNEE_PLUGINS_DISABLE_PATCHES`` (``all``: every patch)."""
    names = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
    if "all" in names:
        return frozenset(patch_names())
    unknown = sorted(names - set(patch_names()))
    if unknown:
        _warn_once(
            f"unknown:{','.join(unknown)}",
            f"knee_plugins: {DISABLE_ENV} names unknown patches {unknown}; the patches are "
            f"{', '.join(patch_names())} (or 'all')",
        )
    return frozenset(names & set(patch_names()))


def _warn_once(key: str, message: str) -> None:
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(message, FairseqPatchWarning, stacklevel=3)


def problem(patch: Patch) -> str | None:
    """Why ``patch`` must not be applied to this fairseq, or ``None`` if it fits."""
    version = fairseq_version()
    if not _version_matches(version, patch.fairseq_versions):
        return f"it was written for fairseq {patch.fairseq_versions}, this is fairseq {version}"
    try:
        patch.check()
    except ShapeMismatch as exc:
        return f"fairseq {version} differs from what it was written for: {exc}"
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        return f"fairseq {version} differs from what it was written for: {exc!r}"
    return None


def install() -> dict[str, str]:
    """Apply every patch that is not switched off and fits this fairseq; return :func:`status`.

    Idempotent: a patch is considered once per process.
    """
    disabled = disabled_by_user()
    for patch in PATCHES:
        if patch.name in _status:
            continue
        if patch.name in disabled:
            _status[patch.name] = f"disabled ({DISABLE_ENV})"
            continue
        reason = problem(patch)
        if reason is None:
            try:
                patch.apply()
            except Exception as exc:  # noqa: BLE001 (a broken patch must not take the schedulers with it)
                reason = f"applying it failed with {exc!r}"
            else:
                _status[patch.name] = APPLIED
                continue
        _status[patch.name] = f"skipped: {reason}"
        _warn_once(
            patch.name,
            f"knee_plugins: skipped the fairseq patch '{patch.name}' ({patch.target}): "
            f"{reason}. Nothing was changed; without it, {patch.without}. Set "
            f"{DISABLE_ENV}={patch.name} to switch it off and silence this warning.",
        )
    return status()


def status() -> dict[str, str]:
    """``{patch name: "applied" | "disabled (...)" | "skipped: <reason>"}`` for patches considered."""
    return dict(_status)


def applied(name: str) -> bool:
    """Whether the patch ``name`` is in effect in this process."""
    if name not in patch_names():
        raise KeyError(f"no fairseq patch named {name!r}; the patches are {', '.join(patch_names())}")
    return _status.get(name) == APPLIED
