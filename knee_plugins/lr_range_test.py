"""LR range test (Smith 2017; fast.ai's ``lr_find``) for a torch loop, the HF Trainer and accelerate.

The LR grows exponentially from ``start_lr`` to ``end_lr`` over ``num_iter`` optimizer updates, one
training batch each; the loss is smoothed with an exponential moving average (factor
``smoothing``) and the test stops once the smoothed loss exceeds ``diverge_threshold`` times its
minimum. The ramp, the smoothing and the stop are ``torch-lr-finder``'s ``LRFinder.range_test``;
afterwards the model (weights, buffers, gradients, train/eval mode), the optimizer (state and
param groups) and torch's RNG are put back as they were, so training can start right after.

The suggestion rule (:data:`SUGGESTION_RULE`) is stated with every result: the LR at which the
smoothed loss falls fastest per log-LR step, after dropping the first ``skip_start`` and last
``skip_end`` points. It is a starting point to read against the curve, not an answer: for
transformers it often lands an order of magnitude or more above the peak LR that trains best.
fairseq-train has the same test as ``--lr-scheduler lr_range_test``
(:mod:`knee_plugins.fairseq_plugin.lr_range_test_lr_scheduler`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SUGGESTION_RULE = (
    "steepest descent: the LR where the smoothed loss falls fastest per log-LR step "
    "(smallest central difference), skipping the first {skip_start} and last {skip_end} points"
)


@dataclass
class LRRangeTestResult:
    """The curve of an LR range test and its suggestion; ``to_dict`` gives the JSON record.

    ``min_loss_lr`` is the LR where the smoothed loss is lowest: a fact of the curve, not a suggestion
    (fast.ai's older rule of thumb takes a tenth of it)."""

    lrs: list[float]
    losses: list[float]
    start_lr: float
    end_lr: float
    num_iter: int
    smoothing: float
    diverge_threshold: float
    skip_start: int = 10
    skip_end: int = 5
    diverged: bool = False
    suggestion: float | None = None
    rule: str = ""
    min_loss_lr: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        finite = [loss for loss in self.losses if math.isfinite(loss)]
        self.diverged = bool(self.losses) and (
            not math.isfinite(self.losses[-1]) or self.losses[-1] > self.diverge_threshold * min(finite)
        )
        self.suggestion = suggest_lr(self.lrs, self.losses, skip_start=self.skip_start, skip_end=self.skip_end)
        self.rule = SUGGESTION_RULE.format(skip_start=self.skip_start, skip_end=self.skip_end)
        if finite:
            self.min_loss_lr = self.lrs[self.losses.index(min(finite))]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, output_dir: str | Path, name: str = "lr_range_test") -> Path:
        """Write ``<name>.json`` and, where matplotlib is installed, ``<name>.png``; return the JSON path."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        path = output_dir / f"{name}.json"
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        with contextlib.suppress(ImportError):
            plot_lr_range_test(self, output_dir / f"{name}.png")
        return path


def smooth(losses: Sequence[float], smoothing: float) -> list[float]:
    """torch-lr-finder's smoothing: ``s_0 = l_0``, ``s_t = smoothing · l_t + (1 − smoothing) · s_{t−1}``."""
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    smoothed: list[float] = []
    for loss in losses:
        smoothed.append(loss if not smoothed or smoothing == 0 else smoothing * loss + (1 - smoothing) * smoothed[-1])
    return smoothed


def suggest_lr(
    lrs: Sequence[float], losses: Sequence[float], *, skip_start: int = 10, skip_end: int = 5
) -> float | None:
    """The LR of :data:`SUGGESTION_RULE`, or ``None`` when fewer than ``skip_start + skip_end + 2`` points."""
    if skip_start < 0 or skip_end < 0:
        raise ValueError(f"skip_start and skip_end must be >= 0, got {skip_start} and {skip_end}")
    if len(lrs) != len(losses):
        raise ValueError(f"lrs and losses differ in length: {len(lrs)} and {len(losses)}")
    if len(lrs) < skip_start + skip_end + 2:
        return None
    lrs = list(lrs)[skip_start : len(lrs) - skip_end]
    losses = list(losses)[skip_start : len(losses) - skip_end]
    n = len(losses)
    slopes = [
        losses[1] - losses[0]
        if i == 0
        else losses[-1] - losses[-2]
        if i == n - 1
        else (losses[i + 1] - losses[i - 1]) / 2
        for i in range(n)
    ]
    return lrs[min(range(n), key=lambda i: slopes[i] if math.isfinite(slopes[i]) else math.inf)]


def plot_lr_range_test(result: LRRangeTestResult, path: str | Path) -> None:
    """The smoothed loss against the LR (log scale), the suggestion marked and its rule in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(result.lrs, result.losses, label="smoothed training loss")
    if result.suggestion is not None:
        index = result.lrs.index(result.suggestion)
        ax.scatter(
            [result.suggestion],
            [result.losses[index]],
            color="red",
            zorder=3,
            label=f"suggestion {result.suggestion:.2e}",
        )
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    title = "LR range test" + (" (stopped: loss diverged)" if result.diverged else "")
    ax.set_title(title)
    ax.legend(title="rule: steepest descent of the smoothed loss", fontsize=8, title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def lr_range_test(
    model: Any,
    optimizer: Any,
    batches: Iterable[Any],
    loss_fn: Callable[[Any, Any], Any],
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    smoothing: float = 0.05,
    diverge_threshold: float = 5.0,
    skip_start: int = 10,
    skip_end: int = 5,
    backward: Callable[[Any], None] | None = None,
    reduce_loss: Callable[[Any], Any] | None = None,
) -> LRRangeTestResult:
    """Run an LR range test on ``model`` with ``optimizer`` and leave both as they were.

    Args:
        model (`torch.nn.Module`): the model being trained.
        optimizer (`torch.optim.Optimizer`): its optimizer (an attached LR scheduler is fine).
        batches (`Iterable`): training batches, any kind (a DataLoader of dicts, of tuples...); it is
            iterated again from the start whenever it runs out.
        loss_fn (`Callable[[model, batch], torch.Tensor]`): the scalar loss of one batch.
        start_lr (`float`, *optional*, defaults to 1e-7): the first update's LR.
        end_lr (`float`, *optional*, defaults to 10): the LR of update ``num_iter``.
        num_iter (`int`, *optional*, defaults to 100): length of the exponential ramp.
        smoothing (`float`, *optional*, defaults to 0.05): the loss's moving-average factor.
        diverge_threshold (`float`, *optional*, defaults to 5): stop once the smoothed loss exceeds
            this multiple of its minimum.
        skip_start, skip_end (`int`, *optional*, default 10 and 5): points the suggestion ignores.
        backward (`Callable`, *optional*): how to back-propagate a loss (``accelerator.backward``);
            ``loss.backward()`` by default.
        reduce_loss (`Callable`, *optional*): maps a detached loss to the value recorded (the mean
            over processes: ``lambda loss: accelerator.reduce(loss, "mean")``).
    """
    if not 0 < start_lr < end_lr:
        raise ValueError(f"need 0 < start_lr < end_lr, got start_lr={start_lr}, end_lr={end_lr}")
    if num_iter < 2:
        raise ValueError(f"num_iter must be >= 2, got {num_iter}")
    if not diverge_threshold > 1:
        raise ValueError(f"diverge_threshold must be > 1, got {diverge_threshold}")
    smooth([], smoothing)
    import torch
    from torch_lr_finder import LRFinder, TrainDataLoaderIter

    from .sharpness import preserved_model

    class BatchIter(TrainDataLoaderIter):  # type: ignore[misc]
        """Any batch (a dict from a HF collator, too) goes to the loss function whole."""

        def inputs_labels_from_batch(self, batch_data: Any) -> tuple[Any, None]:
            return batch_data, None

    class LossModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, batch: Any) -> Any:
            return loss_fn(self.model, batch)

    class Finder(LRFinder):  # type: ignore[misc]
        def _train_batch(self, train_iter: Any, accumulation_steps: int, non_blocking_transfer: bool = True) -> float:
            self.model.train()
            self.optimizer.zero_grad()
            batch, _ = next(train_iter)
            loss = self.model(batch)
            if backward is None:
                loss.backward()
            else:
                backward(loss)
            self.optimizer.step()
            value = loss.detach() if reduce_loss is None else reduce_loss(loss.detach())
            return float(value)

    extra_keys = [{key: group.pop(key) for key in ("initial_lr",) if key in group} for group in optimizer.param_groups]
    own_step = optimizer.__dict__.get("step")
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        with preserved_model(model):
            finder = Finder(LossModule(), optimizer, lambda output, _: output)
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    finder.range_test(
                        BatchIter(batches),
                        start_lr=start_lr,
                        end_lr=end_lr,
                        num_iter=num_iter,
                        step_mode="exp",
                        smooth_f=smoothing,
                        diverge_th=diverge_threshold,
                    )
            finally:
                finder.reset()
                finder.state_cacher.cached.clear()
    finally:
        for group, extra in zip(optimizer.param_groups, extra_keys, strict=True):
            group.update(extra)
        if own_step is None:
            optimizer.__dict__.pop("step", None)
        else:
            optimizer.__dict__["step"] = own_step
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    return LRRangeTestResult(
        lrs=[float(lr) for lr in finder.history["lr"]],
        losses=[float(loss) for loss in finder.history["loss"]],
        start_lr=start_lr,
        end_lr=end_lr,
        num_iter=num_iter,
        smoothing=smoothing,
        diverge_threshold=diverge_threshold,
        skip_start=skip_start,
        skip_end=skip_end,
    )


def trainer_lr_range_test(trainer: Any, **kwargs: Any) -> LRRangeTestResult:
    """:func:`lr_range_test` of a HuggingFace ``Trainer`` before ``trainer.train()``: its model, its
    optimizer (``create_optimizer``: the one ``train()`` will use), its training data loader, its
    ``compute_loss`` and its accelerator's backward. An optimizer the test had to create is dropped
    again, so that ``train()`` builds it (and its scheduler) as usual."""
    created = trainer.optimizer is None
    optimizer = trainer.create_optimizer()
    try:
        return lr_range_test(
            trainer.model,
            optimizer,
            trainer.get_train_dataloader(),
            lambda model, batch: trainer.compute_loss(model, batch),
            backward=trainer.accelerator.backward,
            **kwargs,
        )
    finally:
        if created:
            trainer.optimizer = None


def accelerate_lr_range_test(
    accelerator: Any,
    model: Any,
    optimizer: Any,
    dataloader: Iterable[Any],
    loss_fn: Callable[[Any, Any], Any],
    **kwargs: Any,
) -> LRRangeTestResult:
    """:func:`lr_range_test` inside an accelerate loop, on what ``accelerator.prepare`` returned: the
    backward is ``accelerator.backward`` and each recorded loss is the mean over the processes, so
    that every process sees the same curve and stops at the same update."""
    return lr_range_test(
        model,
        optimizer,
        dataloader,
        loss_fn,
        backward=accelerator.backward,
        reduce_loss=lambda loss: accelerator.reduce(loss, "mean"),
        **kwargs,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="knee-lr-range-test",
        description="LR range test of a HuggingFace masked/causal LM on a text file, in an accelerate loop "
        "(run it under `accelerate launch`); writes lr_range_test.json and .png.",
    )
    parser.add_argument("--hf-model", type=Path, required=True, help="a HuggingFace model directory with its tokenizer")
    parser.add_argument("--data", type=Path, required=True, help="a UTF-8 text file, one training example a line")
    parser.add_argument("--objective", choices=("mlm", "clm"), default="mlm", help="masked or causal LM loss")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per batch")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per example")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW's weight decay")
    parser.add_argument("--start-lr", type=float, default=1e-7, help="the first update's LR")
    parser.add_argument("--end-lr", type=float, default=10.0, help="the LR of the last update of the ramp")
    parser.add_argument("--num-iter", type=int, default=100, help="updates of the exponential ramp")
    parser.add_argument("--smoothing", type=float, default=0.05, help="moving-average factor of the loss")
    parser.add_argument(
        "--diverge-threshold",
        type=float,
        default=5.0,
        help="stop once the smoothed loss exceeds this multiple of its minimum",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the model's dropout, the masking and the data order"
    )
    parser.add_argument("--output-dir", type=Path, required=True, help="where lr_range_test.json and .png go")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved settings as JSON and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``knee-lr-range-test``: an AdamW range test of a HF model in an accelerate loop."""
    parser = _parser()
    args = parser.parse_args(argv)
    for name in ("batch_size", "max_length", "num_iter"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 < args.start_lr < args.end_lr:
        parser.error(f"need 0 < --start-lr < --end-lr, got {args.start_lr} and {args.end_lr}")
    if args.dry_run:
        sys.stdout.write(json.dumps({k: v if v is None else str(v) for k, v in vars(args).items()}) + "\n")
        return 0
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from .sharpness import hf_loss_fn, hf_text_model_and_data

    accelerator = Accelerator()
    set_seed(args.seed)
    model, features, collate = hf_text_model_and_data(
        args.hf_model, args.data, objective=args.objective, max_length=args.max_length, seed=args.seed
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.start_lr, weight_decay=args.weight_decay)
    dataloader: Any = torch.utils.data.DataLoader(
        features,  # type: ignore[arg-type]  # a list is a map-style dataset
        batch_size=args.batch_size,
        shuffle=True,
        collate_fn=collate,
    )
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    result = accelerate_lr_range_test(
        accelerator,
        model,
        optimizer,
        dataloader,
        hf_loss_fn,
        start_lr=args.start_lr,
        end_lr=args.end_lr,
        num_iter=args.num_iter,
        smoothing=args.smoothing,
        diverge_threshold=args.diverge_threshold,
    )
    result.extra = {"model": str(args.hf_model), "num_processes": accelerator.num_processes}
    if accelerator.is_main_process:
        path = result.save(args.output_dir)
        summary = {
            "suggestion": result.suggestion,
            "rule": result.rule,
            "diverged": result.diverged,
            "points": len(result.lrs),
        }
        sys.stdout.write(json.dumps({**summary, "json": str(path)}) + "\n")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0 if all(math.isfinite(loss) or result.diverged for loss in result.losses) else 1


if __name__ == "__main__":
    sys.exit(main())
