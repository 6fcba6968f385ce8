"""Extract the commands and Python snippets the docs show, and the checks that run or parse them.

Used by tests/test_docs_commands.py (read its docstring for the conventions a doc must follow).
Run as a script, it is the dry-run runner: it reads a JSON list of jobs on stdin, runs each
``python <script>`` / ``python -m <module>`` in this one interpreter (so a group of commands shares
the imports) and prints a JSON list of ``{"code": exit status, "output": stdout + stderr}``.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import functools
import io
import json
import logging
import os
import re
import runpy
import shlex
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
DOC_GLOBS = ("README.md", "docs/*.md", "scripts/*/README.md")

SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
PYTHON_LANGUAGES = {"python", "py"}
# Blocks in these languages (or with none) show math, layouts or configs: they are not run.
TEXT_LANGUAGES = {"", "text", "yaml", "yml", "toml", "json", "ini"}

# `$VAR` in a command: the value the test substitutes. A command with any other variable fails.
VARIABLES = {
    "NODE_RANK": "1",
    "MACHINE_RANK": "1",
    "MASTER_HOST": "127.0.0.1",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
}
# Commands that change only the shell's state; they are accepted without a check.
SHELL_BUILTINS = {"cd", "export"}
# `...` in a fairseq command stands for the user's other options; when it hides these, the test
# fills them so that the rest of the command can be parsed.
FAIRSEQ_ELIDED_DEFAULTS = {"--arch": "transformer", "--optimizer": "adam"}
FAIRSEQ_BUDGET_OPTIONS = ("--max-update", "--max-epoch", "--total-num-update")
TORCH_FAMILY = {"torch", "torchvision", "torchaudio"}
# fairseq's build prerequisites under --no-build-isolation: any version works against the pinned
# torch, so install lines may leave them to the user's environment.
BUILD_PREREQUISITES = {"numpy", "cython"}
PROJECT_NAMES = {"knee-plugins", "knee_plugins"}

DIRECTIVE = re.compile(r"<!--\s*doc-test:\s*(.*?)\s*-->")
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    lines: list[str]
    directive: str | None = None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


@dataclass
class Command:
    """One logical shell line of a doc: continuations joined, comments gone."""

    path: Path
    line: int
    text: str
    output: list[str] = field(default_factory=list)  # the `# ...` lines right after it
    skip: str | None = None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def doc_files() -> list[Path]:
    return sorted({path for pattern in DOC_GLOBS for path in ROOT.glob(pattern)})


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a markdown file, with the ``<!-- doc-test: ... -->`` just above each."""
    found: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    index, directive = 0, None
    while index < len(lines):
        line = lines[index]
        match = FENCE.match(line)
        if match is None:
            if DIRECTIVE.search(line):
                directive = DIRECTIVE.search(line).group(1)
            elif line.strip():
                directive = None
            index += 1
            continue
        fence, language = match.group(2), match.group(3).lower()
        body, end = [], index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            body.append(lines[end])
            end += 1
        found.append(Block(path, index + 1, language, body, directive))
        directive = None
        index = end + 1
    return found


def commands(block: Block) -> list[Command]:
    """The shell commands of a block; ``# ...`` lines right after a command are kept as its shown output."""
    result: list[Command] = []
    console = block.language == "console"
    index, attached = 0, False
    while index < len(block.lines):
        start, stripped = index, block.lines[index].strip()
        index += 1
        if not stripped:
            attached = False
            continue
        if console and not stripped.startswith("$ "):
            if result and attached:
                result[-1].output.append(stripped)
            continue
        if stripped.startswith("#"):
            if result and attached:
                result[-1].output.append(stripped[2:] if stripped.startswith("# ") else stripped[1:])
            continue
        text = stripped[2:] if console else stripped
        while text.endswith("\\") and index < len(block.lines):
            text = text[:-1] + " " + block.lines[index].strip()
            index += 1
        result.append(Command(block.path, block.line + 1 + start, text, skip=skip_reason(block)))
        attached = True
    return result


def skip_reason(block: Block) -> str | None:
    if block.directive and block.directive.startswith("skip"):
        reason = block.directive[len("skip") :].strip(" :")
        if not reason:
            raise ValueError(f"{block.where}: <!-- doc-test: skip --> needs a reason")
        return reason
    if block.directive:
        raise ValueError(f"{block.where}: unknown directive <!-- doc-test: {block.directive} -->")
    return None


def all_blocks() -> list[Block]:
    return [block for path in doc_files() for block in blocks(path)]


# ---------------------------------------------------------------------------------------------
# Shell words: substitution, splitting


def _python_c(match: re.Match) -> str:
    return shlex.quote(_run_python_c(match.group(1)))


@functools.cache
def _run_python_c(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"$(python -c {code!r}) failed:\n{proc.stderr[-2000:]}")
    return proc.stdout.strip()


def expand(text: str) -> str:
    """Shell expansions the docs use, done for real or with the test's placeholder values."""
    text = re.sub(r"\$\(which ([\w.-]+)\)", r"\1", text)
    text = re.sub(r"\"?\$\(python3? -c '([^']*)'\)\"?", _python_c, text)

    def value(name: str) -> str:
        if name not in VARIABLES:
            raise AssertionError(f"${name}: no placeholder value; add it to VARIABLES in tests/docs_helpers.py")
        return VARIABLES[name]

    def variable(match: re.Match) -> str:
        return value(match.group(1) or match.group(2))

    text = re.sub(r"\$\{(\w+)\}|\$([A-Za-z_]\w*)", variable, text)

    def arithmetic(match: re.Match) -> str:
        expression = re.sub(r"[A-Za-z_]\w*", lambda name: value(name.group(0)), match.group(1))
        if not re.fullmatch(r"[\d\s+*/()-]+", expression):
            raise AssertionError(f"$(({expression})): cannot evaluate")
        return str(int(eval(expression)))  # digits and operators only

    text = re.sub(r"\$\(\((.*?)\)\)", arithmetic, text)
    if "$(" in text or "`" in text:
        raise AssertionError(f"a command substitution the test cannot fill: {text}")
    return text


def split_commands(text: str) -> list[tuple[dict[str, str], list[str]]]:
    """``[(env, argv), ...]`` for ``A=1 cmd ... && cmd2 ...``; comments dropped."""
    lexer = shlex.shlex(expand(text), posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    words, pieces = list(lexer), [[]]
    for word in words:
        if word in {"&&", ";", "||"}:
            pieces.append([])
        elif word in {"|", "&", ">", ">>"}:
            raise AssertionError(f"pipes, redirections and background jobs are not checked: {text}")
        else:
            pieces[-1].append(word)
    result = []
    for argv in filter(None, pieces):
        env = {}
        while argv and re.fullmatch(r"[A-Za-z_]\w*=.*", argv[0]):
            name, value = argv.pop(0).split("=", 1)
            env[name] = value
        result.append((env, argv))
    return result


# ---------------------------------------------------------------------------------------------
# pip and make


def check_pip(argv: list[str]) -> None:
    """``pip install``: torch pinned exactly; everything else pinned, under ``-c``, or the project."""
    if argv[1:2] == ["uninstall"]:
        return
    if argv[1:2] != ["install"]:
        raise AssertionError(f"pip {' '.join(argv[1:2])}: only pip install/uninstall lines are checked")
    words, constrained, requirements = argv[2:], False, []
    options_with_value = {
        "-c",
        "--constraint",
        "-r",
        "--requirement",
        "-i",
        "--index-url",
        "--extra-index-url",
        "-f",
        "--find-links",
        "-t",
        "--target",
    }
    index = 0
    while index < len(words):
        word = words[index]
        if word in {"-c", "--constraint"}:
            constraint = words[index + 1]
            assert (ROOT / constraint).is_file() or Path(constraint).is_absolute(), f"no constraints file {constraint}"
            constrained = True
        if word in options_with_value:
            index += 2
            continue
        if word == "-e":
            index += 1
            continue
        if not word.startswith("-"):
            requirements.append(word)
        index += 1
    extras_declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[\w,-]+\])?\s*(.*)", requirement)
        assert match, f"cannot read the requirement {requirement!r}"
        name, extras, spec = match.group(1), match.group(2), match.group(3)
        if name in {".", "./"} or name.lower() in PROJECT_NAMES:
            unknown = set((extras or "[]")[1:-1].split(",")) - {""} - extras_declared
            assert not unknown, f"{requirement}: pyproject.toml declares no extra {sorted(unknown)}"
            continue
        if name.lower() in TORCH_FAMILY:
            assert spec.startswith("=="), (
                f"{requirement}: torch must be pinned exactly (an unpinned torch pulls a CUDA build)"
            )
            continue
        if name.lower() in BUILD_PREREQUISITES:
            continue
        assert constrained or spec.startswith("=="), (
            f"{requirement}: pin it (==) or install with -c requirements/constraints.txt"
        )


def make_targets() -> set[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+(?:\s+[A-Za-z0-9_.-]+)*)\s*:(?!=)", line)
        if match and not line.startswith("\t"):
            targets.update(match.group(1).split())
    return targets


# ---------------------------------------------------------------------------------------------
# Python snippets


def free_names(code: str) -> set[str]:
    """Names a snippet reads before (or without) binding them: the prose's ``model``, ``optimizer``, ..."""
    bound: set[str] = set(dir(builtins))
    free: set[str] = set()

    def names(node: ast.AST | None, context: type) -> set[str]:
        found = set()
        for child in ast.walk(node) if node is not None else ():
            if isinstance(child, ast.Name) and isinstance(child.ctx, context):
                found.add(child.id)
        return found

    def read(node: ast.AST | None) -> None:
        free.update(names(node, ast.Load) - names(node, ast.Store) - bound)

    def bind(node: ast.AST | None) -> None:
        bound.update(names(node, ast.Store))

    def scan(statements: list[ast.stmt]) -> None:
        for statement in statements:
            if isinstance(statement, (ast.Import, ast.ImportFrom)):
                bound.update((alias.asname or alias.name).split(".")[0] for alias in statement.names)
            elif isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bound.add(statement.name)
            elif isinstance(statement, ast.Assign):
                read(statement.value)
                for target in statement.targets:
                    bind(target)
            elif isinstance(statement, (ast.AugAssign, ast.AnnAssign)):
                read(statement.value)
                if isinstance(statement, ast.AugAssign):
                    free.update({statement.target.id} - bound if isinstance(statement.target, ast.Name) else set())
                bind(statement.target)
            elif isinstance(statement, (ast.For, ast.AsyncFor)):
                read(statement.iter)
                bind(statement.target)
                scan(statement.body + statement.orelse)
            elif isinstance(statement, (ast.With, ast.AsyncWith)):
                for item in statement.items:
                    read(item.context_expr)
                    bind(item.optional_vars)
                scan(statement.body)
            elif isinstance(statement, (ast.If, ast.While)):
                read(statement.test)
                scan(statement.body + statement.orelse)
            elif isinstance(statement, ast.Try):
                scan(statement.body)
                for handler in statement.handlers:
                    read(handler.type)
                    bound.update({handler.name} - {None})
                    scan(handler.body)
                scan(statement.orelse + statement.finalbody)
            else:
                read(statement)
                bind(statement)

    scan(ast.parse(code).body)
    return free


# ---------------------------------------------------------------------------------------------
# The dry-run runner (this file run as a script)


def _run_job(job: dict) -> dict:
    buffer = io.StringIO()
    code = 0
    saved_argv, saved_path, saved_cwd = sys.argv[:], sys.path[:], os.getcwd()
    saved_handlers = logging.root.handlers[:]  # a basicConfig of one job must not log into its buffer later
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        try:
            if job["kind"] == "module":
                sys.argv = [job["target"], *job["args"]]
                runpy.run_module(job["target"], run_name="__main__", alter_sys=True)
            else:
                sys.argv = [job["target"], *job["args"]]
                sys.path.insert(0, str(Path(job["target"]).parent))
                runpy.run_path(job["target"], run_name="__main__")
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            if not isinstance(stop.code, (int, type(None))):
                print(stop.code, file=buffer)
        except Exception:  # a crash of one command must not hide the others' results
            traceback.print_exc(file=buffer)
            code = 1
        finally:
            sys.argv, sys.path[:] = saved_argv, saved_path
            os.chdir(saved_cwd)
            logging.root.handlers[:] = saved_handlers
    return {"code": code, "output": buffer.getvalue()}


if __name__ == "__main__":
    print(json.dumps([_run_job(job) for job in json.loads(sys.stdin.read())]))
