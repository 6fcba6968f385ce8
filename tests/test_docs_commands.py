"""Every command and Python snippet the docs show runs, or parses with the real parser.

Docs: README.md, docs/*.md, scripts/*/README.md (globbed: a new README is checked as soon as it exists).
Blocks fenced as ```bash / ```sh / ```console hold commands (one test per command, id file:line;
``\\`` continuations are joined, ``# comments`` and ``# output`` lines after a command are not run);
```python blocks are executed; blocks with no language, ```text or ```yaml are not run.

What each command gets:
- ``python -m scripts.<task>.<program> ...`` (the recipes, run from the checkout), ``python -m benchmarks.<x>``:
  run with ``--dry-run``
  appended (the project's convention: print the resolved plan, exit 0, no data/GPU/network);
  all dry-runs share one interpreter, in a temporary working directory.
- ``fairseq-train`` / ``fairseq-generate`` / ``fairseq-preprocess`` (also as the script of
  ``torchrun``, ``$(which fairseq-train)`` or ``-m fairseq_cli.train``): fairseq's own parser with the
  plugin loaded; a training command with a budget also builds its optimizer and LR scheduler (which
  validates the schedule's options) and checks the LR of the first update and after the budget
  (an epoch budget is sized with ``EPOCH_BATCHES`` batches per epoch). ``DATA`` is any data
  directory; ``...`` stands for the user's other options, and where it hides
  ``--arch``/``--optimizer`` (or, leading, the data) the test fills them in.
- ``accelerate launch [flags] script args``: accelerate's launch parser, then the script with
  ``--dry-run`` if it has one, else its ``parse_args(argv)``.
- ``torchrun``: torch's own parser, then the script as above.
- ``knee-plan ...``: run for real; ``# `` lines right after it must be its exact output.
- ``pip install``: torch pinned exactly; every other requirement pinned or under ``-c``.
- ``make X``: X is a Makefile target. ``cd``/``export``: accepted.
- Anything else fails: teach this file (or docs_helpers.py) how to check it.
- ``$VAR``: a value from ``VARIABLES`` in docs_helpers.py; ``$(python -c '...')`` is run.

Python snippets run in a temporary directory with a namespace that supplies, tiny and real, the
names the prose assumes (``model``, ``optimizer``, ``loader``, ``train``, ``args``, ``Trainer``,
... see ``SNIPPET_NAMES``); a snippet that reads any other undefined name fails. In a call,
``TrainingArguments(..., x=1)`` fills ``...`` with tiny settings.

A block that cannot be checked gets ``<!-- doc-test: skip: <reason> -->`` on the line above its fence;
its commands are reported as skipped with that reason.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_helpers import (  # noqa: E402
    FAIRSEQ_BUDGET_OPTIONS,
    FAIRSEQ_ELIDED_DEFAULTS,
    PYTHON_LANGUAGES,
    ROOT,
    SHELL_BUILTINS,
    SHELL_LANGUAGES,
    TEXT_LANGUAGES,
    Command,
    all_blocks,
    check_pip,
    commands,
    doc_files,
    free_names,
    make_targets,
    skip_reason,
    split_commands,
)

BLOCKS = all_blocks()
COMMANDS = [command for block in BLOCKS if block.language in SHELL_LANGUAGES for command in commands(block)]
SNIPPETS = [block for block in BLOCKS if block.language in PYTHON_LANGUAGES]
BIN = Path(sys.executable).parent
FAIRSEQ_TOOLS = {"fairseq-train", "fairseq-generate", "fairseq-preprocess"}
FAIRSEQ_MODULES = {
    "fairseq_cli.train": "fairseq-train",
    "fairseq_cli.generate": "fairseq-generate",
    "fairseq_cli.preprocess": "fairseq-preprocess",
}
DRY_RUN_ENV = {
    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    "CUDA_VISIBLE_DEVICES": "",
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONWARNINGS": "ignore",
}


# ---------------------------------------------------------------------------------------------
# Planning: a command -> the checks it needs (cheap, no subprocess except $(python -c ...))


def python_target(words: list[str]) -> tuple[str, str, list[str]]:
    """``(kind, target, args)`` of ``<script> args`` or ``-m <module> args``."""
    if words[0] == "-m":
        try:
            found = importlib.util.find_spec(words[1]) is not None
        except ModuleNotFoundError:
            found = False
        assert found, f"python -m {words[1]}: no such module"
        return "module", words[1], words[2:]
    assert not words[0].startswith(("scripts/", "benchmarks/")), (
        f"{words[0]}: the recipes and benchmarks run as modules of the checkout, "
        f"python -m {words[0].removesuffix('.py').replace('/', '.')}"
    )
    script = (ROOT / words[0]).resolve()
    assert script.is_file(), f"{words[0]}: no such script in the checkout"
    return "path", str(script), words[1:]


def source_of(kind: str, target: str) -> str:
    origin = importlib.util.find_spec(target).origin if kind == "module" else target
    return Path(origin).read_text()


def script_steps(kind: str, target: str, args: list[str], launched: bool = False) -> list[tuple]:
    """A script the docs run: ``--dry-run`` appended; under a launcher, a self-contained script without
    ``--dry-run`` gets its own ``parse_args(argv)`` instead."""
    if kind == "module" and target in FAIRSEQ_MODULES:
        return [("fairseq", FAIRSEQ_MODULES[target], args)]
    if kind == "module" and target == "accelerate.commands.launch":
        return accelerate_steps(args)
    if kind == "module" and target == "torch.distributed.run":
        return torchrun_steps(args)
    if kind == "path" and Path(target).name in FAIRSEQ_TOOLS:
        return [("fairseq", Path(target).name, args)]
    if kind == "module":
        assert target.startswith(("knee_plugins.", "scripts.", "benchmarks.")), (
            f"python -m {target}: only the project's modules are dry-run"
        )
    source = source_of(kind, target)
    if launched and "--dry-run" not in source and "def parse_args(" in source:
        return [("parse-args", kind, target, args)]
    return [("dry-run", kind, target, args if "--dry-run" in args else [*args, "--dry-run"])]


def accelerate_steps(argv: list[str]) -> list[tuple]:
    from accelerate.commands.launch import launch_command_parser

    args = parse_quietly(launch_command_parser(), argv, "accelerate launch")
    kind, target, rest = python_target(
        [*(["-m"] if args.module else []), args.training_script, *args.training_script_args]
    )
    return script_steps(kind, target, rest, launched=True)


def torchrun_steps(argv: list[str]) -> list[tuple]:
    from torch.distributed.run import get_args_parser

    args = parse_quietly(get_args_parser(), argv, "torchrun")
    if args.module:
        return script_steps("module", args.training_script, args.training_script_args, launched=True)
    if Path(args.training_script).name in FAIRSEQ_TOOLS:
        return [("fairseq", Path(args.training_script).name, args.training_script_args)]
    return script_steps(*python_target([args.training_script, *args.training_script_args]), launched=True)


def parse_quietly(parser, argv, name):
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return parser.parse_args(argv)
    except SystemExit as stop:
        raise AssertionError(f"{name} rejects {argv}: {last_lines(stderr.getvalue())}") from stop


def last_lines(text: str, count: int = 2) -> str:
    """argparse's error without its long usage."""
    return "\n".join(text.strip().splitlines()[-count:])


def plan(command: Command) -> list[tuple]:
    steps = []
    for _env, argv in split_commands(command.text):
        assert argv, f"an empty command: {command.text}"
        program, words = argv[0], argv[1:]
        if program in SHELL_BUILTINS:
            steps.append(("noop",))
        elif program in {"pip", "pip3"} or (program.startswith("python") and words[:2] == ["-m", "pip"]):
            steps.append(("pip", ["pip", *(words[2:] if program.startswith("python") else words)]))
        elif program == "make":
            steps.append(("make", words))
        elif program == "knee-plan":
            steps.append(("knee-plan", words, command.output))
        elif program in FAIRSEQ_TOOLS:
            steps.append(("fairseq", program, words))
        elif program == "torchrun":
            steps += torchrun_steps(words)
        elif program == "accelerate" and words[:1] == ["launch"]:
            steps += accelerate_steps(words[1:])
        elif re.fullmatch(r"python(3(\.\d+)?)?", program) and words:
            steps += script_steps(*python_target(words))
        else:
            raise AssertionError(
                f"{command.where}: no check knows `{program}`; teach tests/test_docs_commands.py how to run or "
                "parse it (or add it to SHELL_BUILTINS if it only changes the shell's state)"
            )
    return steps


# ---------------------------------------------------------------------------------------------
# Dry-runs: all commands of one script share one interpreter


def planned_dry_runs() -> list[tuple]:
    jobs = set()
    for command in COMMANDS:
        with contextlib.suppress(Exception):  # a command that cannot be planned fails in its own test
            jobs.update(
                (step[1], step[2], tuple(step[3]))
                for step in plan(command)
                if step[0] == "dry-run" and not command.skip
            )
    return sorted(jobs)


@pytest.fixture(scope="module", autouse=True)
def dry_runs(tmp_path_factory):
    """``run(kind, target, args) -> {"code", "output"}``. Every documented dry-run starts at once, in the
    background, in one interpreter (the recipes share their imports) while the in-process checks run."""
    jobs = [{"kind": kind, "target": target, "args": list(args)} for kind, target, args in planned_dry_runs()]
    workdir = tmp_path_factory.mktemp("dry-runs")
    (workdir / "jobs.json").write_text(json.dumps(jobs))
    with open(workdir / "jobs.json") as stdin:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("docs_helpers.py"))],
            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=workdir,
            env={**os.environ, **DRY_RUN_ENV},
        )  # fmt: skip
    results: dict[tuple, dict] = {}

    def run(kind: str, target: str, args: list[str]) -> dict:
        if not results:
            stdout, stderr = proc.communicate(timeout=600)
            assert proc.returncode == 0, f"the dry-run runner crashed:\n{stderr[-4000:]}"
            for job, result in zip(jobs, json.loads(stdout.strip().splitlines()[-1]), strict=True):
                results[(job["kind"], job["target"], tuple(job["args"]))] = result
        return results[(kind, target, tuple(args))]

    yield run
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


# ---------------------------------------------------------------------------------------------
# fairseq, in-process


def fill_elided(argv: list[str]) -> list[str]:
    if "..." not in argv:
        return argv
    filled = (["DATA"] if argv[0] == "..." else []) + [word for word in argv if word != "..."]
    for option, value in FAIRSEQ_ELIDED_DEFAULTS.items():
        if option not in filled:
            filled += [option, value]
    return filled


def check_fairseq(tool: str, argv: list[str]) -> None:
    from fairseq import options

    assert (BIN / tool).is_file(), f"{tool} is not installed with fairseq here"
    argv = fill_elided(argv)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            if tool == "fairseq-preprocess":
                options.get_preprocessing_parser().parse_args(argv)
                return
            parser = options.get_training_parser() if tool == "fairseq-train" else options.get_generation_parser()
            args = options.parse_args_and_arch(parser, input_args=argv)
    except SystemExit as stop:
        raise AssertionError(f"{tool} rejects the documented options: {last_lines(stderr.getvalue())}") from stop
    if tool == "fairseq-train" and any(option in argv for option in FAIRSEQ_BUDGET_OPTIONS):
        import torch
        from fairseq import optim
        from fairseq.dataclass.utils import convert_namespace_to_omegaconf
        from fairseq.optim.lr_scheduler import build_lr_scheduler

        cfg = convert_namespace_to_omegaconf(args)
        optimizer = optim.build_optimizer(cfg.optimizer, [torch.nn.Parameter(torch.zeros(2))])
        scheduler = build_lr_scheduler(cfg.lr_scheduler, optimizer)
        if callable(getattr(scheduler, "set_epoch_length", None)):
            scheduler.set_epoch_length(1, EPOCH_BATCHES)  # what fairseq-train reports before the first update
        first, final = expected_lr_ends(args)
        assert scheduler.step_update(0) == pytest.approx(first), f"the first update's LR should be {first:g}"
        assert scheduler.step_update(10**9) == pytest.approx(final), f"the LR after the budget should be {final:g}"


# Batches per epoch the fairseq check reports to a scheduler whose budget or durations are in epochs.
EPOCH_BATCHES = 100


def expected_lr_ends(args: argparse.Namespace) -> tuple[float, float]:
    """The LR of the first update and the LR after the budget, as the documented options define them."""
    peak = args.lr[0]
    if args.lr_scheduler == "knee":
        first = args.warmup_init_lr if args.warmup_updates > 0 else peak
        if args.end_lr_ratio is not None:
            return first, args.end_lr_ratio * peak
        return first, args.end_learning_rate or 0.0
    if args.lr_scheduler == "one_cycle":
        return peak / args.div_factor, peak / args.div_factor / args.final_div_factor
    raise AssertionError(
        f"--lr-scheduler {args.lr_scheduler}: teach expected_lr_ends in tests/test_docs_commands.py its first "
        "and final LR"
    )


# ---------------------------------------------------------------------------------------------
# The tests


def test_the_docs_are_found_and_hold_commands():
    names = {path.relative_to(ROOT).as_posix() for path in doc_files()}
    assert {"README.md", "docs/fairseq.md", "scripts/iwslt14/README.md", "scripts/wmt14/README.md"} <= names
    assert len(COMMANDS) >= 30 and len(SNIPPETS) >= 5
    assert any("fairseq-train" in command.text for command in COMMANDS)


@pytest.mark.parametrize("block", BLOCKS, ids=[block.where for block in BLOCKS])
def test_every_code_block_has_a_known_language(block):
    assert block.language in SHELL_LANGUAGES | PYTHON_LANGUAGES | TEXT_LANGUAGES, (
        f"```{block.language}: not a language this test knows (shell: {sorted(SHELL_LANGUAGES)}, "
        f"python: {sorted(PYTHON_LANGUAGES)}, not run: {sorted(TEXT_LANGUAGES)})"
    )


def check(command: Command, dry_runs, tmp_path: Path) -> None:
    """Run, dry-run or parse one documented command; AssertionError (or the host's error) when it is broken."""
    for step in plan(command):
        kind = step[0]
        if kind == "pip":
            check_pip(step[1])
        elif kind == "make":
            missing = set(step[1]) - make_targets()
            assert not missing and step[1], f"make {' '.join(step[1])}: no such Makefile target {sorted(missing)}"
        elif kind == "knee-plan":
            proc = subprocess.run(
                [str(BIN / "knee-plan"), *step[1]],
                check=False,
                capture_output=True,
                text=True,
                cwd=tmp_path,
                timeout=300,
            )
            assert proc.returncode == 0, proc.stderr[-3000:]
            if step[2]:
                shown = [" ".join(line.split()) for line in step[2]]
                assert [" ".join(line.split()) for line in proc.stdout.splitlines() if line.strip()] == shown
        elif kind == "fairseq":
            check_fairseq(step[1], step[2])
        elif kind == "dry-run":
            result = dry_runs(*step[1:])
            assert result["code"] == 0, f"--dry-run exited {result['code']}:\n{result['output'][-4000:]}"
            assert result["output"].strip(), "--dry-run printed no plan"
        elif kind == "parse-args":
            stderr = io.StringIO()
            try:
                with contextlib.redirect_stderr(stderr):
                    load_script(step[1], step[2]).parse_args(step[3])
            except SystemExit as stop:
                raise AssertionError(f"{step[2]} rejects {step[3]}: {last_lines(stderr.getvalue())}") from stop


@pytest.mark.parametrize("command", COMMANDS, ids=[command.where for command in COMMANDS])
def test_documented_command(command, dry_runs, tmp_path, monkeypatch):
    if command.skip:
        pytest.skip(command.skip)
    monkeypatch.chdir(ROOT)
    check(command, dry_runs, tmp_path)


BROKEN_COMMANDS = [
    ("fairseq-train DATA --arch transformer --optimizer radam --adam-betas '(0.9, 0.999)' --lr 3e-4 --lr-scheduler knee",
     "unrecognized arguments: --adam-betas"),
    ("fairseq-train DATA --arch transformer --optimizer radam --lr 3e-4 --lr-scheduler knee --max-update 100 "
     "--explore-updates 200", "explore"),
    ("torchrun --nproc_per_node 2 $(which fairseq-train) DATA ... --lr-scheduler kneee", "invalid choice: 'kneee'"),
    ("fairseq-train DATA ... --distributed-rank $NO_SUCH_VARIABLE", "no placeholder value"),
    ("fairseq-train DATA --arch transformer --optimizer adam --lr 1e-3 --lr-scheduler cosine --max-update 100",
     "teach expected_lr_ends"),
    ("accelerate launch --no_such_flag 1 -m scripts.accelerate.train_classifier_knee", "unrecognized arguments"),
    ("accelerate launch -m scripts.accelerate.train_classifier_knee --checkpointing_steps sometimes", "checkpointing_steps"),
    ("python -m scripts.no_such_task.run", "no such module"),
    ("python scripts/translation/run.py --task demo", "python -m scripts.translation.run"),
    ("pip install torch numpy", "torch must be pinned"),
    ("pip install sacrebleu", "pin it"),
    ('pip install -c requirements/constraints.txt ".[no-such-extra]"', "no extra"),
    ("make no-such-target", "no such Makefile target"),
    ("frobnicate --all", "no check knows"),
]  # fmt: skip


@pytest.mark.parametrize(
    "text,message", BROKEN_COMMANDS, ids=[text.split()[0] + str(i) for i, (text, _) in enumerate(BROKEN_COMMANDS)]
)
def test_a_broken_command_fails_its_check(text, message, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises((AssertionError, ValueError), match=message):
        check(Command(ROOT / "README.md", 0, text), None, tmp_path)


def load_script(kind: str, target: str):
    """The module of a launched program, imported by name (a self-contained script outside the
    packages is run from its file, as its launcher would)."""
    if kind == "module":
        return importlib.import_module(target)
    return runpy_module(target)


def runpy_module(path: str):
    import types

    module = types.ModuleType(f"doc_script_{Path(path).stem}")
    module.__dict__.update(runpy.run_path(path, run_name=module.__name__))
    return module


# ---------------------------------------------------------------------------------------------
# Python snippets


class TokenDataset:
    """16 masked-LM examples of 8 random token ids: what a ``train`` dataset is in the prose."""

    def __init__(self, size: int = 16, length: int = 8, vocab: int = 50):
        import torch

        self.ids = torch.randint(5, vocab, (size, length), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        import torch

        ids = self.ids[index]
        labels = torch.full_like(ids, -100)
        labels[::2] = ids[::2]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


class SnippetWorld:
    """The names the prose assumes, built on first use, tiny and real, sharing one model."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.values: dict[str, object] = {}

    def __getitem__(self, name: str):
        if name not in self.values:
            self.values[name] = SNIPPET_NAMES[name](self)
        return self.values[name]

    def training_arguments(self, *positional, **overrides):
        from transformers import TrainingArguments

        assert positional in {(), (Ellipsis,)}, "TrainingArguments(...) takes keywords besides the `...` placeholder"
        settings = dict(
            output_dir=str(self.tmp_path / "trainer"), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3,
            save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, logging_steps=1,
        )  # fmt: skip
        return TrainingArguments(**{**settings, **overrides})


def _tiny_model(world):
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    return BertForMaskedLM(config)


def _loader(world):
    import torch

    return torch.utils.data.DataLoader(world["train"], batch_size=4)


def _optimizer(world):
    import torch

    return torch.optim.AdamW(world["model"].parameters(), lr=1e-3)


def _trainer_class(world):
    from transformers import Trainer

    return Trainer


SNIPPET_NAMES = {
    "torch": lambda world: importlib.import_module("torch"),
    "math": lambda world: importlib.import_module("math"),
    "model": _tiny_model,
    "train": lambda world: TokenDataset(),
    "loader": _loader,
    "optimizer": _optimizer,
    "loss": lambda world: lambda batch: world["model"](**batch).loss,
    "num_epochs": lambda world: 2,
    "args": lambda world: world.training_arguments(),
    "TrainingArguments": lambda world: world.training_arguments,
    "Trainer": _trainer_class,
}


def _fairseq_like_checkpoint(path: Path) -> None:
    """What a fairseq-train checkpoint holds beyond tensors and containers: an argparse.Namespace."""
    import torch

    torch.save({"args": argparse.Namespace(arch="transformer", lr=[3e-4]), "model": {"w": torch.zeros(2)}}, path)


# Files a snippet opens by name, created in its working directory before it runs.
SNIPPET_FILES = {"checkpoint_best.pt": _fairseq_like_checkpoint}


def reset_accelerate_state():
    if "accelerate" in sys.modules:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def run_snippet(code: str, where: str, tmp_path: Path) -> dict:
    """Execute a snippet in ``tmp_path`` with the prose's names supplied; returns its namespace."""
    unknown = free_names(code) - set(SNIPPET_NAMES)
    assert not unknown, (
        f"the snippet uses {sorted(unknown)}, which it neither defines nor imports; import it in the snippet, "
        "or add a tiny real value to SNIPPET_NAMES in tests/test_docs_commands.py"
    )
    for name, make in SNIPPET_FILES.items():
        if name in code:
            make(tmp_path / name)
    world = SnippetWorld(tmp_path)
    namespace = {"__name__": "__doc_snippet__", **{name: world[name] for name in sorted(free_names(code))}}
    reset_accelerate_state()
    try:
        exec(compile(code, where, "exec"), namespace)
    finally:
        reset_accelerate_state()
    return namespace


@pytest.mark.parametrize("block", SNIPPETS, ids=[block.where for block in SNIPPETS])
def test_documented_python_snippet(block, tmp_path, monkeypatch):
    if block.directive:
        pytest.skip(skip_reason(block))
    monkeypatch.chdir(tmp_path)
    run_snippet("\n".join(block.lines), block.where, tmp_path)


@pytest.mark.parametrize(
    "code,error",
    [
        ("scheduler = KneeLR(optimizer, total_steps=10)", "uses \\['KneeLR'\\]"),
        ("optimizer.step()\n    scheduler.step()", "unexpected indent"),
        ("from knee_plugins import KneeLR\nKneeLR(optimizer, total_steps=10, warmup_steps=20)", "warmup"),
    ],
)
def test_a_broken_snippet_fails(code, error, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises((AssertionError, SyntaxError, ValueError), match=error):
        run_snippet(code, "snippet", tmp_path)
