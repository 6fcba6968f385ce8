"""Sharpness of a trained model: Keskar et al.'s ε-sharpness and the top Hessian eigenvalue.

Both are measured on a fixed list of training batches through a ``loss_fn(model, batch)`` that
returns a scalar tensor, so the same functions serve a plain torch model, a HuggingFace model
(:func:`hf_loss_fn`), a model prepared by accelerate (pass ``accelerator.unwrap_model(model)``)
and a fairseq model with fairseq's own criterion (:func:`fairseq_loss_fn`). The model is left
exactly as it was: parameters, buffers, gradients and each module's train/eval mode.

ε-sharpness (Keskar et al., ICLR 2017, "On Large-Batch Training for Deep Learning"): with
``f`` the mean loss over the batches at the weights ``x`` and the box
``C_ε = {y : |y_i| ≤ ε (|x_i| + 1)}``::

    sharpness = 100 · (max_{y ∈ C_ε} f(x + y) − f(x)) / (1 + f(x))

The inner maximum is found by projected gradient ascent in the ℓ∞ form that suits a box: from a
seeded uniform point of the box, ``steps`` steps ``y ← clip(y + step_size · w ⊙ sign ∇f(x + y))``
with ``w_i = ε (|x_i| + 1)`` the box's half-widths, keeping the largest loss met. (Keskar et al.
solved it with 10 iterations of L-BFGS-B at ε = 1e-3 and 5e-4.) The defaults, ε = 1e-4 and 1000
steps, are the Knee paper's: it reports Keskar sharpness at ε = 1e-4, and the authors' released
script takes 1000 projected ascent steps. The loss is evaluated in eval mode (no dropout), so
that every ascent step sees the same function.

The top Hessian eigenvalue is computed by Lanczos iteration (``hessian-eigenthings``) on the
Hessian of the same mean loss.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

LossFn = Callable[[nn.Module, Any], torch.Tensor]

DEFAULT_EPSILON = 1e-4
DEFAULT_STEPS = 1000
DEFAULT_STEP_SIZE = 0.01
DEFAULT_EIGEN_ITERATIONS = 20


@dataclass
class SharpnessResult:
    """What :func:`measure_sharpness` measured; ``to_dict`` gives the JSON record."""

    loss: float
    num_batches: int
    num_parameters: int
    epsilon: float | None = None
    steps: int | None = None
    step_size: float | None = None
    max_loss: float | None = None
    sharpness: float | None = None
    top_eigenvalue: float | None = None
    eigen_iterations: int | None = None
    seed: int = 0
    ascent: str = "projected sign-gradient ascent in the box eps*(|x|+1), from a uniform random point"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def preserved_model(model: nn.Module) -> Iterator[None]:
    """Restore ``model``'s parameters, buffers, gradients and per-module train/eval mode on exit."""
    modes = {module: module.training for module in model.modules()}
    params = [(p, p.detach().clone(), None if p.grad is None else p.grad.detach().clone()) for p in model.parameters()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for param, data, grad in params:
                param.copy_(data)
                param.grad = grad
            for buffer, data in buffers:
                buffer.copy_(data)
        for module, training in modes.items():
            module.train(training)


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no parameter with requires_grad=True")
    return params


def _check_batches(batches: Sequence[Any]) -> None:
    if len(batches) == 0:
        raise ValueError("batches must hold at least one batch")


def mean_loss(model: nn.Module, batches: Sequence[Any], loss_fn: LossFn) -> float:
    """The mean of ``loss_fn(model, batch)`` over ``batches``, without gradients."""
    _check_batches(batches)
    with torch.no_grad():
        return sum(float(loss_fn(model, batch)) for batch in batches) / len(batches)


def _loss_and_grads(
    model: nn.Module, params: list[nn.Parameter], batches: Sequence[Any], loss_fn: LossFn
) -> tuple[float, list[torch.Tensor]]:
    total = 0.0
    grads = [torch.zeros_like(p) for p in params]
    for batch in batches:
        loss = loss_fn(model, batch) / len(batches)
        for acc, grad in zip(grads, torch.autograd.grad(loss, params, allow_unused=True), strict=True):
            if grad is not None:
                acc.add_(grad)
        total += float(loss.detach())
    return total, grads


def epsilon_sharpness(
    model: nn.Module,
    batches: Sequence[Any],
    loss_fn: LossFn,
    *,
    epsilon: float = DEFAULT_EPSILON,
    steps: int = DEFAULT_STEPS,
    step_size: float = DEFAULT_STEP_SIZE,
    seed: int = 0,
    progress: bool = True,
) -> tuple[float, float, float]:
    """Keskar's ε-sharpness of ``model`` at its current weights (see the module docstring).

    Args:
        model (`nn.Module`): the model; all parameters with ``requires_grad`` are perturbed.
        batches (`Sequence`): the fixed training batches the loss is averaged over.
        loss_fn (`Callable[[nn.Module, Any], torch.Tensor]`): scalar loss of one batch.
        epsilon (`float`, *optional*, defaults to 1e-4): the box's relative half-width.
        steps (`int`, *optional*, defaults to 1000): projected ascent steps.
        step_size (`float`, *optional*, defaults to 0.01): each step's length as a fraction of the
            box's half-width.
        seed (`int`, *optional*, defaults to 0): seed of the random starting point in the box.
        progress (`bool`, *optional*, defaults to `True`): show a tqdm progress bar.

    Return:
        `(sharpness, loss, max_loss)`: the sharpness in percent, the loss at the weights and the
        largest loss found in the box.
    """
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    _check_batches(batches)
    from tqdm.auto import tqdm

    params = _trainable(model)
    with preserved_model(model):
        model.eval()
        loss = mean_loss(model, batches, loss_fn)
        origin = [p.detach().clone() for p in params]
        widths = [epsilon * (x.abs() + 1.0) for x in origin]
        generator = torch.Generator(device="cpu").manual_seed(seed)
        with torch.no_grad():
            for p, x, w in zip(params, origin, widths, strict=True):
                start = torch.rand(p.shape, generator=generator, dtype=p.dtype).to(p.device) * 2.0 - 1.0
                p.copy_(x + start * w)
        max_loss = loss
        for _ in tqdm(range(steps), desc="eps-sharpness", disable=not progress):
            value, grads = _loss_and_grads(model, params, batches, loss_fn)
            max_loss = max(max_loss, value)
            with torch.no_grad():
                for p, x, w, g in zip(params, origin, widths, grads, strict=True):
                    p.add_(step_size * w * g.sign()).clamp_(x - w, x + w)
        max_loss = max(max_loss, mean_loss(model, batches, loss_fn))
    return 100.0 * (max_loss - loss) / (1.0 + loss), loss, max_loss


def top_hessian_eigenvalue(
    model: nn.Module,
    batches: Sequence[Any],
    loss_fn: LossFn,
    *,
    iterations: int = DEFAULT_EIGEN_ITERATIONS,
    seed: int = 0,
    method: str = "autograd",
) -> float:
    """The largest eigenvalue of the Hessian of the mean loss over ``batches`` (Lanczos, eval mode).

    Args:
        iterations (`int`, *optional*, defaults to 20): Lanczos steps (Hessian-vector products),
            capped at the number of parameters.
        method (`str`, *optional*, defaults to `"autograd"`): how ``hessian-eigenthings`` forms a
            Hessian-vector product: ``"autograd"`` (double backward) or ``"finite_difference"``
            (for models whose kernels have no double backward). With ``"autograd"``, attention
            through ``scaled_dot_product_attention`` runs on its math kernel.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if method not in ("autograd", "finite_difference"):
        raise ValueError(f"method must be 'autograd' or 'finite_difference', got {method!r}")
    _check_batches(batches)
    from hessian_eigenthings import HessianOperator, lanczos

    _trainable(model)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # Only the math kernel of scaled_dot_product_attention has a double backward.
    kernel = sdpa_kernel([SDPBackend.MATH]) if method == "autograd" else contextlib.nullcontext()
    with preserved_model(model), kernel:
        model.eval()
        operator = HessianOperator(model, list(batches), loss_fn, full_dataset=True, method=method)  # type: ignore[arg-type]
        result = lanczos(operator, k=1, max_iter=min(iterations, operator.size), which="LA", seed=seed)
    return float(result.eigenvalues[0])


def measure_sharpness(
    model: nn.Module,
    batches: Sequence[Any],
    loss_fn: LossFn,
    *,
    epsilon: float | None = DEFAULT_EPSILON,
    steps: int = DEFAULT_STEPS,
    step_size: float = DEFAULT_STEP_SIZE,
    eigen_iterations: int | None = DEFAULT_EIGEN_ITERATIONS,
    hvp_method: str = "autograd",
    seed: int = 0,
    progress: bool = True,
) -> SharpnessResult:
    """ε-sharpness (``epsilon=None`` skips it) and the top Hessian eigenvalue (``eigen_iterations=None``
    skips it) of ``model`` on ``batches``; the model is left as it was."""
    batches = list(batches)
    result = SharpnessResult(
        loss=_eval_loss(model, batches, loss_fn),
        num_batches=len(batches),
        num_parameters=sum(p.numel() for p in _trainable(model)),
        seed=seed,
    )
    if epsilon is not None:
        sharpness, loss, max_loss = epsilon_sharpness(
            model, batches, loss_fn, epsilon=epsilon, steps=steps, step_size=step_size, seed=seed, progress=progress
        )
        result.epsilon, result.steps, result.step_size = epsilon, steps, step_size
        result.sharpness, result.loss, result.max_loss = sharpness, loss, max_loss
    if eigen_iterations is not None:
        result.top_eigenvalue = top_hessian_eigenvalue(
            model, batches, loss_fn, iterations=eigen_iterations, seed=seed, method=hvp_method
        )
        result.eigen_iterations = eigen_iterations
    return result


def _eval_loss(model: nn.Module, batches: Sequence[Any], loss_fn: LossFn) -> float:
    with preserved_model(model):
        model.eval()
        return mean_loss(model, batches, loss_fn)


def take_batches(batches: Iterable[Any], num_batches: int) -> list[Any]:
    """The first ``num_batches`` batches of ``batches`` (a data loader, an iterator): the fixed subset."""
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    taken = []
    for batch in batches:
        taken.append(batch)
        if len(taken) == num_batches:
            break
    return taken


def hf_loss_fn(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """The loss of a HuggingFace model on a batch that holds ``labels``: ``model(**batch).loss``."""
    return model(**batch).loss  # type: ignore[no-any-return]


def fairseq_loss_fn(criterion: Any) -> LossFn:
    """``loss_fn`` of a fairseq criterion: its summed loss over the sample divided by the sample size."""

    def loss_fn(model: nn.Module, sample: dict[str, Any]) -> torch.Tensor:
        loss, sample_size, _ = criterion(model, sample)
        return loss / max(float(sample_size), 1.0)  # type: ignore[no-any-return]

    return loss_fn


def hf_text_model_and_data(
    model_dir: str | Path, data: str | Path, *, objective: str = "mlm", max_length: int = 128, seed: int = 0
) -> tuple[nn.Module, list[dict[str, Any]], Callable[[list[dict[str, Any]]], dict[str, Any]]]:
    """A HuggingFace masked (``objective="mlm"``) or causal (``"clm"``) LM from ``model_dir``, the
    tokenised lines of the text file ``data`` (one example a line) and the collator that batches
    them with ``labels`` (masking seeded by ``seed``)."""
    if objective not in ("mlm", "clm"):
        raise ValueError(f"objective must be 'mlm' or 'clm', got {objective!r}")
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer, DataCollatorForLanguageModeling

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    auto = AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM
    model = auto.from_pretrained(model_dir)
    lines = [line.strip() for line in Path(data).read_text(encoding="utf-8").splitlines() if line.strip()]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    encoded = tokenizer(lines, truncation=True, max_length=max_length)
    features = [{key: encoded[key][i] for key in encoded} for i in range(len(lines))]
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=objective == "mlm", seed=seed)
    return model, features, lambda examples: dict(collator(examples))


def _hf_batches(args: argparse.Namespace) -> tuple[nn.Module, list[Any], LossFn]:
    model, features, collate = hf_text_model_and_data(
        args.hf_model, args.data, objective=args.objective, max_length=args.max_length, seed=args.seed
    )
    needed = args.num_batches * args.batch_size
    if len(features) < needed:
        raise SystemExit(f"--data holds {len(features)} non-empty lines; --num-batches x --batch-size needs {needed}")
    batches = [collate(features[start : start + args.batch_size]) for start in range(0, needed, args.batch_size)]
    return model, batches, hf_loss_fn


def fairseq_model_and_batches(
    checkpoint: str | Path,
    data: str | Path,
    *,
    subset: str = "train",
    max_tokens: int = 4096,
    num_batches: int = 4,
    seed: int = 0,
) -> tuple[nn.Module, list[Any], LossFn]:
    """A fairseq checkpoint's model, ``num_batches`` batches of ``subset`` and the ``loss_fn`` of the
    checkpoint's own criterion, all built by fairseq from the checkpoint's config. The batches are the
    first of fairseq's epoch-1 order shuffled with ``seed`` (fairseq groups sentences of similar length
    into a batch; unshuffled, the first batches would hold only the shortest sentences), so the same
    ``seed`` gives the same batches for every checkpoint of a recipe."""
    from fairseq import checkpoint_utils, utils

    import knee_plugins.fairseq_plugin  # noqa: F401  (registers the plugin, incl. its checkpoint allow-list)

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(checkpoint)], arg_overrides={"data": str(data)}
    )
    model = models[0]
    criterion = task.build_criterion(cfg.criterion)
    task.load_dataset(subset)
    iterator = task.get_batch_iterator(
        dataset=task.dataset(subset),
        max_tokens=max_tokens,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
        seed=seed,
    ).next_epoch_itr(shuffle=True)
    return model, take_batches(iterator, num_batches), fairseq_loss_fn(criterion)


def _fairseq_batches(args: argparse.Namespace) -> tuple[nn.Module, list[Any], LossFn]:
    return fairseq_model_and_batches(
        args.fairseq_checkpoint,
        args.fairseq_data,
        subset=args.subset,
        max_tokens=args.max_tokens,
        num_batches=args.num_batches,
        seed=args.seed,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="knee-sharpness",
        description="Keskar's eps-sharpness and the top Hessian eigenvalue of a HuggingFace model directory "
        "or a fairseq checkpoint, on a fixed subset of its training data; prints a JSON record.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--hf-model", type=Path, help="a HuggingFace model directory (save_pretrained) with its tokenizer"
    )
    source.add_argument("--fairseq-checkpoint", type=Path, help="a fairseq checkpoint (checkpoint_best.pt, ...)")
    parser.add_argument("--data", type=Path, help="with --hf-model: a UTF-8 text file, one training example a line")
    parser.add_argument(
        "--objective", choices=("mlm", "clm"), default="mlm", help="with --hf-model: masked or causal LM loss"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="with --hf-model: examples per batch")
    parser.add_argument("--max-length", type=int, default=128, help="with --hf-model: tokens per example")
    parser.add_argument("--fairseq-data", type=Path, help="with --fairseq-checkpoint: the binarised data directory")
    parser.add_argument("--subset", default="train", help="with --fairseq-checkpoint: the split the batches come from")
    parser.add_argument("--max-tokens", type=int, default=4096, help="with --fairseq-checkpoint: tokens per batch")
    parser.add_argument("--num-batches", type=int, default=4, help="size of the fixed subset of training batches")
    parser.add_argument(
        "--epsilon", type=float, default=DEFAULT_EPSILON, help="relative half-width of the box (the Knee paper: 1e-4)"
    )
    parser.add_argument(
        "--steps", type=int, default=DEFAULT_STEPS, help="projected ascent steps (the Knee paper's script: 1000)"
    )
    parser.add_argument(
        "--step-size", type=float, default=DEFAULT_STEP_SIZE, help="ascent step as a fraction of the box half-width"
    )
    parser.add_argument(
        "--eigen-iterations",
        type=int,
        default=DEFAULT_EIGEN_ITERATIONS,
        help="Lanczos steps for the top Hessian eigenvalue",
    )
    parser.add_argument("--no-sharpness", action="store_true", help="skip the eps-sharpness")
    parser.add_argument("--no-eigenvalue", action="store_true", help="skip the top Hessian eigenvalue")
    parser.add_argument(
        "--hvp-method",
        choices=("autograd", "finite_difference"),
        default="autograd",
        help="Hessian-vector products by double backward or finite differences",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the masking (HF), of the order the fairseq batches are drawn in, and of the random start in the box",
    )
    parser.add_argument("--output", type=Path, help="also write the JSON record to this file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved settings as JSON and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``knee-sharpness``: measure a checkpoint, print the JSON record (and write it to --output)."""
    parser = _parser()
    args = parser.parse_args(argv)
    for name in ("num_batches", "batch_size", "max_length", "max_tokens", "steps", "eigen_iterations"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.hf_model is not None and args.data is None:
        parser.error("--hf-model needs --data")
    if args.fairseq_checkpoint is not None and args.fairseq_data is None:
        parser.error("--fairseq-checkpoint needs --fairseq-data")
    if args.no_sharpness and args.no_eigenvalue:
        parser.error("--no-sharpness and --no-eigenvalue leave nothing to measure")
    if args.dry_run:
        sys.stdout.write(json.dumps({k: v if v is None else str(v) for k, v in vars(args).items()}) + "\n")
        return 0
    torch.manual_seed(args.seed)
    model, batches, loss_fn = _hf_batches(args) if args.hf_model is not None else _fairseq_batches(args)
    result = measure_sharpness(
        model,
        batches,
        loss_fn,
        epsilon=None if args.no_sharpness else args.epsilon,
        steps=args.steps,
        step_size=args.step_size,
        eigen_iterations=None if args.no_eigenvalue else args.eigen_iterations,
        hvp_method=args.hvp_method,
        seed=args.seed,
        progress=not args.no_progress,
    )
    record = {"checkpoint": str(args.hf_model or args.fairseq_checkpoint), **result.to_dict()}
    text = json.dumps(record, indent=2, allow_nan=True)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    sys.stdout.write(text + "\n")
    return 0 if math.isfinite(result.loss) else 1


if __name__ == "__main__":
    sys.exit(main())
