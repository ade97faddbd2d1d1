"""Shared fixtures and helpers.

Fixtures: tiny float64 networks and independent reference derivatives (``ref``, ``batch``), one
intra-op thread (``single_thread``). The reference derivatives are built the slow, obvious way (a
Python loop over samples and over output components, one scalar ``torch.autograd.grad`` at a time)
so that they share no code path with the batched implementations in ``sensreg.method.sensitivity``.

Helpers, imported by the test modules as ``from conftest import NAME`` (pytest puts tests/ on
``sys.path``): the repository and MNIST's place in it, the composed Hydra config, the small
synthetic-data TrainConfig, the ``sensreg`` command as a subprocess, run-folder comparisons, a
signal during the n-th training step, PNG checks, and the values a test is parametrized with.
They import sensreg where they are called, so that this module imports even while a part of
sensreg does not.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
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


def neuron_reference(model, x, output):
    """(1/C) sum_k mean_n |d o_{n,k} / d b_j| of each linear layer's unit j, from per-sample
    bias gradients (for a linear unit, the derivative by its pre-activation is that by its
    bias), given to the unit's row of the weight and to its bias."""
    params = list(model.parameters())
    with torch.no_grad():
        num_classes = model(x[:1]).shape[1]
    total = [torch.zeros_like(p) for p in params]
    for k in range(num_classes):
        for n in range(x.shape[0]):
            grads = torch.autograd.grad(_output(model(x[n:n + 1]), output)[0, k], params, allow_unused=True)
            for t, g in zip(total, grads):
                if g is not None:
                    t += g.abs()
    out = []
    for layer in (m for m in model.modules() if isinstance(m, nn.Linear)):
        unit = total[[id(p) for p in params].index(id(layer.bias))] / (num_classes * x.shape[0])
        out += [unit[:, None].expand_as(layer.weight).clone(), unit]
    return out


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
        neuron=neuron_reference,
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


# --- helpers shared by the test modules -------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
HAVE_MNIST = (REPO / "data" / "MNIST" / "raw").is_dir()
needs_mnist = pytest.mark.skipif(not HAVE_MNIST, reason="MNIST not in data/ (see README)")


def random_batch(n: int, shape: tuple[int, ...], classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` standard-normal float32 inputs of ``shape`` and labels drawn from ``range(classes)``,
    both from one generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def run_in_process(*args: str) -> int:
    """``sensreg ARGS`` in this process (with the ``in_process_cli`` fixture): its exit code."""
    from sensreg.commands.cli import main

    try:
        main(list(args))
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    return 0


@pytest.fixture
def in_process_cli(monkeypatch):
    """For tests that call ``sensreg.commands.cli.main`` in this process: the working folder made
    temporary by the caller, and the "sensreg" logger put back afterwards (the CLI gives it its
    own handlers and stops it propagating, which would hide its records from later tests'
    caplog)."""
    import logging

    logger = logging.getLogger("sensreg")
    before = (list(logger.handlers), logger.level, logger.propagate, logger.disabled)
    yield
    for handler in list(logger.handlers):
        if handler not in before[0]:
            logger.removeHandler(handler)
            handler.close()
    logger.setLevel(before[1])
    logger.propagate, logger.disabled = before[2], before[3]


def composed(*overrides: str) -> dict:
    """The shipped configs composed by Hydra (as `sensreg train OVERRIDES` does), as a plain dict."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module(config_module="sensreg.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


# The small synthetic-data run every training test starts from: 270 training, 30 validation and
# 100 test samples, two epochs of 6 steps, on the CPU.
SMALL_RUN = {
    "data": {"name": "synthetic", "num_train": 300, "num_test": 100},
    "trainer": {"epochs": 2, "batch_size": 50, "device": "cpu", "progress": False},
}


def train_config(base: dict, /, **sections: dict):
    """The TrainConfig of the raw config ``base`` with each section updated by ``sections``
    (``trainer={"epochs": 3}`` changes that key and keeps the others); ``base`` is not changed."""
    from sensreg.run.config import TrainConfig

    raw = copy.deepcopy(base)
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return TrainConfig.from_dict(raw)


def config(**sections: dict):
    """``SMALL_RUN`` with each section updated by ``sections`` (see ``train_config``)."""
    return train_config(SMALL_RUN, **sections)


def metrics_without_time(run: Path) -> list[dict]:
    """metrics.csv minus the seconds column (wall time differs between any two runs)."""
    with open(run / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def assert_same_run(a: Path, b: Path) -> None:
    """Two finished run folders hold the same model, masks, metrics (but the seconds), test
    error and threshold decisions."""
    from sensreg.records.checkpoint import load_checkpoint

    ma, mb = (load_checkpoint(p / "model.pt") for p in (a, b))
    for name, tensor in ma["state_dict"].items():
        assert torch.equal(tensor, mb["state_dict"][name]), name
    for name, mask in ma["masks"].items():
        assert torch.equal(mask, mb["masks"][name]), name
    assert metrics_without_time(a) == metrics_without_time(b)
    sa, sb = (json.loads((p / "summary.json").read_text()) for p in (a, b))
    assert sa["test_error"] == sb["test_error"] and sa["thresholds"] == sb["thresholds"]


def stop_at_step(monkeypatch, n: int, signum=signal.SIGINT) -> None:
    """Deliver a real signal to this process during the n-th training step (``TrainStep.__call__``
    patched through ``monkeypatch``, every argument passed on)."""
    from sensreg.run.loop import TrainStep

    original = TrainStep.__call__
    calls = {"n": 0}

    def step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            signal.raise_signal(signum)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TrainStep, "__call__", step)


# The arguments of a tiny CLI training run: synthetic data, two epochs, on the CPU.
# Seconds after which a subprocess or a wait is taken to hang. Far beyond what the slowest, most
# loaded machine takes, so that no test depends on the machine's speed: only a hang fails them.
HANG_S = 1800

TINY = ["~experiment", "data=synthetic", "data.num_train=400", "data.num_test=200", "trainer.epochs=2",
        "trainer.device=cpu", "trainer.batch_size=50"]


def sensreg(*args: str, cwd: Path, module: bool = False, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`sensreg ARGS` (``module``: `python -m sensreg ARGS`) run to its end in ``cwd``, its output
    captured as text. ``env``: the variables set on top of this process's environment; by default
    HYDRA_FULL_ERROR is emptied (Hydra's short error messages, as a user sees them)."""
    cmd = [sys.executable, "-m", "sensreg", *args] if module else ["sensreg", *args]
    extra = {"HYDRA_FULL_ERROR": ""} if env is None else env
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=HANG_S, env={**os.environ, **extra})


def run_dirs(root: Path) -> list[Path]:
    """The run folders (those with a summary.json) under ``root``, sorted."""
    return sorted(p.parent for p in root.rglob("summary.json"))


def assert_png(path: Path, min_bytes: int = 10_000) -> None:
    """``path`` is a PNG file of more than ``min_bytes`` bytes (a plot with something drawn in it)."""
    from sensreg.records.plots import PNG_SIGNATURE

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > min_bytes, (path, len(data))


def parametrized(test, argname: str) -> list:
    """The values of ``argname`` that ``test`` is parametrized with by its own
    ``@pytest.mark.parametrize`` (one entry of each tuple where it names several arguments)."""
    for mark in getattr(test, "pytestmark", []):
        if mark.name != "parametrize":
            continue
        names = mark.args[0]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        if argname in names:
            i = names.index(argname)
            rows = [v.values if hasattr(v, "marks") else v if len(names) > 1 else (v,)  # pytest.param or plain
                    for v in mark.args[1]]
            return [row[i] for row in rows]
    raise LookupError(f"{test.__name__} is not parametrized over {argname!r}")
