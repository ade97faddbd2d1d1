"""The pruning-schedule hooks as the training loop calls them: ``after_step`` after every
training step for a schedule that asks for it (``steps``), never in the dense warm-up, and a
schedule's own state carried through a stop and resume."""

from __future__ import annotations

import signal

import pytest
import torch

from sensreg import prune_schedules
from sensreg.checkpoint import load_checkpoint
from sensreg.config import TrainConfig
from sensreg.interrupt import Interrupted
from sensreg.prune_schedules import PruneSchedule
from sensreg.run import resume_state, train
from sensreg.train import TrainStep

from conftest import metrics_without_time

BATCHES = 6  # 300 training samples (of 330, 10 % held out) in batches of 50


class RisingThreshold(PruneSchedule):
    """Prunes |w| below 2e-4 × (the number of steps so far) after every step: the result
    depends on every call, in order, and on the count carried in its state."""

    name = "rising"
    steps = True
    STATE = PruneSchedule.STATE + ("count",)
    calls: list[tuple[int, int]] = []  # (epoch, batch) of every after_step, in this process

    def __init__(self, prune_cfg, epochs):
        super().__init__(prune_cfg, epochs)
        self.count = 0

    def after_step(self, epoch, batch, ctx):
        RisingThreshold.calls.append((epoch, batch))
        self.count += 1
        if ctx.masks.prune_below_(2e-4 * self.count, ctx.optimizer):
            self.threshold = 2e-4 * self.count


@pytest.fixture
def rising(monkeypatch):
    monkeypatch.setitem(prune_schedules.PRUNE_SCHEDULES, "rising", RisingThreshold)
    RisingThreshold.calls = []
    return RisingThreshold


def config(**trainer) -> TrainConfig:
    return TrainConfig.from_dict({
        "data": {"name": "synthetic", "num_train": 330, "num_test": 100, "noise": 3.0},
        "sens": {"name": "spec", "lam": 1e-3},
        "prune": {"name": "rising"},
        "trainer": {"epochs": 3, "batch_size": 50, "device": "cpu", "deterministic": True,
                    "progress": False, **trainer},
    })


def test_after_step_follows_every_step_after_the_warm_up(tmp_path, rising):
    summary = train(config(warmup_epochs=1), tmp_path)
    assert summary["status"] == "completed"
    assert rising.calls == [(e, b) for e in (2, 3) for b in range(BATCHES)]  # none in the dense epoch 1
    thresholds = [float(r["threshold"]) for r in metrics_without_time(tmp_path)]
    assert thresholds[0] == 0.0 and thresholds[2] == pytest.approx(2e-4 * 2 * BATCHES)
    ckpt = load_checkpoint(tmp_path / "model.pt")
    for name, mask in ckpt["masks"].items():
        assert (ckpt["state_dict"][name][~mask] == 0).all(), name


def test_a_step_schedule_resumes_exactly(tmp_path, rising, monkeypatch):
    cfg = config()
    train(cfg, tmp_path / "full")
    original = TrainStep.__call__
    seen = {"n": 0}

    def stop_in_epoch_2(self, *args, **kwargs):
        seen["n"] += 1
        if seen["n"] == BATCHES + 3:
            signal.raise_signal(signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TrainStep, "__call__", stop_in_epoch_2)
    with pytest.raises(Interrupted):
        train(cfg, tmp_path / "cut")
    monkeypatch.setattr(TrainStep, "__call__", original)
    train(cfg, tmp_path / "cut", resume_state(cfg, tmp_path / "cut" / "last.pt"))

    full, cut = (load_checkpoint(tmp_path / r / "model.pt") for r in ("full", "cut"))
    for name, tensor in full["state_dict"].items():
        assert torch.equal(tensor, cut["state_dict"][name]), name
    for name, mask in full["masks"].items():
        assert torch.equal(mask, cut["masks"][name]), name
    assert metrics_without_time(tmp_path / "full") == metrics_without_time(tmp_path / "cut")
