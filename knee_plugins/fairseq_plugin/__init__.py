"""knee_plugins' fairseq plugin: ``--lr-scheduler knee`` / ``one_cycle``, ``--optimizer radam``,
a ``weights_only`` allow-list for fairseq checkpoints and a clean exit of fairseq-train.
The changes to fairseq's own objects are listed, checked and applied in :mod:`.patches`
(``KNEE_PLUGINS_DISABLE_PATCHES=name,...`` switches them off).

Importing this package registers everything with fairseq. That happens by itself once
knee_plugins is installed (``_knee_plugins_fairseq_hook``, loaded by a .pth file, imports it as
soon as fairseq is imported), or through ``--user-dir <site-packages>/knee_plugins``.
See docs/fairseq.md.
"""

import importlib
import sys

if __name__ == "knee_plugins.fairseq_plugin":
    from . import (  # noqa: F401
        knee_lr_scheduler,
        models,  # noqa: F401
        one_cycle_lr_scheduler,
        patches,
        radam,
    )

    patches.install()
else:
    # ``--user-dir .../knee_plugins/fairseq_plugin`` imports this folder as a top-level module;
    # register the package itself (once) instead of a second copy. fairseq then imports the
    # folder's ``models/*`` as ``<top-level name>.models.*``: give those names the modules
    # already loaded, so that nothing registers twice.
    importlib.import_module("knee_plugins.fairseq_plugin")
    for _name, _module in list(sys.modules.items()):
        if _name.startswith("knee_plugins.fairseq_plugin."):
            sys.modules.setdefault(__name__ + _name[len("knee_plugins.fairseq_plugin") :], _module)
