"""Two gloo worker processes under torchrun train with knee; the LR per update equals one process's."""

import socket

import pytest
from knee_fairseq_helpers import PEAK_LR, TINY_MODEL, as_logged, clean_env, logged_lrs, run_cli

from knee_plugins.schedule import knee_factor

NO_HOOK = {"KNEE_PLUGINS_NO_AUTOREGISTER": "1"}
KNEE = ("--lr-scheduler", "knee", "--max-update", "12", "--warmup-updates", "2")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("loaded_by", ["hook", "user-dir"])
def test_two_process_torchrun_matches_one_process(data_bin, tmp_path, train, user_dir, loaded_by):
    """Each worker loads the plugin by itself: through the start-up hook, or from --user-dir alone."""
    plugin, env = ((), None) if loaded_by == "hook" else (("--user-dir", user_dir), clean_env(**NO_HOOK))
    two = run_cli(
        "torchrun", "--nproc_per_node", "2", "--master_port", free_port(),
        "-m", "fairseq_cli.train", data_bin, *TINY_MODEL, *KNEE, *plugin,
        "--save-dir", tmp_path / "two", "--distributed-world-size", "2",
        "--distributed-no-spawn", "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp",
        env=env,
    ).stdout  # fmt: skip
    assert "distributed init (rank 1)" in two
    one = train(*KNEE, save_dir=tmp_path / "one").stdout
    two_lrs, one_lrs = logged_lrs(two), logged_lrs(one)
    assert sorted(two_lrs) == list(range(1, 13))
    assert two_lrs == one_lrs
    for step, lr in two_lrs.items():
        factor = knee_factor(step, total_steps=12, warmup_steps=2, explore_steps=6)
        assert lr == as_logged(PEAK_LR * factor)
