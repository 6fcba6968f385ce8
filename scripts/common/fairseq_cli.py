"""Running fairseq's command-line tools and reading their logs; imports no task, and neither torch
nor fairseq.

The recipes find each console script next to the interpreter
(:func:`knee_plugins.fairseq_command.console_script`), run it and
read fairseq's ``--log-format json`` records back (:func:`parse_log`); the benchmarks and the plugin
tests use the same helpers with a tiny synthetic corpus (:func:`write_tiny_corpus`, :data:`TINY_MODEL`).
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from knee_plugins.fairseq_command import console_script

BIN = Path(sys.executable).parent

# The dimensions of a 1-layer, 16-wide Transformer.
TINY_TRANSFORMER = [
    "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
    "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
]  # fmt: skip
# That Transformer trained on CPU with one json log record per update.
TINY_MODEL = [
    "--task", "translation", "--arch", "transformer", *TINY_TRANSFORMER,
    "--share-all-embeddings", "--dropout", "0.1",
    "--optimizer", "adam", "--lr", "1e-3",
    "--max-tokens", "300", "--cpu", "--seed", "1", "--num-workers", "0",
    "--log-format", "json", "--log-interval", "1",
    "--no-epoch-checkpoints", "--disable-validation",
]  # fmt: skip

LOG_KINDS = ("train_inner", "valid", "train")
# "| train_inner | {...}" (the argparse tools) or "[train_inner][INFO] - {...}" (fairseq-hydra-train)
_JSON_RECORD = re.compile(
    r"(?:\|\s*(train_inner|valid|train)\s*\||\[(train_inner|valid|train)\]\[INFO\] -)\s*(\{.*\})\s*$"
)


def fairseq_command(name: str) -> list[str]:
    """``fairseq-<name>`` (train, generate, preprocess) as :func:`console_script` finds it."""
    return console_script(f"fairseq-{name}", f"fairseq_cli.{name}")


def parse_log(lines: Iterable[str]) -> dict[str, list[dict]]:
    """The JSON records fairseq logs with ``--log-format json``, by kind (train_inner, valid, train)."""
    records: dict[str, list[dict]] = {kind: [] for kind in LOG_KINDS}
    for line in lines:
        match = _JSON_RECORD.search(line)
        if match:
            records[match.group(1) or match.group(2)].append(json.loads(match.group(3)))
    return records


def train_records(output: str) -> list[dict]:
    """The ``train_inner`` records of a fairseq-train output (one per ``--log-interval`` updates)."""
    return parse_log(output.splitlines())["train_inner"]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI run: weights_only loading left at torch's default (on), the plugin
    registered, one thread per process, warnings off, then ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    env.pop("KNEE_PLUGINS_NO_AUTOREGISTER", None)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.update(extra)
    return env


def run_cli(
    name: str, *args: object, env: dict[str, str] | None = None, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the console script ``name`` of this environment (fairseq-train, ...) with :func:`clean_env`
    and return its result (stdout and stderr together); ``check``: fail on a non-zero exit or a
    thread's traceback."""
    proc = subprocess.run(
        [str(BIN / name), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env or clean_env(),
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    if check and "Exception in thread" in proc.stdout:
        raise AssertionError(f"{name} printed a thread's traceback:\n{proc.stdout[-4000:]}")
    return proc


def write_tiny_corpus(raw: Path) -> None:
    """400/40/20 short synthetic de-en pairs in ``raw/{split}.{de,en}`` (the target is the reversed,
    renamed source)."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)]
    for split, size in (("train", 400), ("valid", 40), ("test", 20)):
        src, tgt = [], []
        for _ in range(size):
            sentence = [rng.choice(words) for _ in range(rng.randint(3, 8))]
            src.append(" ".join(sentence))
            tgt.append(" ".join("v" + w[1:] for w in reversed(sentence)))
        (raw / f"{split}.de").write_text("\n".join(src) + "\n")
        (raw / f"{split}.en").write_text("\n".join(tgt) + "\n")
