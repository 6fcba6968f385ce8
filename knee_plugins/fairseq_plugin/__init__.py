"""knee_plugins' fairseq plugin: ``--lr-scheduler knee`` / ``one_cycle``, ``--optimizer radam``,
``--arch transformer_mb``, a ``weights_only`` allow-list for fairseq checkpoints and a clean exit
of fairseq-train. The changes to fairseq's own objects are listed, checked and applied in
:mod:`.patches` (``KNEE_PLUGINS_DISABLE_PATCHES=name,...`` switches them off).

As for any fairseq ``--user-dir``, importing this package registers it: :func:`register` runs
once per process. Every way the plugin is loaded goes through that import:

* the start-up hook ``_knee_plugins_fairseq_hook`` (loaded by a .pth file) imports it as soon as
  a process imports fairseq: ``fairseq-train`` and friends, and every worker that fairseq spawns
  or torchrun starts;
* ``--user-dir <site-packages>/knee_plugins/fairseq_plugin``, with or without the hook: fairseq
  imports this folder as the top-level module ``fairseq_plugin`` (and again, from
  ``cfg.common.user_dir``, in each worker), which imports this package and stands in for it.

``import knee_plugins`` alone changes nothing in fairseq. See docs/fairseq.md.
"""

import importlib
import sys

PACKAGE = "knee_plugins.fairseq_plugin"


def register() -> dict[str, str]:
    """Register the plugin's components with fairseq and apply its patches; return the patches'
    status (:func:`.patches.status`). Idempotent."""
    from . import knee_lr_scheduler, lr_range_test_lr_scheduler, models, one_cycle_lr_scheduler, radam  # noqa: F401
    from .patches import install

    return install()


if __name__ == PACKAGE:
    register()
else:
    # fairseq imported this folder by its name (``--user-dir``): register the package itself, and
    # give the ``<name>.models.*`` that fairseq imports next the package's modules, so that
    # nothing is registered twice.
    importlib.import_module(PACKAGE)
    for _name, _module in list(sys.modules.items()):
        if _name.startswith(PACKAGE + "."):
            sys.modules.setdefault(__name__ + _name[len(PACKAGE) :], _module)
