"""fairseq's prefetch thread no longer aborts the interpreter at exit once the plugin is loaded."""

import subprocess
import sys
import textwrap
import threading

from fairseq.data import iterators
from knee_fairseq_helpers import clean_env

from knee_plugins.fairseq_plugin.patches.clean_exit import stop_background_consumers

# Stops after the first batch while the consumer thread is busy in torch operators, as
# fairseq-train does when --max-update falls inside an epoch.
BUSY_CONSUMER_AT_EXIT = textwrap.dedent(
    """
    import torch
    from fairseq.data import iterators

    class EndlessBatches:
        def __len__(self):
            return 10**9

        def __iter__(self):
            while True:
                x = torch.ones(64, 64)
                for _ in range(50):
                    x = (x @ x).sum(dim=0, keepdim=True).expand(64, 64) / 64
                yield x

    batches = iterators.BufferedIterator(2, EndlessBatches())
    next(batches)
    print("took one batch")
    """
)


def run_script(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BUSY_CONSUMER_AT_EXIT],
        capture_output=True, text=True, env=clean_env(**env), timeout=120,
    )  # fmt: skip


def test_exit_with_a_busy_prefetch_thread_is_clean():
    runs = [run_script() for _ in range(3)]
    assert [run.returncode for run in runs] == [0, 0, 0], runs[-1].stderr[-2000:]
    assert all("terminate called" not in run.stderr for run in runs)
    assert all("Traceback" not in run.stderr for run in runs), runs[-1].stderr[-2000:]


def test_without_the_plugin_the_same_exit_aborts():
    """The control: the script above does reach fairseq's abort on this torch/Python."""
    run = run_script(KNEE_PLUGINS_NO_AUTOREGISTER="1")
    assert run.returncode != 0
    assert "terminate called without an active exception" in run.stderr


class CheapBatches:
    def __len__(self):
        return 1000

    def __iter__(self):
        return iter(range(1000))


def test_a_consumer_blocked_on_a_full_buffer_is_stopped_and_joined(monkeypatch, capsys):
    # the interpreter's own thread excepthook, as in fairseq-train (pytest installs a stricter one)
    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)
    batches = iterators.BufferedIterator(2, CheapBatches())
    assert next(batches) == 0
    consumer = batches._consumer
    assert consumer.is_alive()
    assert stop_background_consumers(timeout=10) == []
    assert not consumer.is_alive()
    assert consumer.count < 10
    assert capsys.readouterr().err == ""
