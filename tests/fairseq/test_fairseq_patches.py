"""The plugin's patches of fairseq apply only to the fairseq they were written for, and can be
switched off; a skipped patch warns once, names itself and changes nothing."""

import atexit
import threading
import warnings

import pytest
import torch.serialization
from fairseq import file_io, options
from fairseq.data import iterators
from fairseq.distributed import utils as distributed_utils
from fairseq.file_io import PathManager
from fairseq.trainer import Trainer
from knee_fairseq_helpers import LR, clean_env, make, run_cli, trace, train_records

from knee_plugins.fairseq_plugin import patches
from knee_plugins.fairseq_plugin.patches._shape import unpatched as fairseq_original
from knee_plugins.schedule import knee_factor

NAMES = ["epoch_budget", "clean_exit", "cpu_torchrun", "cli_help", "checkpoint_globals", "atomic_copy"]


class Unpatched:
    """fairseq's objects as before the plugin, plus recorders of the plugin's other changes."""

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch
        monkeypatch.setattr(patches, "_status", {})
        monkeypatch.setattr(patches, "_warned", set())
        monkeypatch.delenv(patches.DISABLE_ENV, raising=False)
        for owner, name in self.wrapped_functions():
            monkeypatch.setattr(owner, name, fairseq_original(getattr(owner, name)))
        self.atexit_calls = []
        self.safe_globals = []
        monkeypatch.setattr(atexit, "register", lambda f: self.atexit_calls.append(f))
        monkeypatch.setattr(atexit, "unregister", lambda f: None)
        monkeypatch.setattr(torch.serialization, "add_safe_globals", self.safe_globals.extend)

    @staticmethod
    def wrapped_functions():
        return [(Trainer, "get_train_iterator"), (options, "parse_args_and_arch"),
                (distributed_utils, "_infer_torch_distributed_launch_init"), (PathManager, "copy")]  # fmt: skip

    def targets(self) -> list:
        return [getattr(owner, name, None) for owner, name in self.wrapped_functions()]

    def install(self) -> tuple[dict, list[str]]:
        """Run the plugin's installation; return its status and the patch warnings' messages."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            status = patches.install()
        return status, [str(w.message) for w in caught if w.category is patches.FairseqPatchWarning]


@pytest.fixture
def unpatched(monkeypatch):
    return Unpatched(monkeypatch)


def test_the_registry_lists_every_patch():
    assert list(patches.patch_names()) == NAMES
    assert all(p.fixes and p.without and p.target and p.fairseq_versions for p in patches.PATCHES)
    assert patches.status() == dict.fromkeys(NAMES, "applied"), "this fairseq is what they target"


def test_each_patch_is_the_module_named_after_it():
    for patch in patches.PATCHES:
        module = f"knee_plugins.fairseq_plugin.patches.{patch.name}"
        assert patch.check.__module__ == patch.apply.__module__ == module


def test_on_the_fairseq_they_were_written_for_every_patch_applies(unpatched):
    before = unpatched.targets()
    status, warned = unpatched.install()
    assert status == dict.fromkeys(NAMES, "applied") and warned == []
    after = unpatched.targets()
    assert all(new is not old and new.__wrapped__ is old for old, new in zip(before, after, strict=False))
    assert len(unpatched.atexit_calls) == 1 and unpatched.safe_globals


def test_another_fairseq_version_skips_every_patch_warning_once(unpatched, monkeypatch):
    import fairseq

    monkeypatch.setattr(fairseq, "__version__", "0.13.0")
    before = unpatched.targets()
    status, warned = unpatched.install()
    assert unpatched.targets() == before
    assert unpatched.atexit_calls == [] and unpatched.safe_globals == []
    assert len(warned) == len(NAMES)
    for name, message in zip(NAMES, warned, strict=False):
        assert f"patch '{name}'" in message and "0.13.0" in message and ">=0.12,<0.13" in message
        assert f"KNEE_PLUGINS_DISABLE_PATCHES={name}" in message
        assert status[name].startswith("skipped") and not patches.applied(name)
    assert unpatched.install()[1] == [], "warns once per process"


class OtherConsumer(threading.Thread):
    def __init__(self, queue, source, max_len, cuda_device):
        super().__init__(daemon=True)
        self._out = queue

    def run(self):
        self._out.put(None)


def other_train_iterator(self, epoch_number, combine=True):
    return self.task.get_batch_iterator()


def train_iterator_without_batches(self, epoch, combine=True):
    return None


def other_parse_args(args, parser=None):
    return args


def other_copy(src_path, dst_path):
    return True


MISSHAPEN = [
    ("epoch_budget", Trainer, "get_train_iterator", other_train_iterator, "epoch_number"),
    ("epoch_budget", Trainer, "get_train_iterator", train_iterator_without_batches,
     "no longer uses get_batch_iterator"),
    ("clean_exit", iterators, "BackgroundConsumer", OtherConsumer, "no longer uses _queue"),
    ("cpu_torchrun", distributed_utils, "_infer_torch_distributed_launch_init", None,
     "_infer_torch_distributed_launch_init"),
    ("cli_help", options, "parse_args_and_arch", other_parse_args, "parse_args_and_arch('args', 'parser')"),
    ("checkpoint_globals", torch.serialization, "add_safe_globals", None, "add_safe_globals"),
    ("atomic_copy", PathManager, "copy", other_copy, "PathManager.copy('src_path', 'dst_path')"),
]  # fmt: skip


@pytest.mark.parametrize("name, owner, attribute, replacement, reason", MISSHAPEN,
                         ids=[f"{case[0]}-{case[4][:20]}" for case in MISSHAPEN])  # fmt: skip
def test_a_misshapen_target_skips_only_its_patch(unpatched, monkeypatch, name, owner, attribute,
                                                 replacement, reason):  # fmt: skip
    if replacement is None:
        monkeypatch.delattr(owner, attribute)
    else:
        monkeypatch.setattr(owner, attribute, replacement)
    status, warned = unpatched.install()
    assert getattr(owner, attribute, None) is replacement, "the misshapen target was changed"
    assert len(warned) == 1 and f"patch '{name}'" in warned[0] and reason in warned[0], warned
    assert status[name].startswith("skipped") and reason in status[name]
    assert {n for n, s in status.items() if s != "applied"} == {name}


def test_the_user_switches_patches_off(unpatched, monkeypatch):
    monkeypatch.setenv(patches.DISABLE_ENV, "cli_help, clean_exit,no_such_patch")
    before = unpatched.targets()
    status, warned = unpatched.install()
    assert status["cli_help"] == status["clean_exit"] == "disabled (KNEE_PLUGINS_DISABLE_PATCHES)"
    assert options.parse_args_and_arch is before[1] and unpatched.atexit_calls == []
    assert status["epoch_budget"] == "applied" and Trainer.get_train_iterator is not before[0]
    assert len(warned) == 1 and "no_such_patch" in warned[0] and ", ".join(NAMES) in warned[0]


def test_all_switches_every_patch_off(unpatched, monkeypatch):
    monkeypatch.setenv(patches.DISABLE_ENV, "all")
    before = unpatched.targets()
    status, warned = unpatched.install()
    assert set(status.values()) == {"disabled (KNEE_PLUGINS_DISABLE_PATCHES)"} and warned == []
    assert unpatched.targets() == before and unpatched.safe_globals == []


def test_without_the_epoch_budget_patch_update_budgets_work_and_epoch_budgets_fail(unpatched, monkeypatch):
    monkeypatch.setenv(patches.DISABLE_ENV, "epoch_budget")
    unpatched.install()
    sched, _ = make("knee", max_update=10, warmup_updates=2, explore_updates=4)
    assert trace(sched, range(11)) == [
        LR * knee_factor(t, total_steps=10, warmup_steps=2, explore_steps=4) for t in range(11)
    ]
    for budget in ({"max_epoch": 3}, {"max_epoch": 3, "max_update": 100}):
        sched, _ = make("knee", **budget)
        with pytest.raises(ValueError) as info:
            sched.step_begin_epoch(1)
        message = str(info.value)
        assert "--max-epoch 3" in message and "'epoch_budget' patch" in message, message
        assert "disabled (KNEE_PLUGINS_DISABLE_PATCHES)" in message


@pytest.mark.slow
@pytest.mark.parametrize("disabled", ["", "cli_help"])
def test_switching_cli_help_off_in_fairseq_train(disabled):
    out = run_cli("fairseq-train", "--help",
                  env=clean_env(KNEE_PLUGINS_DISABLE_PATCHES=disabled)).stdout  # fmt: skip
    assert ("--lr-scheduler knee (knee_plugins)" in out) is (not disabled)
    assert ("--explore-epochs" in out) is (not disabled)
    assert "knee" in out.split("--lr-scheduler {", 1)[1].split("}", 1)[0], "knee is still registered"


@pytest.mark.slow
def test_fairseq_train_with_max_epoch_stops_clearly_without_the_epoch_budget_patch(train):
    proc = train("--lr-scheduler", "knee", "--max-epoch", "1", check=False,
                 env=clean_env(KNEE_PLUGINS_DISABLE_PATCHES="epoch_budget"))  # fmt: skip
    assert proc.returncode != 0
    assert "'epoch_budget' patch" in proc.stdout and "--max-epoch 1" in proc.stdout, proc.stdout[-2000:]
    assert not train_records(proc.stdout), "failed only after training had started"


class CopyKilledHalfway:
    """An ioPath manager (with no remote handlers) whose copy dies after writing half of the file (a kill
    during a save)."""

    _path_handlers: dict = {}

    @staticmethod
    def copy(src_path, dst_path, overwrite=False):
        data = open(src_path, "rb").read()
        with open(dst_path, "wb") as out:
            out.write(data[: len(data) // 2])
        raise KeyboardInterrupt("killed during the copy")


def test_a_copy_cut_short_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    """fairseq makes checkpoint_last.pt by copying the save it just wrote: cut short, fairseq's own copy
    leaves a truncated checkpoint_last.pt (which a rerun cannot load); with the patch, the previous one."""
    new, last = tmp_path / "checkpoint_1_8.pt", tmp_path / "checkpoint_last.pt"
    new.write_bytes(b"new checkpoint " * 100)
    monkeypatch.setattr(file_io, "IOPathManager", CopyKilledHalfway)
    for copy, expected in (
        (fairseq_original(PathManager.copy), b"new checkpoint " * 50),
        (PathManager.copy, b"previous"),
    ):
        last.write_bytes(b"previous")
        with pytest.raises(KeyboardInterrupt):
            copy(str(new), str(last), overwrite=True)
        assert last.read_bytes() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_1_8.pt", "checkpoint_last.pt"]
    monkeypatch.setattr(file_io, "IOPathManager", None)
    assert PathManager.copy(str(new), str(last), overwrite=True) and last.read_bytes() == new.read_bytes()
