"""Fixtures of the fairseq plugin tests: tiny data binarised once per session, tiny runs.

fairseq must be importable here: these tests fail (never skip) without it, since CI installs it.
"""

from pathlib import Path

import fairseq  # noqa: F401  (a missing fairseq is an error, not a skip)
import pytest
from knee_fairseq_helpers import TINY_MODEL, run_cli, write_corpus


@pytest.fixture(scope="session")
def data_bin(tmp_path_factory) -> Path:
    """400 short synthetic de-en pairs binarised with fairseq-preprocess (once per session)."""
    root = tmp_path_factory.mktemp("fairseq_data")
    raw = root / "raw"
    raw.mkdir()
    write_corpus(raw)
    dest = root / "bin"
    run_cli(
        "fairseq-preprocess", "--source-lang", "de", "--target-lang", "en",
        "--trainpref", raw / "train", "--validpref", raw / "valid", "--testpref", raw / "test",
        "--destdir", dest, "--joined-dictionary", "--workers", "1",
    )  # fmt: skip
    return dest


@pytest.fixture
def train(data_bin, tmp_path):
    """``train(*args, save_dir=None, env=None, check=True)``: a tiny fairseq-train run."""

    def _train(*args, save_dir=None, env=None, check=True):
        save_dir = save_dir or tmp_path / "ckpt"
        return run_cli(
            "fairseq-train", data_bin, *TINY_MODEL, "--save-dir", save_dir, *args,
            env=env, check=check,
        )  # fmt: skip

    return _train


@pytest.fixture(scope="session")
def user_dir() -> Path:
    """What users pass to --user-dir: the plugin's folder in the installed knee_plugins package."""
    import knee_plugins

    return Path(knee_plugins.__file__).parent / "fairseq_plugin"
