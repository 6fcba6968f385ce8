"""Every change the plugin makes to fairseq (and torch) beyond registering its components.

Registering ``--lr-scheduler knee``/``one_cycle`` and ``--optimizer radam`` uses fairseq's public
registries. Five more changes touch objects that fairseq (or torch) does not offer as extension
points; they are listed in :data:`PATCHES` and applied by :func:`install` when the plugin is
imported. Each was written for one fairseq series, and before it changes anything it checks

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

import argparse
import inspect
import os
import threading
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

DISABLE_ENV = "KNEE_PLUGINS_DISABLE_PATCHES"
FAIRSEQ_SERIES = ">=0.12,<0.13"
APPLIED = "applied"


class FairseqPatchWarning(RuntimeWarning):
    """A patch of fairseq was skipped (unexpected fairseq version or shape) or misnamed."""


class ShapeMismatch(Exception):
    """The object a patch changes is not what the patch was written for."""


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


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise ShapeMismatch(what)


def _unpatched(func: Callable) -> Callable:
    """The function fairseq defined, also when this plugin already wrapped it."""
    while getattr(func, "__knee_plugins_patch__", None) and hasattr(func, "__wrapped__"):
        func = func.__wrapped__
    return func


def _parameters(func: Callable) -> list:
    return list(inspect.signature(func, follow_wrapped=False).parameters)


def _code_names(func: Callable) -> frozenset[str]:
    code = getattr(func, "__code__", None)
    if code is None:
        raise ShapeMismatch(f"{getattr(func, '__qualname__', func)!r} is not a Python function")
    return frozenset(code.co_names)


def _require_names(func: Callable, names: Iterable[str]) -> None:
    missing = sorted(set(names) - _code_names(func))
    _require(not missing, f"{func.__qualname__} no longer uses {', '.join(missing)}")


def _check_epoch_budget() -> None:
    from fairseq.data import iterators
    from fairseq.trainer import Trainer

    func = _unpatched(Trainer.get_train_iterator)
    params = _parameters(func)
    _require(params[:2] == ["self", "epoch"], f"Trainer.get_train_iterator{tuple(params)}")
    _require_names(func, ["get_batch_iterator"])
    _require(
        isinstance(inspect.getattr_static(Trainer, "lr_scheduler", None), property),
        "Trainer.lr_scheduler is not a property",
    )
    _require(hasattr(iterators.EpochBatchIterator, "__len__"), "EpochBatchIterator has no len()")


def _apply_epoch_budget() -> None:
    from .epoch_budget import report_epoch_length_to_scheduler

    report_epoch_length_to_scheduler()


def _check_clean_exit() -> None:
    from fairseq.data import iterators

    consumer = iterators.BackgroundConsumer
    _require(
        isinstance(consumer, type) and issubclass(consumer, threading.Thread),
        "BackgroundConsumer is not a threading.Thread",
    )
    _require_names(consumer.__init__, ["_queue"])
    _require_names(consumer.run, ["_queue", "put", "Exception"])
    _require(
        "BaseException" not in _code_names(consumer.run),
        "BackgroundConsumer.run catches BaseException",
    )


def _apply_clean_exit() -> None:
    from .clean_exit import stop_data_threads_at_exit

    stop_data_threads_at_exit()


def _check_cpu_torchrun() -> None:
    from fairseq.distributed import utils as distributed_utils

    func = _unpatched(distributed_utils._infer_torch_distributed_launch_init)
    params = _parameters(func)
    _require(params == ["cfg"], f"_infer_torch_distributed_launch_init{tuple(params)}")
    _require_names(
        func,
        ["device_count", "distributed_init_method", "distributed_world_size", "distributed_rank",
         "device_id", "distributed_no_spawn"],
    )  # fmt: skip
    _require_names(distributed_utils.infer_init_method, ["_infer_torch_distributed_launch_init"])


def _apply_cpu_torchrun() -> None:
    from .distributed import allow_cpu_torchrun

    allow_cpu_torchrun()


def _check_cli_help() -> None:
    from fairseq import options
    from fairseq.dataclass.utils import gen_parser_from_dataclass

    params = _parameters(_unpatched(options.parse_args_and_arch))
    _require(params[:2] == ["parser", "input_args"], f"parse_args_and_arch{tuple(params)}")
    params = _parameters(gen_parser_from_dataclass)
    _require(params[:2] == ["parser", "dataclass_instance"], f"gen_parser_from_dataclass{tuple(params)}")
    _require(
        isinstance(getattr(argparse.ArgumentParser(), "_option_string_actions", None), dict),
        "argparse.ArgumentParser has no _option_string_actions",
    )


def _apply_cli_help() -> None:
    from .cli_help import show_plugin_options_in_help

    show_plugin_options_in_help()


def _check_checkpoint_globals() -> None:
    import torch.serialization

    _require(
        callable(getattr(torch.serialization, "add_safe_globals", None)),
        "torch.serialization has no add_safe_globals (torch < 2.4)",
    )


def _apply_checkpoint_globals() -> None:
    from .checkpoint_safety import allow_fairseq_checkpoint_globals

    allow_fairseq_checkpoint_globals()


PATCHES: tuple[Patch, ...] = (
    Patch(
        name="epoch_budget",
        target="fairseq.trainer.Trainer.get_train_iterator (wrapped)",
        fixes="tells --lr-scheduler knee/one_cycle the number of updates per epoch, for "
        "--max-epoch budgets and --explore-epochs",
        without="budgets and durations in epochs fail; give them in updates (--max-update, "
        "--total-num-update, --explore-updates, --explore-ratio)",
        fairseq_versions=FAIRSEQ_SERIES,
        check=_check_epoch_budget,
        apply=_apply_epoch_budget,
    ),
    Patch(
        name="clean_exit",
        target="fairseq.data.iterators.BackgroundConsumer._queue (replaced at exit)",
        fixes="stops fairseq's prefetch threads at exit, so fairseq-train does not abort (SIGABRT) after training",
        without="fairseq-train may abort after 'done training'; --data-buffer-size 0 avoids it",
        fairseq_versions=FAIRSEQ_SERIES,
        check=_check_clean_exit,
        apply=_apply_clean_exit,
    ),
    Patch(
        name="cpu_torchrun",
        target="fairseq.distributed.utils._infer_torch_distributed_launch_init (wrapped)",
        fixes="lets torchrun start fairseq-train on machines without CUDA (gloo)",
        without="torchrun without CUDA devices fails in fairseq with ZeroDivisionError",
        fairseq_versions=FAIRSEQ_SERIES,
        check=_check_cpu_torchrun,
        apply=_apply_cpu_torchrun,
    ),
    Patch(
        name="cli_help",
        target="fairseq.options.parse_args_and_arch (wrapped; reads the parser's _option_string_actions)",
        fixes="lists the options of knee, one_cycle and radam in fairseq-train --help",
        without="--help does not show the plugin's options (they still work)",
        fairseq_versions=FAIRSEQ_SERIES,
        check=_check_cli_help,
        apply=_apply_cli_help,
    ),
    Patch(
        name="checkpoint_globals",
        target="torch.serialization.add_safe_globals (argparse.Namespace allow-listed)",
        fixes="lets torch >= 2.6 load fairseq checkpoints with weights_only=True",
        without="fairseq-generate --path and --restore-file fail on torch >= 2.6 (weights_only)",
        fairseq_versions=FAIRSEQ_SERIES,
        check=_check_checkpoint_globals,
        apply=_apply_checkpoint_globals,
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
