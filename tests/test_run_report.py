"""`sensreg report RUN_DIR`: a real tiny run (trained in-process), and unfinished or damaged runs."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from sensreg.records.checkpoint import load_checkpoint
from sensreg.commands.cli import main
from sensreg.run.config import TrainConfig
from sensreg.data import batches, load_dataset
from sensreg.models import build_model
from sensreg.records import plots
from sensreg.records.report import ReportError, _sensitivity, eta_changes, pruning_window, write_report
from sensreg.method.sensitivity import VARIANTS, Pass
from sensreg.run.lifecycle import train

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


@contextlib.contextmanager
def run_log():
    """The lines the run logs (sensreg's logger, INFO and up), whatever logging set up before."""
    logger, lines = logging.getLogger("sensreg"), []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def train_tiny(run: Path, raw: dict) -> list[str]:
    """Train in this process, one thread, and write config.yaml as `sensreg train` does; the log lines."""
    cfg = TrainConfig.from_dict(raw)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with run_log() as lines:
            train(cfg, run)
    finally:
        torch.set_num_threads(threads)
    (run / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(cfg.to_dict()))))
    return lines


@pytest.fixture(scope="module")
def gmp_run(tmp_path_factory) -> tuple[Path, list[str]]:
    """Three epochs of gradual pruning at every step of the first two (16 decisions), η divided by
    10 after the second; the run folder and its log lines."""
    run = tmp_path_factory.mktemp("runs") / "tiny_gmp"
    lines = train_tiny(run, {
        "data": {"name": "synthetic", "num_train": 400, "num_test": 100},
        "sens": {"name": "spec", "lam": 1e-3}, "prune": {"name": "gmp", "target": 0.9, "every": 1, "stop_epoch": 2},
        "eta_schedule": {"name": "step", "milestones": [2], "gamma": 0.1},
        "trainer": {"epochs": 3, "batch_size": 50, "device": "cpu", "progress": False}})
    return run, lines


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
    structure = summary["structure"]  # the compacted network, as the run recorded it
    assert f"compacted network: {structure['params']['compact']:,} parameters" in md
    assert "units kept: input " in md
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
    expected = VARIANTS["spec"].of_batch(Pass(model(x), y, params, []))
    for (name, s), e in zip(got.items(), expected):
        torch.testing.assert_close(s, e, msg=name)
        torch.testing.assert_close(insens[name], (1 - e).clamp(min=0), msg=name)  # sens.scale=none


def test_insensitivity_is_per_sample_and_scaled_as_the_run_trained(finished_run, tmp_path):
    """sens.reduction=sample, sens.scale=gamma: the report's insensitivity per tensor is
    max(0, 1 - gamma * mean_n |d o_n/dw|) on the first shuffled batch, and its table and plot show it."""
    from sensreg.method.per_sample import LayerTape
    from sensreg.method.sensitivity import Pass, get_variant

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
    expected = get_variant("spec").per_sample(Pass(logits, y, [], [], tape=tape))
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


# --- what a researcher reads: the decisions of a gmp run, top-5 error, the run folder ----------

def test_gmp_report_condenses_its_decisions_into_a_short_table(gmp_run, tmp_path):
    run, _ = gmp_run
    decisions = json.loads((run / "summary.json").read_text())["thresholds"]
    assert len(decisions) > 12, "the fixture should make many decisions"
    md = write_report(run, out_dir=tmp_path, batches=0).path.read_text()
    section = md.split("## Threshold decisions")[1].split("\n## ")[0]
    rows = re.findall(r"^\| (\d+) \| \d+ \| ([\d,]+) \| [\d.]+ % \|", section, flags=re.M)
    assert 2 < len(rows) <= 10
    assert f"{len(decisions)} pruning decisions in all" in section
    # the first and the last, by number and step
    assert rows[0] == ("1", f"{decisions[0]['step']:,}")
    assert rows[-1] == (str(len(decisions)), f"{decisions[-1]['step']:,}")
    assert "val loss" not in section  # gmp decides between validation passes


def test_a_few_decisions_are_all_listed(finished_run, tmp_path):
    md = write_report(finished_run, out_dir=tmp_path, batches=0).path.read_text()
    assert "pruning decisions in all" not in md


def test_epochs_plot_marks_the_pruning_window_and_eta_drops_of_the_run(gmp_run, tmp_path, monkeypatch):
    run, _ = gmp_run
    decisions = json.loads((run / "summary.json").read_text())["thresholds"]
    rows = [line.split(",") for line in (run / "metrics.csv").read_text().splitlines()]
    etas = [float(r[rows[0].index("eta")]) for r in rows[1:]]
    # read from what the run did: pruned in epochs 1 and 2, η ×0.1 from epoch 3
    assert pruning_window(decisions) == (0, 2)
    assert [(e, pytest.approx(f)) for e, f in eta_changes([{"epoch": i + 1, "eta": v} for i, v in enumerate(etas)])] \
        == [(3, 0.1)]
    drawn = {}
    real = plots.epochs_plot
    monkeypatch.setattr(plots, "epochs_plot", lambda *a, **k: (drawn.update(k), real(*a, **k))[1])
    write_report(run, out_dir=tmp_path, batches=0)
    assert drawn["prune_window"] == (0, 2)
    assert [(e, round(f, 6)) for e, f in drawn["eta_changes"]] == [(3, 0.1)]
    assert_png(tmp_path / "epochs.png")


def test_pruning_window_and_eta_changes_from_the_records():
    assert pruning_window([]) is None
    assert pruning_window([{"epoch": 5}, {"epoch": 3}, {"epoch": 9}]) == (2, 9)
    assert eta_changes([{"epoch": 1, "eta": 0.1}, {"epoch": 2, "eta": 0.1}, {"epoch": 3, "eta": 0.05},
                        {"epoch": 4}, {"epoch": 5, "eta": 0.05}]) == [(3, 0.5)]


def test_top5_error_is_left_out_for_ten_classes(gmp_run, finished_run, tmp_path):
    run, lines = gmp_run
    assert json.loads((run / "summary.json").read_text())["test_top5_error"] is not None  # still recorded
    assert "top-5" not in write_report(run, out_dir=tmp_path / "a", batches=0).path.read_text()
    assert "top-5" not in write_report(finished_run, out_dir=tmp_path / "b", batches=0).path.read_text()
    final = next(line for line in lines if line.startswith("test error"))
    assert "top-5" not in final


def test_top5_error_is_shown_for_a_hundred_classes(tmp_path):
    run = tmp_path / "c100"
    lines = train_tiny(run, {
        "data": {"name": "synthetic", "num_train": 400, "num_test": 100, "num_classes": 100},
        "sens": {"name": "spec", "lam": 1e-3}, "prune": {"name": "none"},
        "trainer": {"epochs": 1, "batch_size": 50, "device": "cpu", "progress": False}})
    top5 = json.loads((run / "summary.json").read_text())["test_top5_error"]
    final = next(line for line in lines if line.startswith("test error"))
    assert f"(top-5 {100 * top5:.2f}%)" in final
    md = write_report(run, batches=0).path.read_text()
    assert "| top-5 error |" in md and f"| {100 * top5:.2f} % |" in md


def test_the_run_ends_by_naming_its_folder(gmp_run):
    run, lines = gmp_run
    assert lines[-1] == f"run folder: {run}"
