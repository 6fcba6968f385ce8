"""knee_plugins.sharpness against closed forms (a quadratic, logistic regression) and on real hosts."""

import json
import math

import pytest
import torch
from tiny_bert import save_tiny_bert
from torch import nn

from knee_plugins.sharpness import (
    epsilon_sharpness,
    hf_loss_fn,
    main,
    measure_sharpness,
    top_hessian_eigenvalue,
)


class Quadratic(nn.Module):
    """f(θ) = ½ (θ − c)ᵀ A (θ − c) + f0, its minimum at θ = c; float64 so that 1e-4 boxes resolve."""

    def __init__(self, matrix: torch.Tensor, centre: torch.Tensor, floor: float) -> None:
        super().__init__()
        self.theta = nn.Parameter(centre.clone())
        self.register_buffer("matrix", matrix)
        self.register_buffer("centre", centre)
        self.floor = floor

    def forward(self) -> torch.Tensor:
        d = self.theta - self.centre
        return 0.5 * d @ self.matrix @ d + self.floor


def quadratic_loss(model, batch):
    return model()


def test_eps_sharpness_of_a_diagonal_quadratic_is_its_box_corner():
    # The maximum of ½ Σ a_i y_i² over |y_i| ≤ ε(|c_i| + 1) is at a corner: ½ Σ a_i ε²(|c_i| + 1)².
    diagonal = torch.tensor([4.0, 1.0, 0.25, 9.0], dtype=torch.float64)
    centre = torch.tensor([1.5, -2.0, 0.0, 0.3], dtype=torch.float64)
    floor, epsilon = 0.7, 1e-4
    model = Quadratic(torch.diag(diagonal), centre, floor)
    expected_rise = 0.5 * float((diagonal * (epsilon * (centre.abs() + 1)) ** 2).sum())
    expected = 100 * expected_rise / (1 + floor)
    sharpness, loss, max_loss = epsilon_sharpness(
        model, [None], quadratic_loss, epsilon=epsilon, steps=300, progress=False
    )
    assert loss == pytest.approx(floor, rel=1e-12)
    assert max_loss - floor == pytest.approx(expected_rise, rel=1e-9)
    assert sharpness == pytest.approx(expected, rel=1e-9)
    assert torch.equal(model.theta.detach(), centre)


def test_eps_sharpness_grows_with_the_curvature_and_the_box():
    centre = torch.zeros(3, dtype=torch.float64)
    flat = Quadratic(torch.eye(3, dtype=torch.float64), centre, 0.0)
    sharp = Quadratic(10 * torch.eye(3, dtype=torch.float64), centre, 0.0)
    kwargs = dict(steps=200, progress=False)
    assert epsilon_sharpness(sharp, [None], quadratic_loss, **kwargs)[0] == pytest.approx(
        10 * epsilon_sharpness(flat, [None], quadratic_loss, **kwargs)[0], rel=1e-9
    )
    small = epsilon_sharpness(flat, [None], quadratic_loss, epsilon=1e-4, **kwargs)[0]
    large = epsilon_sharpness(flat, [None], quadratic_loss, epsilon=1e-3, **kwargs)[0]
    assert large == pytest.approx(100 * small, rel=1e-9)  # ε² scaling at a minimum with c = 0


def test_top_hessian_eigenvalue_of_a_quadratic_is_its_matrix_largest_eigenvalue():
    generator = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=generator, dtype=torch.float64))
    eigenvalues = torch.tensor([7.5, 3, 2.9, 1, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.01, 0], dtype=torch.float64)
    matrix = q @ torch.diag(eigenvalues) @ q.T
    model = Quadratic(matrix, torch.randn(12, generator=generator, dtype=torch.float64), 1.0)
    assert top_hessian_eigenvalue(model, [None], quadratic_loss) == pytest.approx(7.5, rel=1e-8)


def logistic_regression(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 5, generator=generator, dtype=torch.float64) * torch.tensor(
        [3.0, 1, 1, 0.5, 0.2], dtype=torch.float64
    )
    y = (torch.rand(64, generator=generator, dtype=torch.float64) < 0.5).to(torch.float64)
    model = nn.Linear(5, 1).to(torch.float64)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, 5, generator=generator, dtype=torch.float64) * 0.3)
        model.bias.fill_(0.1)
    return model, x, y


def logistic_loss(model, batch):
    x, y = batch
    return nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(-1), y)


def test_top_hessian_eigenvalue_of_logistic_regression_is_that_of_xt_d_x_over_n():
    model, x, y = logistic_regression()
    batches = [(x[:32], y[:32]), (x[32:], y[32:])]  # equal halves: the mean of batch means is the mean
    with torch.no_grad():
        p = torch.sigmoid(model(x).squeeze(-1))
    features = torch.cat([x, torch.ones(64, 1, dtype=torch.float64)], dim=1)  # (w, b) in Linear's order
    hessian = features.T @ torch.diag(p * (1 - p)) @ features / 64
    expected = float(torch.linalg.eigvalsh(hessian).max())
    assert top_hessian_eigenvalue(model, batches, logistic_loss) == pytest.approx(expected, rel=1e-8)


def test_eps_sharpness_of_logistic_regression_lies_between_the_box_bounds():
    # Any point of the box is a lower bound on the maximum; the first-order bound Σ|g_i| w_i plus
    # ½ λ_max Σ w_i² (the loss is convex) is an upper bound.
    model, x, y = logistic_regression(1)
    batches = [(x, y)]
    epsilon = 1e-3
    params = list(model.parameters())
    loss = logistic_loss(model, batches[0])
    grads = torch.autograd.grad(loss, params)
    widths = [epsilon * (p.detach().abs() + 1) for p in params]
    linear = sum(float((g.abs() * w).sum()) for g, w in zip(grads, widths, strict=True))
    lam = top_hessian_eigenvalue(model, batches, logistic_loss)
    upper = linear + 0.5 * lam * sum(float((w**2).sum()) for w in widths)
    sharpness, f, max_loss = epsilon_sharpness(
        model, batches, logistic_loss, epsilon=epsilon, steps=200, progress=False
    )
    assert linear * 0.99 <= max_loss - f <= upper * 1.0001
    assert sharpness == pytest.approx(100 * (max_loss - f) / (1 + f))


def test_the_model_is_restored_exactly_mode_weights_and_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.BatchNorm1d(8), nn.Linear(8, 1))
    model.train()
    model[2].eval()  # a mixed train/eval state must come back as it was
    batch = (torch.randn(16, 4), torch.randn(16, 1))
    nn.functional.mse_loss(model(batch[0]), batch[1]).backward()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    modes = [m.training for m in model.modules()]

    def loss_fn(m, b):
        return nn.functional.mse_loss(m(b[0]), b[1])

    result = measure_sharpness(model, [batch], loss_fn, steps=20, eigen_iterations=5, progress=False)
    assert result.sharpness > 0 and result.top_eigenvalue > 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters(), strict=True))
    assert [m.training for m in model.modules()] == modes


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(epsilon=0), "epsilon"),
        (dict(steps=0), "steps"),
        (dict(step_size=-1.0), "step_size"),
    ],
)
def test_bad_arguments_raise_value_errors_that_name_them(kwargs, message):
    model = Quadratic(torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64), 0.0)
    with pytest.raises(ValueError, match=message):
        epsilon_sharpness(model, [None], quadratic_loss, progress=False, **kwargs)
    with pytest.raises(ValueError, match="batches"):
        epsilon_sharpness(model, [], quadratic_loss, progress=False)
    with pytest.raises(ValueError, match="iterations"):
        top_hessian_eigenvalue(model, [None], quadratic_loss, iterations=0)


@pytest.fixture(scope="module")
def tiny_mlm_dir(tmp_path_factory):
    """A 1-layer BERT masked LM with the real MiniLM tokenizer."""
    from transformers import BertForMaskedLM

    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert-mlm"), BertForMaskedLM)


TEXT = [
    "In the beginning God created the heaven and the earth.",
    "And the earth was without form, and void; and darkness was upon the face of the deep.",
    "And God said, Let there be light: and there was light.",
    "And God saw the light, that it was good: and God divided the light from the darkness.",
] * 4


@pytest.mark.slow
def test_cli_measures_a_huggingface_model_dir(tmp_path, tiny_mlm_dir, capsys):
    data = tmp_path / "train.txt"
    data.write_text("\n".join(TEXT) + "\n")
    output = tmp_path / "sharpness.json"
    argv = ["--hf-model", str(tiny_mlm_dir), "--data", str(data), "--num-batches", "2", "--batch-size", "4"]
    argv += ["--max-length", "24", "--steps", "10", "--eigen-iterations", "4", "--output", str(output), "--no-progress"]
    assert main(argv) == 0
    record = json.loads(output.read_text())
    assert record == json.loads(capsys.readouterr().out)
    assert record["num_batches"] == 2 and record["epsilon"] == 1e-4 and record["steps"] == 10
    assert record["max_loss"] > record["loss"] > 0 and record["sharpness"] > 0
    assert math.isfinite(record["top_eigenvalue"])


@pytest.mark.slow
def test_api_on_an_accelerate_prepared_hf_model_leaves_it_as_it_was(tiny_mlm_dir):
    from accelerate import Accelerator
    from transformers import AutoTokenizer, BertForMaskedLM, DataCollatorForLanguageModeling

    tokenizer = AutoTokenizer.from_pretrained(tiny_mlm_dir)
    collator = DataCollatorForLanguageModeling(tokenizer, seed=0)
    batch = dict(collator([tokenizer(line, max_length=24, truncation=True) for line in TEXT[:4]]))
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(BertForMaskedLM.from_pretrained(tiny_mlm_dir, attn_implementation="eager"))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = measure_sharpness(
        accelerator.unwrap_model(model), [batch], hf_loss_fn, steps=5, eigen_iterations=3, progress=False
    )
    assert result.sharpness > 0 and math.isfinite(result.top_eigenvalue)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_cli_rejects_bad_input():
    with pytest.raises(SystemExit):
        main(["--hf-model", "x"])  # no --data
    with pytest.raises(SystemExit):
        main(["--hf-model", "x", "--data", "y", "--num-batches", "0"])
