"""Shared fixtures: tiny float64 networks and independent reference derivatives.

The reference derivatives are built the slow, obvious way (a Python loop over samples and over
output components, one scalar ``torch.autograd.grad`` at a time) so that they share no code path
with the batched implementations in ``sensreg.sensitivity``.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn


def _mlp(n_in: int = 5, hidden: int = 6, n_out: int = 4, act: str = "tanh", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    activation = {"tanh": nn.Tanh, "relu": nn.ReLU}[act]()
    return nn.Sequential(nn.Linear(n_in, hidden), activation, nn.Linear(hidden, n_out)).double()


def _output(logits: torch.Tensor, output: str) -> torch.Tensor:
    return logits.softmax(dim=1) if output == "probs" else logits


def _per_sample_grads(model: nn.Module, x: torch.Tensor, scalar_of_sample) -> list[torch.Tensor]:
    """sum_n d scalar_of_sample(o_n, n) / d params / N, each sample in its own forward pass."""
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for n in range(x.shape[0]):
        logits_n = model(x[n:n + 1])
        value = scalar_of_sample(logits_n, n)
        assert value.dim() == 0
        grads = torch.autograd.grad(value, params, allow_unused=True)
        for t, g in zip(total, grads):
            if g is not None:
                t += g
    return [t / x.shape[0] for t in total]


def mean_output_jacobian(model: nn.Module, x: torch.Tensor, output: str) -> list[torch.Tensor]:
    """d/dw mean_n o_{n,k} for every class k: one tensor per parameter, shaped (C, *p.shape)."""
    with torch.no_grad():
        num_classes = model(x[:1]).shape[1]
    per_class = [
        _per_sample_grads(model, x, lambda z, n, k=k: _output(z, output)[0, k])
        for k in range(num_classes)
    ]
    return [torch.stack([per_class[k][i] for k in range(num_classes)])
            for i in range(len(per_class[0]))]


def target_derivative(model: nn.Module, x: torch.Tensor, y: torch.Tensor, output: str) -> list[torch.Tensor]:
    """d/dw mean_n o_{n, y_n} (signed)."""
    return _per_sample_grads(model, x, lambda z, n: _output(z, output)[0, int(y[n])])


def loss_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """dL/dw for the mean cross-entropy, from per-sample losses."""
    return _per_sample_grads(model, x, lambda z, n: F.cross_entropy(z, y[n:n + 1]))


def spec_reference(model, x, y, output):
    return [g.abs() for g in target_derivative(model, x, y, output)]


def unspec_reference(model, x, output):
    return [j.abs().mean(dim=0) for j in mean_output_jacobian(model, x, output)]


@pytest.fixture
def ref() -> SimpleNamespace:
    """Independent reference computations (see the module docstring)."""
    return SimpleNamespace(
        mlp=_mlp,
        mean_output_jacobian=mean_output_jacobian,
        target_derivative=target_derivative,
        loss_gradient=loss_gradient,
        spec=spec_reference,
        unspec=unspec_reference,
    )


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Six float64 samples with 5 features and targets in 4 classes (every class present)."""
    g = torch.Generator().manual_seed(1)
    x = 1.5 * torch.randn(6, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 1, 2])
    return x, y


@pytest.fixture
def single_thread():
    """One intra-op thread for the duration of a test: on tiny tensors, OpenMP threads only cost
    (on a busy 2-core machine a 32x6 matmul went from ~20 us to ~15 ms with two threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
