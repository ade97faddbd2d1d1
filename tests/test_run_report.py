"""`sensreg report RUN_DIR`: a real tiny run (trained in-process), and unfinished or damaged runs."""

from __future__ import annotations

import functools
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from sensreg.checkpoint import load_checkpoint
from sensreg.cli import main
from sensreg.config import TrainConfig
from sensreg.data import batches, load_dataset
from sensreg.models import build_model
from sensreg.report import ReportError, _sensitivity, write_report
from sensreg.sensitivity import specific
from sensreg.run import train

import conftest

PLOTS = ("epochs.png", "thresholds.png", "layers.png", "weights_hist.png", "sensitivity_hist.png",
         "insensitivity_hist.png")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """Two epochs on synthetic data with a threshold search after each (to about 9 % remaining)."""
    run = tmp_path_factory.mktemp("runs") / "tiny_spec"
    raw = {"data": {"name": "synthetic", "num_train": 400, "num_test": 100},
           "sens": {"name": "spec", "lam": 1e-3}, "prune": {"tolerance": 0.2, "patience": 0},
           "trainer": {"epochs": 2, "batch_size": 50, "device": "cpu", "progress": False}}
    cfg = TrainConfig.from_dict(raw)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(cfg, run)
    finally:
        torch.set_num_threads(threads)
    # As `sensreg train` does: the resolved config beside the run (JSON first: no tuples in YAML).
    (run / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(cfg.to_dict()))))
    return run


def copy_run(run: Path, dest: Path, **config_changes) -> Path:
    shutil.copytree(run, dest)
    config = yaml.safe_load((dest / "config.yaml").read_text())
    for section, values in config_changes.items():
        config[section] = {**config[section], **values}
    (dest / "config.yaml").write_text(yaml.safe_dump(config))
    for f in dest.glob("*.png"):
        f.unlink()
    return dest


assert_png = functools.partial(conftest.assert_png, min_bytes=8_000)  # the report's plots are smaller


def test_report_of_a_finished_run(finished_run, tmp_path):
    summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["thresholds"] and 0 < summary["remaining_pct"] < 100, "the fixture should prune some"
    result = write_report(finished_run, out_dir=tmp_path, batches=3)
    assert result.path == tmp_path / "report.md" and not (finished_run / "report.md").exists()
    assert sorted(p.name for p in result.images) == sorted(PLOTS)
    for name in PLOTS:
        assert_png(tmp_path / name)

    md = result.path.read_text()
    assert f"| {100 * summary['test_error']:.2f} % |" in md
    assert f"{summary['remaining_pct']:.3f} %" in md
    # one table row per epoch, per threshold decision and per layer
    assert len(re.findall(r"^\| [12] \| 0\.001 \|", md, flags=re.M)) == 2
    decisions = md.split("## Threshold decisions")[1].split("##")[0]
    assert len(re.findall(r"^\| \d+ \| [\d.e-]+ \| [\d,]+ \|", decisions, flags=re.M)) == len(summary["thresholds"])
    for layer in summary["sparsity"]["layers"]:
        assert f"| {layer['name']} |" in md
    # the |w| histogram covers exactly the parameters the run kept
    kept = summary["sparsity"]["prunable"]["nonzero"]
    assert f"{kept:,} kept prunable parameters" in md
    assert "Sensitivity `spec` of the final model, mean over 3 training batches" in md
    for name in PLOTS:
        assert f"({name})" in md
    assert "## Notes" not in md


def test_sensitivity_is_the_runs_own_variant_on_its_training_batches(finished_run):
    """One batch: the report's S equals sensitivity.specific on the first shuffled batch."""
    ckpt = load_checkpoint(finished_run / "model.pt")
    cfg = yaml.safe_load((finished_run / "config.yaml").read_text())
    model = build_model(ckpt["model_name"], ckpt["num_classes"], tuple(ckpt["input_shape"]))
    model.load_state_dict(ckpt["state_dict"])
    got, insens, variant = _sensitivity(model, cfg, 1, None)
    assert variant == "spec"

    data = load_dataset("synthetic", num_train=400, num_test=100)
    x, y = next(batches(data.train, 50, shuffle=True, generator=torch.Generator().manual_seed(0)))
    params = list(model.parameters())
    expected = specific(model(x), y, params, "logits")
    for (name, s), e in zip(got.items(), expected):
        torch.testing.assert_close(s, e, msg=name)
        torch.testing.assert_close(insens[name], (1 - e).clamp(min=0), msg=name)  # sens.scale=none


def test_insensitivity_is_per_sample_and_scaled_as_the_run_trained(finished_run, tmp_path):
    """sens.reduction=sample, sens.scale=gamma: the report's insensitivity per tensor is
    max(0, 1 - gamma * mean_n |d o_n/dw|) on the first shuffled batch, and its table and plot show it."""
    from sensreg.per_sample import LayerTape
    from sensreg.sensitivity import get_variant, per_sample

    run = copy_run(finished_run, tmp_path / "run", sens={"name": "spec", "reduction": "sample", "scale": "gamma",
                                                         "gamma": 50.0})
    ckpt = load_checkpoint(run / "model.pt")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    model = build_model(ckpt["model_name"], ckpt["num_classes"], tuple(ckpt["input_shape"]))
    model.load_state_dict(ckpt["state_dict"])
    _, insens, _ = _sensitivity(model, cfg, 1, None)
    data = load_dataset("synthetic", num_train=400, num_test=100)
    x, y = next(batches(data.train, 50, shuffle=True, generator=torch.Generator().manual_seed(0)))
    params = list(model.parameters())
    tape = LayerTape(model, params)
    with tape.record():
        logits = model(x)
    expected = per_sample(get_variant("spec"), tape, logits, y)
    for (name, bar), e in zip(insens.items(), expected):
        torch.testing.assert_close(bar, (1 - 50.0 * e).clamp(min=0), msg=name)
    result = write_report(run, batches=1)
    assert "insensitivity_hist.png" in {p.name for p in result.images}
    assert_png(run / "insensitivity_hist.png")
    text = result.path.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| fc1.weight |") and "%" in line
               and line.count("|") == 6)
    masks = ckpt["masks"]["fc1.weight"].bool()
    kept = insens["fc1.weight"][masks]
    assert f"{100 * float((kept < 0.5).double().mean()):.1f} %" in row


def test_missing_dataset_leaves_out_only_the_sensitivity_plots(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run", data={"name": "mnist", "root": str(tmp_path / "no-data")})
    result = write_report(run, batches=2)
    names = {p.name for p in result.images}
    assert names == set(PLOTS) - {"sensitivity_hist.png", "insensitivity_hist.png"}
    assert not (run / "sensitivity_hist.png").exists()
    md = result.path.read_text()
    assert "## Notes" in md and "dataset could not be loaded" in md and "--data-root" in md


def test_variant_without_sensitivity_is_a_note(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run", sens={"name": "l2"})
    result = write_report(run)
    assert {"sensitivity_hist.png", "insensitivity_hist.png"}.isdisjoint(p.name for p in result.images)
    assert "'l2' has no sensitivity" in result.path.read_text()


def test_running_run_gets_a_report_of_what_it_has(tmp_path):
    run = tmp_path / "running"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"status": "running", "model": "lenet300", "data": "mnist",
                                                  "sens": "spec", "seed": 0, "config_hash": "abc"}))
    (run / "config.yaml").write_text(yaml.safe_dump({"sens": {"name": "spec", "lam": 1e-4},
                                                     "trainer": {"epochs": 20, "seed": 0}}))
    (run / "metrics.csv").write_text(
        "epoch,eta,lam,train_loss,val_loss,val_error,remaining_pct,threshold,seconds\n"
        "1,0.05,0.0001,0.3,0.2,0.05,40.0,0.02,1.5\n2,0.05,0.0001,0.2,0.15,0.04,20.0,0.03,1.5\n"
        "3,0.05,0.00")  # the third line is being written
    result = write_report(run)
    assert [p.name for p in result.images] == ["epochs.png"]
    assert_png(run / "epochs.png")
    md = result.path.read_text()
    assert "status **running**" in md and "No final result yet" in md and "2 epoch(s)" in md
    assert "no model.pt" in md


def test_corrupt_summary_is_a_note_not_a_crash(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    (run / "summary.json").write_text('{"status": "compl')
    result = write_report(run, batches=0)
    md = result.path.read_text()
    assert "summary.json cannot be read" in md
    assert {"epochs.png", "weights_hist.png"} <= {p.name for p in result.images}


def test_a_garbled_metrics_file_of_a_finished_run_is_called_damaged_not_unstarted(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    (run / "metrics.csv").write_bytes(b"epoch,eta\n1,xx,\x00\x01garbage\n")
    md = write_report(run, batches=0).path.read_text()
    assert "no readable epoch row, though summary.json reports" in md and "damaged" in md
    assert "no epoch finished yet" not in md


def test_not_a_run_folder(tmp_path):
    with pytest.raises(ReportError, match="is not a folder"):
        write_report(tmp_path / "nope")
    with pytest.raises(ReportError, match="is not a run folder"):
        write_report(tmp_path)


def test_cli_report(finished_run, tmp_path, capsys):
    main(["report", str(finished_run), "--out", str(tmp_path), "--batches", "1"])
    assert "wrote" in capsys.readouterr().out and (tmp_path / "report.md").is_file()
    for args, message in ((["report", str(tmp_path / "nope")], "is not a folder"),
                          (["report", str(finished_run), "--batches", "-1"], "--batches"),
                          (["report"], "required")):
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
