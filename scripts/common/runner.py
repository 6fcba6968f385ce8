"""The runner the fairseq translation recipes share (translation, MAT, the budget benchmark); imports
no task.

- :class:`RunnerOptions` and :func:`add_arguments`: the command-line options every translation recipe
  has (task, seeds, work dir, GPUs, the demo's corpus and budget, CPU, dry run, scoring, extra fairseq
  arguments), as a dataclass a program can also fill in itself;
- :meth:`RunnerOptions.prepare`: the task's data, prepared once (:func:`scripts.common.prepare.prepare_task`);
- :func:`run_all`: a list of :class:`Job` s, each ``fairseq-train`` with a progress bar and its log kept
  beside the checkpoints, then ``fairseq-generate`` on the best-valid checkpoint and BLEU, every result
  written as it comes (``results.json``, and ``result.json`` beside each run's checkpoints).

Rerunning the same command after a kill (SIGKILL, a scheduler's SIGTERM, a crash) continues where it
stopped: a run with ``result.json`` is not trained again, and an unfinished run whose save directory
holds ``checkpoint_last.pt`` continues from it (fairseq restores the model, optimizer, LR scheduler and
data position; the log is appended to, and the curves keep the latest record of each update). Each
save directory records the ``fairseq-train`` command that trains it (``command.json``); a rerun with
other settings over it stops before training instead of mixing two runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from knee_plugins.fairseq_command import training_identity
from scripts.common import prepare
from scripts.common.fairseq_cli import parse_log
from scripts.common.fairseq_recipe import BatchPlan, TaskRecipe, plan_batches, with_budget
from scripts.common.results import RunResult, read_results_json, write_results_json

logger = logging.getLogger(__name__)

COMMAND_RECORD = "command.json"
LAST_CHECKPOINT = "checkpoint_last.pt"
DEMO_ONLY = ("max_updates", "train_pairs", "heldout_pairs", "bpe_symbols")


@dataclass(frozen=True)
class RunnerOptions:
    """What every translation recipe's command line sets (see :func:`add_arguments` for each option)."""

    task: str
    seeds: int = 1
    work_dir: Path | None = None
    orig_dir: Path | None = None
    world_size: int | None = None
    max_updates: int | None = None
    train_pairs: int | None = None
    heldout_pairs: int | None = None
    bpe_symbols: int | None = None
    cpu: bool = False
    dry_run: bool = False
    skip_generate: bool = False
    fairseq_args: str = ""

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides: Any) -> RunnerOptions:
        """The options ``args`` holds (a namespace from a parser :func:`add_arguments` filled, or any with
        some of the options), then ``overrides``; the others keep their defaults."""
        given = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        return cls(**{**given, **overrides})

    def check(self) -> None:
        """ValueError naming the option when a value is out of range or does not apply to the task."""
        for name, value in (("--seeds", self.seeds), ("--world-size", self.world_size)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.task != "demo" and any(getattr(self, name) is not None for name in DEMO_ONLY):
            raise ValueError(
                "--max-updates, --train-pairs, --heldout-pairs and --bpe-symbols apply to --task demo only"
            )
        if self.max_updates is not None and self.max_updates < 2:
            raise ValueError(f"--max-updates must be >= 2, got {self.max_updates}")
        for name in DEMO_ONLY[1:]:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")

    def recipe(self, recipe: TaskRecipe) -> TaskRecipe:
        """``recipe`` with this run's ``--bpe-symbols`` and ``--max-updates``."""
        if self.bpe_symbols is not None:
            spec = replace(recipe.spec, bpe_symbols=self.bpe_symbols)
            recipe = replace(recipe, spec=spec)
        return recipe if self.max_updates is None else with_budget(recipe, self.max_updates)

    def resolve_work_dir(self, default: str) -> Path:
        """``--work-dir``, else ``runs/<default>``, absolute."""
        return (self.work_dir or Path("runs") / default).resolve()

    @property
    def use_cpu(self) -> bool:
        """``--cpu``, or no GPU to train on."""
        return self.cpu or not has_cuda()

    def batches(self, recipe: TaskRecipe) -> BatchPlan:
        """The recipe's tokens per update on ``--world-size`` GPUs (default: every local one)."""
        world_size = self.world_size or (1 if self.use_cpu else local_gpu_count())
        return plan_batches(recipe.tokens_per_update, recipe.max_tokens_per_gpu, world_size)

    @property
    def fairseq_extra(self) -> list[str]:
        return shlex.split(self.fairseq_args)

    def prepare(self, recipe: TaskRecipe, work_dir: Path) -> tuple[Path, list[str]]:
        """Prepare (once) the task's data in ``work_dir/prepared`` and return the data-bin directory and
        the raw test references."""
        return prepare.prepare_task(
            self.task,
            recipe.spec,
            work_dir / "prepared",
            orig_dir=self.orig_dir or work_dir / "orig",
            train_pairs=self.train_pairs,
            heldout_pairs=self.heldout_pairs,
        )


def add_arguments(
    parser: argparse.ArgumentParser,
    *,
    tasks: Iterable[str],
    task_help: str,
    work_dir_help: str = "./runs/<task>",
) -> None:
    """Add the options of :class:`RunnerOptions` to ``parser``; ``--task`` chooses among ``tasks``."""
    parser.add_argument("--task", choices=sorted(tasks), default="demo", help=task_help)
    parser.add_argument("--seeds", type=int, default=1, help="repeat every run with seeds 1..N (mean ± std)")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help=f"where data, checkpoints, logs and results go (default: {work_dir_help})",
    )
    parser.add_argument(
        "--orig-dir",
        type=Path,
        default=None,
        help="downloaded raw corpora for iwslt14/wmt14 (default: <work-dir>/orig)",
    )
    parser.add_argument(
        "--world-size",
        type=int,
        default=None,
        help="GPUs the run uses in all (default: every local GPU; 1 on CPU); sets "
        "--max-tokens and --update-freq so the tokens per update stay the paper's",
    )
    parser.add_argument(
        "--max-updates",
        type=int,
        default=None,
        help="demo only: the full budget of a run in updates (a short budget is 65%% of it)",
    )
    parser.add_argument(
        "--train-pairs", type=int, default=None, help="demo only: use the first N training pairs of the corpus"
    )
    parser.add_argument(
        "--heldout-pairs", type=int, default=None, help="demo only: use the first N pairs of valid and of test"
    )
    parser.add_argument("--bpe-symbols", type=int, default=None, help="demo only: joint BPE merges (default: 2000)")
    parser.add_argument("--cpu", action="store_true", help="train on CPU (default when there is no GPU)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    parser.add_argument("--skip-generate", action="store_true", help="do not score the checkpoints on test")
    parser.add_argument(
        "--fairseq-args",
        default="",
        help="extra fairseq-train arguments for every training run, appended last (quoted as one string)",
    )


def options_from(parser: argparse.ArgumentParser, args: argparse.Namespace) -> RunnerOptions:
    """The checked :class:`RunnerOptions` of ``args``; a bad value exits through ``parser.error``."""
    options = RunnerOptions.from_args(args)
    try:
        options.check()
    except ValueError as error:
        parser.error(str(error))
    return options


def has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def local_gpu_count() -> int:
    try:
        import torch
    except ImportError:
        return 1
    return max(1, torch.cuda.device_count())


# --- running -----------------------------------------------------------------------------------


@dataclass
class Job:
    """One ``fairseq-train`` run for :func:`run_all`: its commands, where it saves, how it is labelled.

    ``reuse`` may return the result of an earlier identical run instead of training (and then
    ``init_command``, run right before ``fairseq-train``, is skipped too)."""

    label: str
    seed: int
    save_dir: Path
    train_command: list[str]
    generate_command: list[str]
    total_updates: int | None = None
    peak_lr: float | None = None
    init_command: list[str] | None = None
    reuse: Callable[[], RunResult | None] | None = field(default=None, repr=False)

    @property
    def result_path(self) -> Path:
        return self.save_dir / "result.json"


def check_same_run(command: Sequence[str], save_dir: Path) -> None:
    """SystemExit unless ``save_dir`` is new or holds a run of ``command`` (the same
    :func:`~knee_plugins.fairseq_command.training_identity`): a result or checkpoint of other settings
    must not be reused, continued or overwritten by accident."""
    record = save_dir / COMMAND_RECORD
    if record.exists():
        recorded = json.loads(record.read_text(encoding="utf-8"))["train_command"]
        if training_identity(recorded) == training_identity(command):
            return
        raise SystemExit(
            f"{save_dir} holds a run of other settings:\n  recorded: {shlex.join(recorded)}\n"
            f"  planned:  {shlex.join(command)}\nUse another --work-dir, or delete {save_dir} to train it again."
        )
    leftovers = [name for name in ("result.json", LAST_CHECKPOINT) if (save_dir / name).exists()]
    if leftovers:
        raise SystemExit(
            f"{save_dir} holds {' and '.join(leftovers)} but no {COMMAND_RECORD} saying which command made "
            f"them (an older version of the recipes): delete {save_dir} to train it again, or use another --work-dir."
        )


def record_command(command: Sequence[str], save_dir: Path) -> None:
    """Write ``save_dir/command.json``: the ``fairseq-train`` command the run in ``save_dir`` is."""
    save_dir.mkdir(parents=True, exist_ok=True)
    (save_dir / COMMAND_RECORD).write_text(json.dumps({"train_command": list(command)}, indent=1) + "\n", "utf-8")


def finished_result(job: Job) -> RunResult | None:
    """The result a finished run of ``job`` left beside its checkpoints, if any (after
    :func:`check_same_run`)."""
    if not job.result_path.exists():
        return None
    logger.info("%s seed %d: already trained, reusing %s", job.label, job.seed, job.result_path)
    return read_results_json(job.result_path)[0]


def run_all(
    jobs: Sequence[Job],
    references: Sequence[str],
    spec: prepare.PreparationSpec,
    results_path: Path,
    *,
    skip_generate: bool = False,
    example_ids: Sequence[int] = (),
) -> list[RunResult]:
    """Train every job in turn (or reuse it), score its best-valid checkpoint on test against the raw
    ``references`` (unless ``skip_generate``; ``example_ids``: test sentences kept as examples) and
    write the results so far to ``results_path`` after each job."""
    results: list[RunResult] = []
    for index, job in enumerate(jobs, 1):
        logger.info("run %d/%d: %s, seed %d", index, len(jobs), job.label, job.seed)
        check_same_run(job.train_command, job.save_dir)
        result = finished_result(job)
        if result is None and job.reuse is not None:
            result = job.reuse()
            if result is not None:
                record_command(job.train_command, job.save_dir)
                write_results_json([result], job.result_path)
        if result is None:
            if job.init_command is not None and not (job.save_dir / LAST_CHECKPOINT).exists():
                logger.info("%s", shlex.join(job.init_command))
                subprocess.run(job.init_command, check=True)
            result = run_fairseq_train(job.train_command, job.save_dir, job.label, job.seed, job.total_updates)
            write_results_json([result], job.result_path)
        if not skip_generate and result.bleu_tokenized is None:
            start = time.monotonic()
            result.bleu_tokenized, result.bleu_detokenized = score_test(
                job.generate_command, job.save_dir, references, spec
            )
            logger.info("generated %d test translations in %.0f s", len(references), time.monotonic() - start)
            if example_ids:
                result.examples = read_examples(job.save_dir / "generate-test.txt", example_ids, spec)
            write_results_json([result], job.result_path)
        if job.peak_lr is not None:
            result.peak_lr = job.peak_lr
        results.append(result)
        write_results_json(results, results_path)
        logger.info(
            "%s seed %d: valid loss %.3f, BLEU %s, %.0f s training",
            result.label,
            result.seed,
            result.best_valid_loss,
            "skipped" if result.bleu_tokenized is None else f"{result.bleu_tokenized:.2f}",
            result.wall_seconds,
        )
    return results


def run_fairseq_train(
    command: Sequence[str], save_dir: Path, label: str, seed: int, total_updates: int | None, progress_position: int = 0
) -> RunResult:
    """Run one ``fairseq-train`` command with a progress bar, keep its log as ``save_dir/train.log`` and
    read the LR curve, the valid curve and the best valid loss from it. When ``save_dir`` holds
    ``checkpoint_last.pt`` of the same command, fairseq continues from it and the log is appended to."""
    check_same_run(command, save_dir)
    record_command(command, save_dir)
    log_path = save_dir / "train.log"
    resuming = (save_dir / LAST_CHECKPOINT).exists()
    if resuming:
        logger.info("%s seed %d: continuing from %s", label, seed, save_dir / LAST_CHECKPOINT)
    logger.info("%s", shlex.join(command))
    start = time.monotonic()
    with (
        open(log_path, "a" if resuming else "w", encoding="utf-8") as log,
        subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process,
        tqdm(
            total=total_updates,
            desc=f"{label} seed {seed}",
            unit="upd",
            position=progress_position,
            leave=True,
            mininterval=1.0,
        ) as bar,
    ):
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            log.flush()
            record = parse_log([line])
            if record["train_inner"]:
                bar.n = int(record["train_inner"][0]["num_updates"])
                bar.set_postfix(loss=record["train_inner"][0]["loss"], lr=record["train_inner"][0]["lr"])
            elif record["valid"]:
                bar.set_postfix(valid_loss=record["valid"][0]["valid_loss"])
    wall = time.monotonic() - start
    lines = log_path.read_text(encoding="utf-8").splitlines(keepends=True)
    if process.returncode:
        raise RuntimeError(
            f"fairseq-train failed for {label} (exit {process.returncode}); see {log_path}:\n" + "".join(lines[-20:])
        )
    return result_from_log(lines, label, seed, wall, log_path)


def result_from_log(lines: Sequence[str], label: str, seed: int, wall_seconds: float, log_path: Path) -> RunResult:
    """The LR curve, the valid curve and the best valid loss of one run, from fairseq's log. A log that a
    resumed run appended to holds some updates twice (those after the last save before the kill): the
    later record of each update is the one the run kept."""
    records = parse_log(lines)
    if not records["valid"]:
        raise RuntimeError(f"fairseq-train logged no validation for {label}; see {log_path}")
    valid_records = sorted({int(r["valid_num_updates"]): r for r in records["valid"]}.items())
    valid = [(update, float(r["valid_loss"])) for update, r in valid_records]
    best = min((r for _, r in valid_records), key=lambda r: float(r["valid_loss"]))
    lr_curve = sorted({int(r["num_updates"]): float(r["lr"]) for r in records["train_inner"]}.items())
    updates = max([u for u, _ in valid] + [u for u, _ in lr_curve])
    return RunResult(
        label, seed, wall_seconds, updates, float(best["valid_loss"]), float(best["valid_ppl"]), lr_curve, valid
    )


# --- scoring -----------------------------------------------------------------------------------


def score_translations(
    hypotheses: Sequence[str],
    references: Sequence[str],
    raw_references: Sequence[str],
    target_lang: str,
    lowercase: bool,
) -> tuple[float, float]:
    """(tokenised BLEU, detokenised BLEU). Tokenised: sacrebleu on the Moses-tokenised, BPE-removed
    text with no further tokenisation (what ``fairseq-generate`` prints and the paper reports).
    Detokenised: Moses-detokenised hypotheses against the raw references with sacrebleu's 13a."""
    import sacrebleu
    from sacremoses import MosesDetokenizer

    tokenized = sacrebleu.corpus_bleu(list(hypotheses), [list(references)], tokenize="none").score
    detokenizer = MosesDetokenizer(lang=target_lang)
    detok = [detokenizer.detokenize(h.split()) for h in hypotheses]
    detokenized = sacrebleu.corpus_bleu(detok, [list(raw_references)], lowercase=lowercase).score
    return tokenized, detokenized


def score_test(
    command: Sequence[str], save_dir: Path, raw_references: Sequence[str], spec: prepare.PreparationSpec
) -> tuple[float, float]:
    """Run ``command`` (``fairseq-generate`` on test), keep its output as ``save_dir/generate-test.txt``
    and return the (tokenised, detokenised) BLEU of its translations."""
    logger.info("%s", shlex.join(command))
    output = subprocess.run(list(command), check=True, capture_output=True, text=True).stdout
    (save_dir / "generate-test.txt").write_text(output, encoding="utf-8")
    hypotheses: dict[int, str] = {}
    references: dict[int, str] = {}
    for line in output.splitlines():
        kind, _, rest = line.partition("-")
        if kind in ("H", "T") and "\t" in rest:
            index, *values = rest.split("\t")
            (hypotheses if kind == "H" else references)[int(index)] = values[-1]
    order = sorted(references)
    if len(order) != len(raw_references):
        raise RuntimeError(
            f"fairseq-generate returned {len(order)} translations for {len(raw_references)} "
            f"test sentences; see {save_dir / 'generate-test.txt'}"
        )
    return score_translations(
        [hypotheses[i] for i in order],
        [references[i] for i in order],
        [raw_references[i] for i in order],
        spec.target_lang,
        spec.lowercase,
    )


def pick_example_ids(references: Sequence[str], count: int) -> list[int]:
    """``count`` test sentences spread over the test set, each with a 6-16 word reference."""
    candidates = [i for i, line in enumerate(references) if 6 <= len(line.split()) <= 16] or list(
        range(len(references))
    )
    if count <= 0 or not candidates:
        return []
    count = min(count, len(candidates))
    return [candidates[k * len(candidates) // count] for k in range(count)]


def read_examples(generate_output: Path, ids: Sequence[int], spec: prepare.PreparationSpec) -> list[dict[str, str]]:
    """Source, reference and hypothesis (Moses-detokenised) of the test sentences ``ids`` from a
    ``fairseq-generate`` output."""
    from sacremoses import MosesDetokenizer

    wanted = set(ids)
    found: dict[int, dict[str, str]] = {i: {} for i in ids}
    for line in generate_output.read_text(encoding="utf-8").splitlines():
        kind, _, rest = line.partition("-")
        if kind in ("S", "T", "H") and "\t" in rest:
            index, *values = rest.split("\t")
            if int(index) in wanted:
                found[int(index)][kind] = values[-1]
    detokenize = {
        "S": MosesDetokenizer(lang=spec.source_lang).detokenize,
        "T": MosesDetokenizer(lang=spec.target_lang).detokenize,
        "H": MosesDetokenizer(lang=spec.target_lang).detokenize,
    }
    return [
        {
            "id": str(i),
            **{
                name: detokenize[kind](found[i].get(kind, "").split())
                for kind, name in (("S", "source"), ("T", "reference"), ("H", "hypothesis"))
            },
        }
        for i in ids
    ]
