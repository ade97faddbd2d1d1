"""The training loop called directly (no Hydra), on small generated data on the CPU."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from sensreg.records.checkpoint import CheckpointError, load_checkpoint
from sensreg.run.config import ConfigError, TrainConfig
from sensreg.run.reevaluate import evaluate_checkpoint
from sensreg.run.lifecycle import train
from sensreg.method.sensitivity import VARIANTS

from conftest import config  # the small synthetic-data run every training test starts from


def metrics(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("model", ["lenet300", "lenet5"])
@pytest.mark.parametrize("sens", list(VARIANTS))
def test_every_variant_trains_on_every_model(tmp_path, model, sens):
    cfg = config(model={"name": model}, sens={"name": sens, "lam": 1e-3, "reduction": VARIANTS[sens].reductions[0]},
                 trainer={"epochs": 1}, prune={"name": "fixed", "threshold": 1e-2})
    summary = train(cfg, tmp_path)
    assert summary["status"] == "completed"
    assert summary["remaining_pct"] < 100.0  # the fixed threshold pruned something
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("model", ["lenet300", "lenet5"])
def test_a_per_sample_scaled_run_reports_its_insensitivity(tmp_path, model):
    cfg = config(model={"name": model},
                 sens={"name": "spec", "lam": 1e-3, "reduction": "sample", "scale": "max"},
                 prune={"name": "search", "patience": 0})
    summary = train(cfg, tmp_path / "spec")
    assert summary["status"] == "completed"
    for row in metrics(tmp_path / "spec"):
        mean, below = float(row["insens_mean"]), float(row["insens_below_half"])
        assert 0.0 <= mean < 1.0 and 0.0 < below <= 1.0  # S / max S: the most sensitive is protected
    train(config(sens={"name": "l2", "lam": 1e-3}), tmp_path / "l2")
    assert {(r["insens_mean"], r["insens_below_half"]) for r in metrics(tmp_path / "l2")} == {("1.0", "0.0")}
    train(config(sens={"name": "none"}), tmp_path / "none")
    assert {(r["insens_mean"], r["insens_below_half"]) for r in metrics(tmp_path / "none")} == {("", "")}


def test_the_epoch_line_shows_the_insensitivity_where_there_is_one():
    from dataclasses import replace

    from sensreg.run.loop import epoch_line
    from sensreg.records.summary import MetricsRow

    row = MetricsRow(epoch=3, eta=0.05, lam=1e-3, train_loss=0.1, val_loss=0.2, val_error=0.02,
                     remaining_pct=5.0, threshold=0.01, seconds=2.0)
    assert "insens" not in epoch_line(row)
    assert "insens 0.614 (<0.5: 37.5%)" in epoch_line(replace(row, insens_mean=0.6142, insens_below_half=0.375))


def test_pruned_weights_are_exactly_zero_in_the_saved_model(tmp_path):
    cfg = config(sens={"name": "spec", "lam": 1e-3}, trainer={"epochs": 3},
                 prune={"name": "fixed", "threshold": 5e-3, "start_epoch": 1, "every": 1})
    train(cfg, tmp_path)
    ckpt = load_checkpoint(tmp_path / "model.pt")
    pruned = 0
    for name, mask in ckpt["masks"].items():
        weights = ckpt["state_dict"][name]
        assert torch.equal(weights[~mask], torch.zeros_like(weights[~mask]))
        pruned += int((~mask).sum())
    assert pruned > 0


def test_no_pruning_after_stop_epoch(tmp_path):
    # Searches in epochs 1 and 2 only; epochs 3 and 4 fine-tune with the masks fixed, and the
    # shrink still pulls the kept weights but prunes nothing.
    cfg = config(sens={"name": "spec", "lam": 1e-3}, trainer={"epochs": 4},
                 prune={"name": "search", "patience": 0, "tolerance": 0.5, "stop_epoch": 2})
    summary = train(cfg, tmp_path)
    assert summary["thresholds"] and all(d["epoch"] <= 2 for d in summary["thresholds"])
    rows = metrics(tmp_path)
    assert float(rows[1]["remaining_pct"]) < 100.0
    assert rows[1]["remaining_pct"] == rows[2]["remaining_pct"] == rows[3]["remaining_pct"]


def test_search_prunes_within_tolerance(tmp_path):
    cfg = config(sens={"name": "spec", "lam": 1e-3}, trainer={"epochs": 3},
                 prune={"name": "search", "patience": 0, "tolerance": 0.1})
    summary = train(cfg, tmp_path)
    assert summary["thresholds"], "the search never ran"
    for decision in summary["thresholds"]:
        assert decision["val_loss_after"] <= 1.1 * decision["val_loss_before"] + 1e-12
        assert decision["remaining_pct_after"] < decision["remaining_pct_before"]


def test_dense_warmup_has_no_regularization_and_no_pruning(tmp_path):
    cfg = config(sens={"name": "l2", "lam": 1e-2}, trainer={"epochs": 3, "warmup_epochs": 2},
                 prune={"name": "fixed", "threshold": 1e-2})
    train(cfg, tmp_path)
    rows = metrics(tmp_path)
    assert [float(r["lam"]) for r in rows] == [0.0, 0.0, 1e-2]
    assert [float(r["remaining_pct"]) for r in rows][:2] == [100.0, 100.0]
    assert float(rows[2]["remaining_pct"]) < 100.0


def test_lambda_and_eta_schedules_reach_the_metrics(tmp_path):
    cfg = config(sens={"name": "spec", "lam": 1e-3}, trainer={"epochs": 4},
                 eta_schedule={"name": "step", "milestones": [2], "gamma": 0.5},
                 lam_schedule={"name": "cosine", "min_factor": 0.0}, prune={"name": "none"})
    train(cfg, tmp_path)
    rows = metrics(tmp_path)
    lr = cfg.optim.lr
    assert [float(r["eta"]) for r in rows] == pytest.approx([lr, lr, lr / 2, lr / 2])
    assert [float(r["lam"]) for r in rows] == pytest.approx([1e-3, 0.85355339e-3, 0.5e-3, 0.14644661e-3])


def test_lambda_follows_eta_by_default(tmp_path):
    cfg = config(sens={"name": "spec", "lam": 1e-3}, trainer={"epochs": 4, "warmup_epochs": 1},
                 eta_schedule={"name": "step", "milestones": [2], "gamma": 0.1}, prune={"name": "none"})
    assert cfg.lam_schedule.name == "follow_eta"
    train(cfg, tmp_path)
    rows = metrics(tmp_path)
    assert [float(r["eta"]) / cfg.optim.lr for r in rows] == pytest.approx([1, 1, 0.1, 0.1])
    assert [float(r["lam"]) for r in rows] == pytest.approx([0.0, 1e-3, 1e-4, 1e-4])  # dense warm-up first


def test_same_seed_same_result_and_seed_changes_it(tmp_path):
    cfg = config(sens={"name": "spec", "lam": 1e-3}, trainer={"deterministic": True})
    a, b = train(cfg, tmp_path / "a"), train(cfg, tmp_path / "b")
    other = config(sens={"name": "spec", "lam": 1e-3}, trainer={"deterministic": True, "seed": 1})
    c = train(other, tmp_path / "c")
    wa = load_checkpoint(tmp_path / "a" / "model.pt")["state_dict"]
    wb = load_checkpoint(tmp_path / "b" / "model.pt")["state_dict"]
    wc = load_checkpoint(tmp_path / "c" / "model.pt")["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    assert a["config_hash"] == b["config_hash"] == c["config_hash"]  # the hash ignores the seed


def test_init_checkpoint_is_the_starting_point(tmp_path):
    first = config(sens={"name": "none"}, prune={"name": "none"})
    train(first, tmp_path / "dense")
    # zero learning rate and no regularization: the run must end exactly where it started
    cont = config(sens={"name": "none"}, prune={"name": "none"}, optim={"lr": 1e-12},
                  trainer={"epochs": 1, "init": str(tmp_path / "dense" / "model.pt")})
    train(cont, tmp_path / "cont")
    a = evaluate_checkpoint(tmp_path / "dense" / "model.pt")
    b = evaluate_checkpoint(tmp_path / "cont" / "model.pt")
    assert a["test_error"] == b["test_error"]


def test_bad_init_checkpoint_is_refused_with_its_path(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match=str(bad)):
        train(config(trainer={"init": str(bad)}), tmp_path / "run")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"


def test_config_errors_name_every_problem():
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict({"sens": {"lam": -1, "name": "nope"}, "trainer": {"epochs": 0},
                               "model": {"name": "lenet7"}, "prune": {"bogus": 1}})
    text = str(err.value)
    for fragment in ("sens.lam=-1", "sens.name='nope'", "trainer.epochs=0", "model.name='lenet7'",
                     "lenet300", "bogus"):
        assert fragment in text


def test_the_divergence_watch_reads_the_loss_at_once_on_the_cpu():
    from sensreg.run.loop import DivergenceWatch

    watch = DivergenceWatch(torch.device("cpu"))
    assert watch.finite(torch.tensor(3.0)) and not watch.finite(torch.tensor(float("nan")))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_divergence_watch_on_a_gpu_reads_the_previous_look_without_waiting():
    from sensreg.run.loop import DivergenceWatch

    watch = DivergenceWatch(torch.device("cuda"))
    loss_sum = torch.tensor(1.0, device="cuda")
    assert watch.finite(loss_sum)  # nothing copied before: no verdict yet
    torch.cuda.synchronize()
    loss_sum.fill_(float("nan"))
    assert watch.finite(loss_sum)  # the copy of the last look, 1.0
    torch.cuda.synchronize()
    assert not watch.finite(loss_sum)  # this look reads the nan
    torch.cuda.set_sync_debug_mode("error")  # and a look never makes the host wait for the device
    try:
        watch.finite(loss_sum)
    finally:
        torch.cuda.set_sync_debug_mode(0)
