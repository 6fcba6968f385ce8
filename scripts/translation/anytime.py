"""The anytime demo: one Knee explore run per seed and finished models at several budgets branched
off it, against Knee runs trained separately at each budget.

``python -m scripts.translation.anytime --work-dir runs/anytime --seeds 3`` trains, per seed, on the
embedded corpus with the translation demo's settings (:data:`scripts.common.fairseq_recipe.DEMO`: the
small Transformer, Adam, lr 2e-3, 72 warmup updates, no dropout, 1024 tokens per update):

- the **parent**: Knee exploring towards a far budget (``--total-num-update``), stopped by
  ``--max-update`` at the largest branch point (or the largest budget when averaging), keeping a
  checkpoint every ``--save-interval`` updates;
- per budget B (default 600, 900, 1200) a **branch** from the parent's checkpoint at b = B - D
  (D = ``--decay-fraction`` of B, default 20%), decaying over D updates with Knee's linear decay and
  with WSD's 1-sqrt cooldown (``--continue-once``, each into its own save dir);
- per budget a **separate Knee run** from scratch with the same split (explore until b, linear decay);
- per budget the **average** of the parent's last ``--average-last`` checkpoints up to B, instead of
  a decay (valid loss from ``fairseq-validate``).

Every model is the one at its budget (``checkpoint_last.pt``, or the average), scored on test with
``fairseq-generate``. Finished runs are skipped on a rerun. Writes ``results.json``, ``table.md``
(mean ± std over seeds, and the updates each family cost against the separate runs) and
``family.png`` (LR and valid loss against updates, seed 1) into ``--report-dir``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.common.checkpoint_average import average_checkpoints, load_checkpoint
from scripts.common.fairseq_cli import fairseq_command
from scripts.common.fairseq_recipe import DEMO, DEMO_PEAK_LR, BatchPlan, fairseq_train_command, generate_command
from scripts.common.results import RunResult, mean_std, read_results_json, write_results_json
from scripts.common.runner import Job, RunnerOptions, run_all, score_test

logger = logging.getLogger(__name__)

DECAY_TYPES = ("linear", "1-sqrt")
PARENT = "parent (explore only)"
SEPARATE = "Knee trained alone"
NO_DECAY = "no decay (parent at B)"


def branch_method(decay_type: str) -> str:
    return f"branch, {decay_type} decay"


def average_method(k: int) -> str:
    return f"average of last {k}"


@dataclass(frozen=True)
class AnytimePlan:
    """The budgets, where each branch starts, and which parent checkpoints the family needs."""

    budgets: tuple[int, ...] = (600, 900, 1200)
    decay_fraction: float = 0.2
    decay_types: tuple[str, ...] = DECAY_TYPES
    average_last: int = 3
    save_interval: int = 60
    warmup: int = round(DEMO.warmup_ratio * DEMO.budget["full"])
    far_budget: int = 100_000
    lr: float = DEMO_PEAK_LR["knee"]

    def check(self) -> None:
        """ValueError naming the option when the plan cannot be run."""
        if not self.budgets or any(b < 2 for b in self.budgets) or len(set(self.budgets)) != len(self.budgets):
            raise ValueError(f"--budgets must be distinct budgets >= 2 updates, got {list(self.budgets)}")
        if not 0.0 < self.decay_fraction < 1.0:
            raise ValueError(f"--decay-fraction must be in (0, 1), got {self.decay_fraction}")
        unknown = [t for t in self.decay_types if t not in DECAY_TYPES]
        if not self.decay_types or unknown:
            raise ValueError(f"--decay-types must be among {', '.join(DECAY_TYPES)}, got {list(self.decay_types)}")
        if self.average_last < 0:
            raise ValueError(f"--average-last must be >= 0, got {self.average_last}")
        if self.save_interval < 1:
            raise ValueError(f"--save-interval must be >= 1, got {self.save_interval}")
        if self.warmup < 0:
            raise ValueError(f"--warmup must be >= 0, got {self.warmup}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        for budget in self.budgets:
            point = self.branch_point(budget)
            if not self.warmup <= point < budget:
                raise ValueError(
                    f"--decay-fraction {self.decay_fraction} of budget {budget} branches at update {point}, "
                    f"which must lie in [--warmup {self.warmup}, {budget})"
                )
        if self.far_budget <= self.parent_updates:
            raise ValueError(f"--far-budget must exceed the parent's {self.parent_updates} updates")
        off_grid = sorted(u for u in self.parent_checkpoints if u % self.save_interval)
        if off_grid:
            raise ValueError(
                f"--save-interval {self.save_interval} does not divide the parent updates the family needs: {off_grid}"
            )
        too_early = sorted(u for u in self.parent_checkpoints if u < 1)
        if too_early:
            raise ValueError(f"--average-last {self.average_last} reaches back before the first update")

    def branch_point(self, budget: int) -> int:
        """Where the decay to ``budget`` starts: ``budget`` minus its decay, ``decay_fraction`` of it."""
        return budget - round(self.decay_fraction * budget)

    def averaged_updates(self, budget: int) -> list[int]:
        """The parent's updates whose checkpoints are averaged for ``budget`` (the last up to it)."""
        return [budget - i * self.save_interval for i in reversed(range(self.average_last))]

    @property
    def parent_updates(self) -> int:
        """The parent's hard stop: the largest branch point, or the largest budget when averaging."""
        last = max(self.branch_point(b) for b in self.budgets)
        return max(last, max(self.budgets)) if self.average_last else last

    @property
    def parent_checkpoints(self) -> list[int]:
        needed = {self.branch_point(b) for b in self.budgets}
        if self.average_last:
            needed.update(u for b in self.budgets for u in self.averaged_updates(b))
        return sorted(needed)


def family_cost(parent_updates: int, decay_updates: Sequence[int]) -> int:
    """The updates a family costs: its parent's plus every branch's decay."""
    return parent_updates + sum(decay_updates)


def cost_ratio(family_updates: int, separate_updates: int) -> float:
    """A family's updates as a fraction of the separate runs' updates."""
    if separate_updates <= 0:
        raise ValueError(f"separate_updates must be > 0, got {separate_updates}")
    return family_updates / separate_updates


def cost_rows(plan: AnytimePlan) -> list[tuple[str, int, float]]:
    """(what, updates, fraction of the separate runs' updates) for each family and for everything run."""
    separate = sum(plan.budgets)
    decays = [b - plan.branch_point(b) for b in plan.budgets]
    to_last_branch = max(plan.branch_point(b) for b in plan.budgets)
    rows = [(f"{len(plan.budgets)} separate Knee runs", separate)]
    for decay_type in plan.decay_types:
        rows.append(
            (
                f"parent to {to_last_branch} + {decay_type} branches",
                family_cost(to_last_branch, decays),
            )
        )
    if plan.average_last:
        rows.append((f"parent to {max(plan.budgets)}, averaged (no decay)", max(plan.budgets)))
    everything = family_cost(plan.parent_updates, decays * len(plan.decay_types))
    rows.append((f"this demo's family as run (parent to {plan.parent_updates}, every branch)", everything))
    return [(what, updates, cost_ratio(updates, separate)) for what, updates in rows]


# --- the runs ----------------------------------------------------------------------------------


@dataclass
class Settings:
    """Where one measurement trains and what every command shares."""

    plan: AnytimePlan
    work_dir: Path
    data_bin: Path
    batches: BatchPlan
    cpu: bool
    fairseq_extra: list[str]

    def seed_dir(self, seed: int) -> Path:
        return self.work_dir / "checkpoints" / f"seed{seed}"

    def parent_dir(self, seed: int) -> Path:
        return self.seed_dir(seed) / "parent"


def run_args(save_interval: int, parent: bool) -> tuple[str, ...]:
    """Checkpointing: every ``save_interval`` updates (each save validates); the parent keeps them all
    (and its epoch checkpoints), any other run only its last."""
    keep = ("--keep-interval-updates", "-1") if parent else ("--keep-interval-updates", "1", "--no-epoch-checkpoints")
    return ("--save-interval-updates", str(save_interval), *keep, "--num-workers", "0",
            "--required-batch-size-multiple", "1")  # fmt: skip


def knee_args(plan: AnytimePlan, total: int | None, explore_until: int, decay_type: str = "linear") -> list[str]:
    """Knee at the plan's peak LR and warmup, exploring until update ``explore_until``; ``total``: the
    schedule's budget when it is not the run's ``--max-update``."""
    return [
        "--lr-scheduler", "knee", "--lr", f"{plan.lr:g}", "--warmup-updates", str(plan.warmup),
        *(["--total-num-update", str(total)] if total is not None else []),
        "--explore-updates", str(explore_until - plan.warmup), "--decay-type", decay_type,
    ]  # fmt: skip


def train(settings: Settings, save_dir: Path, seed: int, updates: int, scheduler: list[str], parent: bool = False,
          extra: Sequence[str] = ()) -> list[str]:  # fmt: skip
    recipe = dataclasses.replace(
        DEMO, budget={"full": updates}, extra_args=run_args(settings.plan.save_interval, parent)
    )
    return fairseq_train_command(
        recipe,
        settings.data_bin,
        save_dir,
        settings.batches,
        seed,
        scheduler,
        extra=[*extra, *settings.fairseq_extra],
        cpu=settings.cpu,
    )


def generate(settings: Settings, checkpoint: Path) -> list[str]:
    return generate_command(DEMO, settings.data_bin, checkpoint, settings.cpu)


def validate_command(settings: Settings, checkpoint: Path) -> list[str]:
    """``fairseq-validate`` of ``checkpoint`` on valid, batched as in training (the criterion is the
    checkpoint's own)."""
    return fairseq_command("validate") + [
        str(settings.data_bin),
        "--path", str(checkpoint),
        "--task", "translation",
        "--valid-subset", "valid",
        "--source-lang", DEMO.spec.source_lang,
        "--target-lang", DEMO.spec.target_lang,
        "--max-tokens", str(settings.batches.max_tokens),
        "--required-batch-size-multiple", "1",
        "--num-workers", "0",
        "--log-format", "json",
        *(["--cpu"] if settings.cpu else []),
    ]  # fmt: skip


def parent_job(settings: Settings, seed: int) -> Job:
    plan = settings.plan
    save_dir = settings.parent_dir(seed)
    command = train(
        settings, save_dir, seed, plan.parent_updates, knee_args(plan, plan.far_budget, plan.far_budget), parent=True
    )
    return Job(PARENT, seed, save_dir, command, [], total_updates=plan.parent_updates, peak_lr=plan.lr)


def branch_job(settings: Settings, seed: int, budget: int, decay_type: str, checkpoint: Path) -> Job:
    plan = settings.plan
    save_dir = settings.seed_dir(seed) / f"branch-{decay_type}-{budget}"
    point = plan.branch_point(budget)
    command = train(
        settings,
        save_dir,
        seed,
        budget,
        knee_args(plan, None, point, decay_type),
        extra=["--continue-once", str(checkpoint)],
    )
    label = f"{branch_method(decay_type)} @ {budget}"
    return Job(label, seed, save_dir, command, generate(settings, save_dir / "checkpoint_last.pt"), budget, plan.lr)


def separate_job(settings: Settings, seed: int, budget: int) -> Job:
    plan = settings.plan
    save_dir = settings.seed_dir(seed) / f"knee-{budget}"
    command = train(settings, save_dir, seed, budget, knee_args(plan, None, plan.branch_point(budget)))
    label = f"{SEPARATE} @ {budget}"
    return Job(label, seed, save_dir, command, generate(settings, save_dir / "checkpoint_last.pt"), budget, plan.lr)


def checkpoint_updates(path: Path) -> int:
    return int(load_checkpoint(path)["optimizer_history"][-1]["num_updates"])


def find_checkpoint(save_dir: Path, update: int) -> Path:
    """The parent's checkpoint after ``update``: ``checkpoint_<epoch>_<update>.pt``, or, when that update
    ended an epoch (fairseq then writes no interval checkpoint), the epoch or last checkpoint saved there."""
    found = sorted(save_dir.glob(f"checkpoint_*_{update}.pt"))
    if found:
        return found[0]
    for path in sorted(save_dir.glob("checkpoint[0-9]*.pt")) + sorted(save_dir.glob("checkpoint_last.pt")):
        if checkpoint_updates(path) == update:
            return path
    raise FileNotFoundError(f"no checkpoint of update {update} in {save_dir}")


def parse_validate(output: str) -> float:
    """The valid loss ``fairseq-validate --log-format json`` printed."""
    for line in reversed(output.splitlines()):
        if '"valid_loss"' in line:
            return float(json.loads(line[line.index("{") :])["valid_loss"])
    raise RuntimeError("fairseq-validate printed no valid_loss:\n" + output[-2000:])


def run_average(settings: Settings, seed: int, budget: int, raw_test: Sequence[str], skip_generate: bool) -> RunResult:
    """Average the parent's last checkpoints up to ``budget``, validate and score it (reused when done)."""
    plan = settings.plan
    save_dir = settings.seed_dir(seed) / f"average{plan.average_last}-{budget}"
    result_path = save_dir / "result.json"
    label = f"{average_method(plan.average_last)} @ {budget}"
    if result_path.exists():
        result = read_results_json(result_path)[0]
    else:
        sources = [find_checkpoint(settings.parent_dir(seed), u) for u in plan.averaged_updates(budget)]
        checkpoint = average_checkpoints(sources, save_dir / "checkpoint_average.pt")
        command = validate_command(settings, checkpoint)
        logger.info("%s", shlex.join(command))
        completed = subprocess.run(command, check=True, capture_output=True, text=True)
        loss = parse_validate(completed.stdout + completed.stderr)
        result = RunResult(label, seed, 0.0, budget, loss, 2**loss, [], [(budget, loss)], peak_lr=plan.lr)
        write_results_json([result], result_path)
    if not skip_generate and result.bleu_tokenized is None:
        result.bleu_tokenized, result.bleu_detokenized = score_test(
            generate(settings, save_dir / "checkpoint_average.pt"), save_dir, raw_test, DEMO.spec
        )
        write_results_json([result], result_path)
    return result


def no_decay_result(parent: RunResult, budget: int) -> RunResult:
    """The parent's valid loss at ``budget`` (best: its lowest up to there), as a model with no decay."""
    curve = [(u, loss) for u, loss in parent.valid_curve if u <= budget]
    at_budget = [loss for u, loss in curve if u == budget]
    if not at_budget:
        raise ValueError(f"the parent logged no valid loss at update {budget}")
    best = min(loss for _, loss in curve)
    return RunResult(f"{NO_DECAY} @ {budget}", parent.seed, 0.0, budget, best, 2**best, [], [(budget, at_budget[0])])


def family_jobs(settings: Settings, seed: int, raw_test: Sequence[str], skip_generate: bool) -> list[RunResult]:
    """Every run of one seed, in order: parent, branches, separate runs, averages."""
    plan = settings.plan
    seed_dir = settings.seed_dir(seed)
    (parent,) = run_all([parent_job(settings, seed)], raw_test, DEMO.spec, seed_dir / "parent.json", skip_generate=True)
    branches = [
        branch_job(
            settings, seed, budget, decay_type, find_checkpoint(settings.parent_dir(seed), plan.branch_point(budget))
        )
        for budget in plan.budgets
        for decay_type in plan.decay_types
    ]
    separate = [separate_job(settings, seed, budget) for budget in plan.budgets]
    results = [parent]
    results += run_all([*branches, *separate], raw_test, DEMO.spec, seed_dir / "runs.json", skip_generate=skip_generate)
    if plan.average_last:
        results += [run_average(settings, seed, b, raw_test, skip_generate) for b in plan.budgets]
    results += [no_decay_result(parent, b) for b in plan.budgets]
    return results


# --- the report --------------------------------------------------------------------------------


def split_label(label: str) -> tuple[str, int | None]:
    """(method, budget) of a result's label ``"<method> @ <budget>"`` (the parent has no budget)."""
    method, _, budget = label.rpartition(" @ ")
    return (method, int(budget)) if method else (label, None)


def last_valid_loss(result: RunResult) -> float:
    return result.valid_curve[-1][1]


def format_table(results: Sequence[RunResult], plan: AnytimePlan) -> str:
    """Per budget and method: seeds, test BLEU (tokenised), best and last valid loss (mean ± std over
    seeds) and the updates the method spent on its own; then the cost of each family."""
    methods = [SEPARATE, *(branch_method(t) for t in plan.decay_types)]
    methods += [average_method(plan.average_last)] if plan.average_last else []
    methods.append(NO_DECAY)
    header = ("budget", "method", "seeds", "BLEU tok", "best valid loss", "last valid loss", "own updates")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for budget in plan.budgets:
        for method in methods:
            group = [r for r in results if split_label(r.label) == (method, budget)]
            if not group:
                continue
            own = {
                SEPARATE: str(budget),
                NO_DECAY: "(parent)",
                average_method(plan.average_last): "0 (parent)",
            }.get(method, str(budget - plan.branch_point(budget)))
            cells = (
                str(budget),
                method,
                str(len(group)),
                mean_std([r.bleu_tokenized for r in group], 2),
                mean_std([r.best_valid_loss for r in group], 3),
                mean_std([last_valid_loss(r) for r in group], 3),
                own,
            )
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| updates spent | updates | fraction of the separate runs |", "|---|---|---|"]
    lines += [f"| {what} | {updates} | {ratio:.2f} |" for what, updates, ratio in cost_rows(plan)]
    return "\n".join(lines)


def records(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """The results as JSON records, each with its method and budget."""
    out = []
    for result in results:
        method, budget = split_label(result.label)
        out.append({"method": method, "budget": budget, **dataclasses.asdict(result)})
    return out


def write_family_plot(results: Sequence[RunResult], plan: AnytimePlan, path: Path, seed: int = 1) -> Path:
    """LR (top) and valid loss (bottom) against updates for one seed: the parent, each branch (drawn from
    its branch point), each separate run and each average; colour: budget, line style: method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    mine = [r for r in results if r.seed == seed]
    parent = next((r for r in mine if r.label == PARENT), None)
    fig, (lr_ax, loss_ax) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    colours = {b: f"C{i}" for i, b in enumerate(plan.budgets)}
    styles: dict[str, Any] = {
        SEPARATE: ":",
        **{branch_method(t): ("-" if t == "linear" else "--") for t in DECAY_TYPES},
    }
    finished: list[float] = []
    for result in mine:
        method, budget = split_label(result.label)
        lr_curve, valid_curve = list(result.lr_curve), list(result.valid_curve)
        if method == PARENT:
            kwargs: dict[str, Any] = {"color": "black", "linewidth": 2.0}
        elif method in styles and budget is not None:
            kwargs = {"color": colours[budget], "linestyle": styles[method]}
            point = plan.branch_point(budget)
            if method != SEPARATE and parent is not None:
                lr_curve = [(point, plan.lr), *lr_curve]
                valid_curve = [p for p in parent.valid_curve if p[0] == point] + valid_curve
            finished.append(result.valid_curve[-1][1])
        elif method.startswith("average") and budget is not None:
            loss_ax.plot(*zip(*valid_curve, strict=True), marker="x", markersize=9, linestyle="none",
                         color=colours[budget])  # fmt: skip
            finished.append(valid_curve[-1][1])
            continue
        else:
            continue
        if lr_curve:
            lr_ax.plot(*zip(*lr_curve, strict=True), **kwargs)
        loss_ax.plot(*zip(*valid_curve, strict=True), marker=".", **kwargs)
    handles = [Line2D([], [], color="black", linewidth=2.0, label="parent (explore)")]
    handles += [Line2D([], [], color="grey", linestyle=style, label=method) for method, style in styles.items()
                if method == SEPARATE or method.split()[1] in plan.decay_types]  # fmt: skip
    if plan.average_last:
        handles.append(
            Line2D([], [], color="grey", marker="x", linestyle="none", label=average_method(plan.average_last))
        )
    handles += [Line2D([], [], color=colour, linewidth=4, label=f"budget {b}") for b, colour in colours.items()]
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_title(f"Anytime Knee on the demo corpus (seed {seed}): one explore run, decays branched off it")
    loss_ax.set_ylabel("valid loss")
    loss_ax.set_xlabel("updates")
    if finished:
        loss_ax.set_ylim(min(finished) - 0.1, max(finished) + 0.5)
    loss_ax.legend(handles=handles, fontsize=8, ncol=2, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(results: Sequence[RunResult], plan: AnytimePlan, report_dir: Path) -> str:
    report_dir.mkdir(parents=True, exist_ok=True)
    table = format_table(results, plan)
    (report_dir / "table.md").write_text(table + "\n", encoding="utf-8")
    (report_dir / "results.json").write_text(json.dumps(records(results), indent=1) + "\n", encoding="utf-8")
    write_family_plot(results, plan, report_dir / "family.png", seed=min(r.seed for r in results))
    return table


# --- command line ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = AnytimePlan()
    parser = argparse.ArgumentParser(
        prog="python -m scripts.translation.anytime",
        description="The anytime demo: one Knee explore run, decays branched off it at several budgets, "
        "checkpoint averages, against Knee runs trained separately at each budget.",
    )
    parser.add_argument(
        "--work-dir", type=Path, default=Path("runs/anytime"), help="data, checkpoints and logs (default: runs/anytime)"
    )
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=None,
        help="where table.md, results.json and family.png go (default: --work-dir)",
    )
    parser.add_argument("--seeds", type=int, default=1, help="train the whole family with seeds 1..N (default: 1)")
    parser.add_argument(
        "--budgets",
        type=int,
        nargs="+",
        default=list(defaults.budgets),
        help="the budgets in updates (default: 600 900 1200)",
    )
    parser.add_argument(
        "--decay-fraction",
        type=float,
        default=defaults.decay_fraction,
        help="each budget's decay as a fraction of it; the branch starts at budget minus its decay (default: 0.2)",
    )
    parser.add_argument(
        "--decay-types",
        nargs="+",
        choices=DECAY_TYPES,
        default=list(defaults.decay_types),
        help="decays branched at each budget: Knee's linear, WSD's 1-sqrt cooldown (default: both)",
    )
    parser.add_argument(
        "--average-last",
        type=int,
        default=defaults.average_last,
        help="average the parent's last K checkpoints up to each budget (0: no averages; default: 3)",
    )
    parser.add_argument(
        "--save-interval",
        type=int,
        default=defaults.save_interval,
        help="checkpoint and validate every N updates; must divide every branch point and averaged update (default: 60)",
    )
    parser.add_argument(
        "--warmup", type=int, default=defaults.warmup, help="warmup updates of every run (default: the demo's 72)"
    )
    parser.add_argument(
        "--far-budget",
        type=int,
        default=defaults.far_budget,
        help="the parent's schedule budget (--total-num-update), far beyond its hard stop (default: 100000)",
    )
    parser.add_argument(
        "--lr", type=float, default=defaults.lr, help="peak LR of every run (default: the demo's Knee LR, 0.002)"
    )
    parser.add_argument("--train-pairs", type=int, default=None, help="use the first N training pairs of the corpus")
    parser.add_argument("--heldout-pairs", type=int, default=None, help="use the first N pairs of valid and of test")
    parser.add_argument("--bpe-symbols", type=int, default=None, help="joint BPE merges (default: the demo's 2000)")
    parser.add_argument("--cpu", action="store_true", help="train on CPU (default when there is no GPU)")
    parser.add_argument("--skip-generate", action="store_true", help="do not score the models on test")
    parser.add_argument(
        "--fairseq-args", default="", help="extra fairseq-train arguments for every training run (one quoted string)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan and every command, and exit")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    try:
        plan_from(args).check()
        options(args).check()
    except ValueError as error:
        parser.error(str(error))
    return args


def plan_from(args: argparse.Namespace) -> AnytimePlan:
    return AnytimePlan(
        tuple(args.budgets), args.decay_fraction, tuple(dict.fromkeys(args.decay_types)), args.average_last,
        args.save_interval, args.warmup, args.far_budget, args.lr,
    )  # fmt: skip


def options(args: argparse.Namespace) -> RunnerOptions:
    return RunnerOptions(
        "demo",
        seeds=args.seeds,
        work_dir=args.work_dir,
        train_pairs=args.train_pairs,
        heldout_pairs=args.heldout_pairs,
        bpe_symbols=args.bpe_symbols,
        cpu=args.cpu,
        dry_run=args.dry_run,
        skip_generate=args.skip_generate,
        fairseq_args=args.fairseq_args,
    )


def print_plan(settings: Settings, seeds: int) -> None:
    plan = settings.plan
    print(f"budgets {list(plan.budgets)}; branch points {[plan.branch_point(b) for b in plan.budgets]}; "
          f"parent stops at {plan.parent_updates}; parent checkpoints used {plan.parent_checkpoints}")  # fmt: skip
    for what, updates, ratio in cost_rows(plan):
        print(f"updates: {what}: {updates} ({ratio:.2f} of the separate runs)")
    per_seed = plan.parent_updates + sum(b - plan.branch_point(b) for b in plan.budgets) * len(plan.decay_types)
    per_seed += sum(plan.budgets)
    scored = len(plan.budgets) * (len(plan.decay_types) + 1 + bool(plan.average_last))
    print(f"per seed: {per_seed} updates trained, {scored} test scorings; {seeds} seed(s)")
    for seed in range(1, seeds + 1):
        parent_dir = settings.parent_dir(seed)
        print(f"# seed {seed}")
        print(shlex.join(parent_job(settings, seed).train_command))
        for budget in plan.budgets:
            checkpoint = parent_dir / f"checkpoint_<epoch>_{plan.branch_point(budget)}.pt"
            for decay_type in plan.decay_types:
                print(shlex.join(branch_job(settings, seed, budget, decay_type, checkpoint).train_command))
        for budget in plan.budgets:
            print(shlex.join(separate_job(settings, seed, budget).train_command))
        for budget in plan.budgets if plan.average_last else ():
            print(
                f"# average of {parent_dir}/checkpoint_<epoch>_<update>.pt for updates {plan.averaged_updates(budget)}"
            )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    plan = plan_from(args)
    runner = options(args)
    work_dir = runner.resolve_work_dir("anytime")
    data_bin = work_dir / "prepared" / "data-bin"
    raw_test: list[str] = []
    if not args.dry_run:
        data_bin, raw_test = runner.prepare(DEMO, work_dir)
    settings = Settings(plan, work_dir, data_bin, runner.batches(DEMO), runner.use_cpu, runner.fairseq_extra)
    if args.dry_run:
        print_plan(settings, args.seeds)
        return 0
    report_dir = (args.report_dir or work_dir).resolve()
    results: list[RunResult] = []
    for seed in range(1, args.seeds + 1):
        results += family_jobs(settings, seed, raw_test, args.skip_generate)
        table = write_report(results, plan, report_dir)
    print(table)
    print(f"wrote {report_dir / 'table.md'}, {report_dir / 'results.json'}, {report_dir / 'family.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
