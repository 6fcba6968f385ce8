"""Install ``knee_plugins_fairseq.pth`` into site-packages, for wheels and editable installs alike.

All metadata lives in pyproject.toml. The .pth file (one line importing the stdlib-only
``_knee_plugins_fairseq_hook``) makes ``fairseq-train --lr-scheduler knee`` work without
``--user-dir``; see docs/fairseq.md.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH_NAME = "knee_plugins_fairseq.pth"
PTH_TEXT = "import _knee_plugins_fairseq_hook\n"


class build_py_with_pth(build_py):
    """Regular wheels: put the .pth at the root of build_lib, i.e. of site-packages."""

    def run(self):
        super().run()
        if not self.editable_mode:
            target = Path(self.build_lib, PTH_NAME)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(PTH_TEXT)

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if not self.editable_mode:
            outputs.append(str(Path(self.build_lib, PTH_NAME)))
        return outputs


class _StrategyWithPth:
    def __init__(self, strategy):
        self._strategy = strategy

    def __call__(self, wheel, files, mapping):
        self._strategy(wheel, files, mapping)
        wheel.writestr(PTH_NAME, PTH_TEXT)

    def __enter__(self):
        self._strategy.__enter__()
        return self

    def __exit__(self, *exc):
        return self._strategy.__exit__(*exc)


class editable_wheel_with_pth(editable_wheel):
    """Editable installs (PEP 660): add the .pth next to setuptools' own ``__editable__`` one."""

    def _select_strategy(self, *args, **kwargs):
        return _StrategyWithPth(super()._select_strategy(*args, **kwargs))


setup(cmdclass={"build_py": build_py_with_pth, "editable_wheel": editable_wheel_with_pth})
