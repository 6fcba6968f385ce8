"""Helpers of the fairseq plugin tests: running the CLIs, a tiny model, parsing the json log,
building the plugin's schedulers in-process."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import torch
from fairseq.optim import build_optimizer
from fairseq.optim.lr_scheduler import LR_SCHEDULER_DATACLASS_REGISTRY, build_lr_scheduler
from omegaconf import OmegaConf

BIN = Path(sys.executable).parent

TINY_MODEL = [
    "--task", "translation", "--arch", "transformer",
    "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
    "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
    "--share-all-embeddings", "--dropout", "0.1",
    "--optimizer", "adam", "--lr", "1e-3",
    "--max-tokens", "300", "--cpu", "--seed", "1", "--num-workers", "0",
    "--log-format", "json", "--log-interval", "1",
    "--no-epoch-checkpoints", "--disable-validation",
]  # fmt: skip

PEAK_LR = 1e-3


def clean_env(**extra: str) -> dict:
    """The environment of a CLI run: weights_only loading left at torch's default (on)."""
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    env.pop("KNEE_PLUGINS_NO_AUTOREGISTER", None)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.update(extra)
    return env


def run_cli(name: str, *args: str, env: dict | None = None, check: bool = True, timeout=300):
    """Run a console script of this environment (fairseq-train, ...) and return its result."""
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


def train_records(output: str) -> list[dict]:
    """The ``train_inner`` JSON records of a ``--log-format json --log-interval 1`` run."""
    records = []
    for line in output.splitlines():
        for marker in ("| train_inner | ", "[train_inner][INFO] - "):  # argparse / hydra logs
            if marker in line:
                records.append(json.loads(line.split(marker, 1)[1]))
    return records


def logged_lrs(output: str) -> dict[int, float]:
    """``{num_updates: lr}``: the LR fairseq logs after each update (the next update's LR)."""
    return {int(r["num_updates"]): float(r["lr"]) for r in train_records(output)}


def updates_in_epoch(output: str, epoch: int = 1) -> int:
    return sum(1 for r in train_records(output) if int(r["epoch"]) == epoch)


def as_logged(value: float) -> float:
    """fairseq's json log prints floats with ``{:g}`` (6 significant digits)."""
    return float(f"{value:g}")


def write_corpus(raw: Path) -> None:
    """400/40/20 short synthetic de-en pairs (the target is the reversed, renamed source)."""
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


LR = 10.0


def make(scheduler: str, optimizer: str = "radam", lr: float = LR, max_update: int = 0,
         max_epoch: int = 0, update_freq=(1,), **options):  # fmt: skip
    """Build ``scheduler`` as fairseq does, on an optimizer over one parameter."""
    lrs = lr if isinstance(lr, list) else [lr]
    globals_ = {"lr": lrs, "max_update": max_update, "max_epoch": max_epoch,
                "update_freq": list(update_freq), "skip_remainder_batch": False}  # fmt: skip
    fields = LR_SCHEDULER_DATACLASS_REGISTRY[scheduler].__dataclass_fields__
    opt = build_optimizer(OmegaConf.create({"_name": optimizer, "lr": lrs[:1]}), [torch.nn.Parameter(torch.zeros(2))])
    globals_ = {k: v for k, v in globals_.items() if k in fields}
    cfg = OmegaConf.create({"_name": scheduler, **globals_, **options})
    return build_lr_scheduler(cfg, opt), opt


def trace(scheduler, steps):
    return [scheduler.step_update(t) for t in steps]
