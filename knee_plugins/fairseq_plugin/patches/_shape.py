"""What every patch checks before it changes anything: the shape of the object it changes.

A patch's ``check()`` raises :class:`ShapeMismatch` when its target differs from what the patch
was written for: a missing attribute, other parameters, code that no longer uses the names the
patch relies on. The wrappers a patch installs carry :data:`MARK`, so that a patch applies once
and its check reads the function fairseq defined.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

MARK = "__knee_plugins_patch__"


class ShapeMismatch(Exception):
    """The object a patch changes is not what the patch was written for."""


def require(condition: bool, what: str) -> None:
    """Raise :class:`ShapeMismatch` with ``what`` unless ``condition`` holds."""
    if not condition:
        raise ShapeMismatch(what)


def is_patched(func: Any) -> bool:
    """Whether ``func`` is a wrapper installed by one of the plugin's patches."""
    return bool(getattr(func, MARK, None))


def mark(wrapper: Callable, patch: str) -> Callable:
    """Label ``wrapper`` (made with :func:`functools.wraps`) as installed by ``patch``."""
    setattr(wrapper, MARK, patch)
    return wrapper


def unpatched(func: Callable) -> Callable:
    """The function fairseq defined, also when a patch already wrapped it."""
    while is_patched(func) and hasattr(func, "__wrapped__"):
        func = func.__wrapped__
    return func


def parameters(func: Callable) -> list[str]:
    """The parameter names of ``func`` itself (not of a function it wraps)."""
    return list(inspect.signature(func, follow_wrapped=False).parameters)


def code_names(func: Callable) -> frozenset[str]:
    """The global and attribute names ``func``'s code uses."""
    code = getattr(func, "__code__", None)
    if code is None:
        raise ShapeMismatch(f"{getattr(func, '__qualname__', func)!r} is not a Python function")
    return frozenset(code.co_names)


def require_names(func: Callable, names: Iterable[str]) -> None:
    """Raise :class:`ShapeMismatch` unless ``func``'s code uses every one of ``names``."""
    missing = sorted(set(names) - code_names(func))
    require(not missing, f"{func.__qualname__} no longer uses {', '.join(missing)}")
