"""Register knee_plugins with fairseq the moment fairseq is imported (no ``--user-dir`` needed).

fairseq has no plugin entry points. ``knee_plugins_fairseq.pth`` (installed into site-packages
by ``pip install`` and ``pip install -e``) imports this module at interpreter start-up. It uses
the standard library only, imports nothing else and adds one finder to ``sys.meta_path``. When
``fairseq`` is first imported, the finder lets fairseq's own ``__init__`` run to the end and then
imports ``knee_plugins.fairseq_plugin``, whose import registers the plugin
(``knee_plugins.fairseq_plugin.register``, the one way it is loaded, also by ``--user-dir``). The
finder then removes itself.

Set ``KNEE_PLUGINS_NO_AUTOREGISTER=1`` to switch this off (``--user-dir
<site-packages>/knee_plugins/fairseq_plugin`` still works).
"""

import os
import sys

PLUGIN = "knee_plugins.fairseq_plugin"
TRIGGER = "fairseq"
DISABLE_ENV = "KNEE_PLUGINS_NO_AUTOREGISTER"


def _register() -> None:
    import importlib
    import warnings

    try:
        importlib.import_module(PLUGIN)
    except Exception as exc:  # a broken plugin must not break fairseq itself
        warnings.warn(
            f"knee_plugins: could not register the fairseq plugin ({exc!r}); '--lr-scheduler knee' will be unavailable",
            RuntimeWarning,
            stacklevel=2,
        )


class FairseqImportHook:
    """A one-shot ``sys.meta_path`` finder that registers the plugin after ``import fairseq``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != TRIGGER:
            return None
        uninstall()
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if find_spec else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_register(module):
            try:
                exec_module(module)
            finally:
                del loader.exec_module
            _register()

        loader.exec_module = exec_then_register
        return spec


def install() -> None:
    """Add the hook, or register right away when fairseq is already imported."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return
    if TRIGGER in sys.modules:
        _register()
    elif not any(isinstance(finder, FairseqImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, FairseqImportHook())


def uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, FairseqImportHook)]


install()
