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

if __name__ == "knee_plugins.fairseq_plugin":
    from . import patches
    from . import knee_lr_scheduler, one_cycle_lr_scheduler, radam  # noqa: F401
    from . import models  # noqa: F401

    patches.install()
else:
    # ``--user-dir .../knee_plugins/fairseq_plugin`` imports this folder as a top-level module;
    # register the package itself (once) instead of a second copy.
    importlib.import_module("knee_plugins.fairseq_plugin")
