"""A fairseq translation recipe as data, and the command lines it gives: the settings of one task
(:class:`TaskRecipe`), one training run (:class:`RunConfig`), and its ``fairseq-train`` /
``fairseq-generate`` commands with every schedule the recipes compare.

Also the demo's calibrated settings (:data:`DEMO`: the small Transformer, its batch, budget, warmup
and each schedule's peak LR from its LR sweep), which the translation demo runs as they are, the
MAT demo builds on and the budget benchmark trains at other budgets. Imports no task.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from scripts.common import prepare
from scripts.common.fairseq_cli import fairseq_command

SCHEDULES = ("knee", "linear", "cosine", "inverse_sqrt", "one_cycle", "wsd")
OPTIMIZERS = ("radam", "adam")
BUDGETS = ("full", "short")


@dataclass(frozen=True)
class TaskRecipe:
    """The paper's training settings for one task. Budgets are epochs for the paper's tasks and
    updates for the demo (``budget_unit``); ``explore`` is Knee's explore phase per budget, until that
    epoch (counted from the first update) or that fraction of an update budget."""

    name: str
    spec: prepare.PreparationSpec
    arch: str
    dropout: float
    tokens_per_update: int
    max_tokens_per_gpu: int
    budget: dict[str, int]
    explore: dict[str, float]
    budget_unit: str = "epochs"
    lr: float = 3e-4
    peak_lr: dict[str, float] = field(default_factory=dict)
    optimizer: str = "radam"
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = 0.0
    wsd_cooldown: float = 0.2
    clip_norm: float = 25.0
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    one_cycle_max_lr: float = 2.5e-4
    one_cycle_div_factor: float = 10.0
    inverse_sqrt_warmup: int = 4000
    beam: int = 5
    model_args: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    generate_args: tuple[str, ...] = ()

    def lr_of(self, schedule: str) -> float:
        """The peak LR of ``schedule``: its entry in ``peak_lr`` (the demo's, from its LR sweep), else
        the paper's (``one_cycle_max_lr`` for one-cycle, ``lr`` for the others)."""
        if schedule in self.peak_lr:
            return self.peak_lr[schedule]
        return self.one_cycle_max_lr if schedule == "one_cycle" else self.lr


# The demo's small Transformer and how its runs checkpoint: every save (each --save-interval-updates)
# writes checkpoint_last.pt (a rerun of the same command resumes from it), checkpoint_best.pt when the
# valid loss improved, and keeps fairseq's latest interval checkpoint checkpoint_<epoch>_<update>.pt.
DEMO_MODEL_ARGS = (
    "--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "128", "--decoder-embed-dim", "128",
    "--encoder-ffn-embed-dim", "512", "--decoder-ffn-embed-dim", "512",
    "--encoder-attention-heads", "4", "--decoder-attention-heads", "4",
)  # fmt: skip
DEMO_RUN_ARGS = (
    "--keep-interval-updates", "1", "--no-epoch-checkpoints", "--num-workers", "0",
    "--required-batch-size-multiple", "1",
)  # fmt: skip

# Each schedule's peak LR for the demo: the best valid loss of its LR sweep at the demo's budget
# (docs/demo-lr-sweep.md, made by ``python -m scripts.translation.run --sweep-lr``).
DEMO_PEAK_LR = {
    "knee": 0.002,
    "linear": 0.002,
    "cosine": 0.002,
    "inverse_sqrt": 0.002,
    "one_cycle": 0.004,
    "wsd": 0.002,
}

# The demo on the embedded gettext corpus: 1200 updates (~1.4 epochs, hence no dropout), 6% warmup,
# Knee exploring until half of the budget, 1024 tokens per update, Adam (0.9, 0.98), a 2k joint BPE.
DEMO = TaskRecipe(
    "demo",
    prepare.DEMO_SPEC,
    arch="transformer",
    model_args=(*DEMO_MODEL_ARGS, "--share-all-embeddings"),
    dropout=0.0,
    optimizer="adam",
    betas=(0.9, 0.98),
    lr=2e-3,
    peak_lr=DEMO_PEAK_LR,
    warmup_ratio=0.06,
    explore={"full": 0.5, "short": 0.5},
    tokens_per_update=1024,
    max_tokens_per_gpu=1024,
    budget_unit="updates",
    budget={"full": 1200, "short": 780},
    extra_args=("--save-interval-updates", "100", *DEMO_RUN_ARGS),
    beam=4,
    generate_args=("--max-len-a", "1.2", "--max-len-b", "10"),
)
SHORT_BUDGET = 0.65  # the demo's short budget, as a fraction of its full one


def with_budget(recipe: TaskRecipe, updates: int) -> TaskRecipe:
    """``recipe`` (a budget in updates) with a full budget of ``updates``, its short budget 65% of
    that, and a save (and validation) every 1/8 of it."""
    if recipe.budget_unit != "updates":
        raise ValueError(f"the {recipe.name} recipe's budget is in {recipe.budget_unit}, not updates")
    budget = {name: updates if name == "full" else max(1, round(SHORT_BUDGET * updates)) for name in recipe.budget}
    save_every = max(1, updates // 8)
    extra_args = replace_option(recipe.extra_args, "--save-interval-updates", save_every)
    return dataclasses.replace(recipe, budget=budget, extra_args=extra_args)


def replace_option(args: tuple[str, ...], flag: str, value: object) -> tuple[str, ...]:
    """``args`` with the value after ``flag`` set to ``value`` (``flag`` must be there)."""
    if flag not in args:
        raise ValueError(f"{flag} is not among the recipe's arguments {args}")
    index = args.index(flag) + 1
    return (*args[:index], str(value), *args[index + 1 :])


@dataclass(frozen=True)
class BatchPlan:
    world_size: int
    max_tokens: int
    update_freq: int

    @property
    def tokens_per_update(self) -> int:
        return self.world_size * self.max_tokens * self.update_freq


def plan_batches(tokens_per_update: int, max_tokens_per_gpu: int, world_size: int) -> BatchPlan:
    """Per-GPU ``--max-tokens`` and ``--update-freq`` keeping ``tokens_per_update`` on any world size."""
    if world_size < 1:
        raise ValueError(f"--world-size must be >= 1, got {world_size}")
    update_freq = max(1, math.ceil(tokens_per_update / (max_tokens_per_gpu * world_size)))
    return BatchPlan(world_size, round(tokens_per_update / (world_size * update_freq)), update_freq)


@dataclass
class RunConfig:
    """One training run: a task, a schedule, a budget, a seed and where it writes."""

    recipe: TaskRecipe
    schedule: str
    budget: str
    seed: int
    data_bin: Path
    save_dir: Path
    batches: BatchPlan
    updates_per_epoch: int | None = None
    cpu: bool = False
    extra: list[str] = field(default_factory=list)
    lr: float | None = None

    @property
    def peak_lr(self) -> float:
        """``lr`` when set (``--lr``, the LR sweep), else the recipe's peak LR for this schedule."""
        return self.recipe.lr_of(self.schedule) if self.lr is None else self.lr

    @property
    def label(self) -> str:
        return self.schedule if self.budget == "full" else f"{self.schedule} ({self.budget})"

    @property
    def total_updates(self) -> int | None:
        """The budget in updates when the recipe counts it in updates (for the progress bar)."""
        return self.recipe.budget[self.budget] if self.recipe.budget_unit == "updates" else None


def _budget_updates(run: RunConfig, budget: str | None = None) -> int:
    recipe, amount = run.recipe, run.recipe.budget[budget or run.budget]
    if recipe.budget_unit == "updates":
        return amount
    if run.updates_per_epoch is None:
        raise ValueError(
            f"--schedule {run.schedule} needs the budget in updates: pass --updates-per-epoch "
            "or prepare the data so it can be measured"
        )
    return amount * run.updates_per_epoch


def warmup_updates(run: RunConfig) -> int:
    """The warmup of ``run``: ``warmup_ratio`` of the *full* budget for every schedule but one-cycle
    (whose rise is its own, ``--pct-start``), the same number of updates at every budget; without a
    ratio the paper's: none, and ``inverse_sqrt_warmup`` for inverse-sqrt."""
    if run.recipe.warmup_ratio:
        return round(run.recipe.warmup_ratio * _budget_updates(run, "full"))
    return run.recipe.inverse_sqrt_warmup if run.schedule == "inverse_sqrt" else 0


def explore_args(recipe: TaskRecipe, budget: str, fraction: float, warmup: int) -> list[str]:
    """Explore until ``fraction`` of the budget, counted from the first update (warmup included)."""
    amount = recipe.budget[budget]
    if recipe.budget_unit == "epochs":
        return ["--explore-epochs", f"{fraction * amount:g}"]
    explore = round(fraction * amount) - warmup
    if explore < 0:
        raise ValueError(
            f"the warmup ({warmup} updates) is longer than the explore phase ({fraction:g} of {amount} updates)"
        )
    return ["--explore-updates", str(explore)]


def knee_explore_args(recipe: TaskRecipe, budget: str, warmup: int) -> list[str]:
    """Knee's explore phase: until epoch ``explore[budget]`` (the paper's, counted from the first
    update), or until that fraction of a budget in updates."""
    if recipe.budget_unit == "epochs":
        return ["--explore-epochs", f"{recipe.explore[budget]:g}"]
    return explore_args(recipe, budget, recipe.explore[budget], warmup)


def schedule_args(run: RunConfig) -> list[str]:
    """The ``--lr-scheduler`` arguments of ``run``. Knee, WSD (Knee's core with a 1-sqrt cooldown
    over the last ``wsd_cooldown`` of the budget) and one-cycle come from the plugin."""
    recipe, lr = run.recipe, f"{run.peak_lr:g}"
    warmup = warmup_updates(run)
    if run.schedule == "one_cycle":
        return ["--lr-scheduler", "one_cycle", "--lr", lr, "--div-factor", f"{recipe.one_cycle_div_factor:g}"]
    if run.schedule == "inverse_sqrt":
        return [
            "--lr-scheduler", "inverse_sqrt", "--lr", lr, "--warmup-updates", str(warmup), "--warmup-init-lr", "1e-07",
        ]  # fmt: skip
    if run.schedule in ("knee", "wsd"):
        if run.schedule == "wsd":
            explore = [*explore_args(recipe, run.budget, 1.0 - recipe.wsd_cooldown, warmup), "--decay-type", "1-sqrt"]
        else:
            explore = knee_explore_args(recipe, run.budget, warmup)
        return ["--lr-scheduler", "knee", "--lr", lr, "--warmup-updates", str(warmup), *explore]
    total = _budget_updates(run)
    if run.schedule == "linear":
        return [
            "--lr-scheduler", "polynomial_decay", "--lr", lr, "--power", "1", "--end-learning-rate", "0",
            "--warmup-updates", str(warmup), "--total-num-update", str(total),
        ]  # fmt: skip
    if run.schedule == "cosine":
        return [
            "--lr-scheduler", "cosine", "--lr", lr, "--warmup-updates", str(warmup), "--min-lr", "0",
            "--max-update", str(total),
        ]  # fmt: skip
    raise ValueError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {run.schedule!r}")


def optimizer_args(recipe: TaskRecipe) -> list[str]:
    if recipe.optimizer not in OPTIMIZERS:
        raise ValueError(f"the recipe's optimizer must be one of {', '.join(OPTIMIZERS)}, got {recipe.optimizer!r}")
    betas = f"({recipe.betas[0]:g}, {recipe.betas[1]:g})"
    return ["--optimizer", recipe.optimizer, f"--{recipe.optimizer}-betas", betas]


def fairseq_train_command(
    recipe: TaskRecipe,
    data_bin: Path,
    save_dir: Path,
    batches: BatchPlan,
    seed: int,
    scheduler: list[str],
    *,
    budget: str = "full",
    model_args: tuple[str, ...] | None = None,
    extra: tuple[str, ...] | list[str] = (),
    cpu: bool = False,
) -> list[str]:
    """The ``fairseq-train`` command of one run of ``recipe`` with the ``scheduler`` arguments:
    ``model_args`` (default: the recipe's), then ``extra`` after the recipe's own extra arguments
    (fairseq takes the last value of a repeated option)."""
    amount = recipe.budget[budget]
    budget_args = ["--max-epoch", str(amount)] if recipe.budget_unit == "epochs" else ["--max-update", str(amount)]
    if "--max-update" in scheduler and "--max-update" in budget_args:
        budget_args = []
    command = fairseq_command("train") + [
        str(data_bin),
        "--arch", recipe.arch,
        *(recipe.model_args if model_args is None else model_args),
        "--source-lang", recipe.spec.source_lang,
        "--target-lang", recipe.spec.target_lang,
        *optimizer_args(recipe),
        "--weight-decay", f"{recipe.weight_decay:g}",
        "--clip-norm", f"{recipe.clip_norm:g}",
        *scheduler,
        *budget_args,
        "--dropout", f"{recipe.dropout:g}",
        "--criterion", "label_smoothed_cross_entropy",
        "--label-smoothing", f"{recipe.label_smoothing:g}",
        "--max-tokens", str(batches.max_tokens),
        "--update-freq", str(batches.update_freq),
        "--seed", str(seed),
        "--save-dir", str(save_dir),
        "--best-checkpoint-metric", "loss",
        "--log-format", "json",
        "--log-interval", "10",
        *recipe.extra_args,
        *extra,
    ]  # fmt: skip
    return command + (["--cpu"] if cpu else [])


def train_command(run: RunConfig) -> list[str]:
    """The full ``fairseq-train`` command line of ``run``."""
    return fairseq_train_command(
        run.recipe,
        run.data_bin,
        run.save_dir,
        run.batches,
        run.seed,
        schedule_args(run),
        budget=run.budget,
        extra=run.extra,
        cpu=run.cpu,
    )


def generate_command(recipe: TaskRecipe, data_bin: Path, checkpoint: Path, cpu: bool = False) -> list[str]:
    """The ``fairseq-generate`` command scoring ``checkpoint`` on the whole test split (fairseq
    0.12 drops the last sentences when the batch size must be a multiple of 8, hence ``1``)."""
    return fairseq_command("generate") + [
        str(data_bin),
        "--path", str(checkpoint),
        "--gen-subset", "test",
        "--source-lang", recipe.spec.source_lang,
        "--target-lang", recipe.spec.target_lang,
        "--beam", str(recipe.beam),
        "--batch-size", "128",
        "--required-batch-size-multiple", "1",
        "--remove-bpe",
        *recipe.generate_args,
        *(["--cpu"] if cpu else []),
    ]  # fmt: skip


def count_updates_per_epoch(run: RunConfig) -> int:
    """Updates in one epoch, measured with fairseq's own batching of the training data and counted
    as the Knee scheduler counts them (``--update-freq``, ``--skip-remainder-batch``), so that a
    linear or cosine baseline gets exactly Knee's budget."""
    from fairseq import options, tasks, utils

    from knee_plugins.fairseq_plugin.epoch_budget import fairseq_updates_per_epoch

    argv = train_command(RunConfig(**{**run.__dict__, "schedule": "knee"}))
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, argv[len(fairseq_command("train")) :])
    task = tasks.setup_task(args)
    task.load_dataset("train")
    model_positions = (getattr(args, "max_source_positions", None), getattr(args, "max_target_positions", None))
    iterator = task.get_batch_iterator(
        dataset=task.dataset("train"),
        max_tokens=args.max_tokens,
        max_positions=utils.resolve_max_positions(
            task.max_positions(), None if None in model_positions else model_positions, args.max_tokens
        ),
        ignore_invalid_inputs=True,
        required_batch_size_multiple=args.required_batch_size_multiple,
        num_shards=run.batches.world_size,
        shard_id=0,
        seed=args.seed,
    )
    return fairseq_updates_per_epoch(len(iterator), run.batches.update_freq, bool(args.skip_remainder_batch))
