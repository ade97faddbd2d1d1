"""logger=tensorboard and logger=mlflow (sensreg.run.trackers), read back with each tool's own
reader: TensorBoard's EventAccumulator and MLflow's client."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest

from conftest import metrics_without_time, run_in_process, stop_at_step

RUN = ["~experiment", "data=synthetic", "data.num_train=400", "data.num_test=200", "data.noise=3.0",
       "trainer.epochs=3", "trainer.batch_size=50", "trainer.device=cpu", "trainer.progress=false",
       "trainer.deterministic=true", "prune.patience=0"]


def cli(*args: str) -> int:
    return run_in_process("train", *args)


def numeric_columns(run: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.csv as {column: [(epoch, value), ...]} for every numeric column but the epoch."""
    out: dict[str, list[tuple[int, float]]] = {}
    for row in metrics_without_time(run):
        for key, value in row.items():
            if key != "epoch" and value not in ("", None):
                out.setdefault(key, []).append((int(row["epoch"]), float(value)))
    return out


def tensorboard_scalars(run: Path) -> tuple[dict[str, list[tuple[int, float]]], object]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}, events


@pytest.mark.slow
def test_tensorboard_events_hold_every_metric_per_epoch_the_summary_and_the_report(
        tmp_path, monkeypatch, in_process_cli):
    pytest.importorskip("tensorboard")
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert cli(*RUN, "logger=tensorboard", f"hydra.run.dir={run}") == 0
    scalars, events = tensorboard_scalars(run)
    for column, values in numeric_columns(run).items():
        assert [s for s, _ in scalars[column]] == [e for e, _ in values], column
        assert [v for _, v in scalars[column]] == pytest.approx([v for _, v in values], rel=1e-6), column
    summary = json.loads((run / "summary.json").read_text())
    assert scalars["final/test_error"][-1][1] == pytest.approx(summary["test_error"])
    assert scalars["final/remaining_pct"][-1][1] == pytest.approx(summary["remaining_pct"])
    assert "final/remaining_pct/fc1.weight" in scalars
    assert any(t.startswith("decision/") for t in scalars)  # patience 0: a search every epoch
    images = events.Tags()["images"]
    assert "report/epochs" in images and len(images) >= 3
    assert summary["trackers"]["tensorboard"] == "tensorboard"


@pytest.mark.slow
def test_mlflow_run_holds_the_config_the_metrics_the_summary_and_the_artifacts(tmp_path, monkeypatch, in_process_cli):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert cli(*RUN, "logger=[tensorboard,mlflow]", f"hydra.run.dir={run}") == 0
    summary = json.loads((run / "summary.json").read_text())
    run_id = summary["trackers"]["mlflow_run_id"]
    # Offline by default: a SQLite store under outputs/ of the working folder.
    uri = f"sqlite:///{tmp_path / 'outputs' / 'mlflow' / 'mlflow.db'}"
    assert summary["trackers"]["mlflow_tracking_uri"] == uri
    client = MlflowClient(uri)
    record = client.get_run(run_id)
    assert record.info.status == "FINISHED" and record.info.run_name == "run"
    assert client.get_experiment(record.info.experiment_id).name == "sensreg"
    config = json.loads(json.dumps(record.data.params))
    assert config["sens.lam"] == str(summary_config(run)["sens"]["lam"]) and config["trainer.epochs"] == "3"
    for column, values in numeric_columns(run).items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, column))
        # Every step exactly, every value approximately (approx takes flat sequences only).
        assert [step for step, _ in history] == [step for step, _ in values], column
        assert [v for _, v in history] == pytest.approx([v for _, v in values]), column
    assert record.data.metrics["final/test_error"] == pytest.approx(summary["test_error"])
    assert record.data.metrics["final/compression"] == pytest.approx(summary["compression"])
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"summary.json", "metrics.csv", "config.yaml", "report.md", "epochs.png"} <= artifacts
    assert tensorboard_scalars(run)[0]  # both at once


def summary_config(run: Path) -> dict:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())


@pytest.mark.slow
def test_a_resumed_run_continues_its_mlflow_run_and_tensorboard_without_repeating_an_epoch(
        tmp_path, monkeypatch, in_process_cli):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    args = [*RUN, "logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={uri}"]
    with monkeypatch.context() as m:
        stop_at_step(m, 12, signal.SIGINT)  # 8 steps an epoch: in the second
        assert cli(*args, f"hydra.run.dir={run}") == 130
    first = json.loads((run / "summary.json").read_text())["trackers"]["mlflow_run_id"]
    client = MlflowClient(uri)
    assert client.get_run(first).info.status == "KILLED"
    assert cli(*args, f"trainer.resume={run}") == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["trackers"]["mlflow_run_id"] == first and summary["resumed"]
    assert client.get_run(first).info.status == "FINISHED"
    assert len(client.search_runs([client.get_run(first).info.experiment_id])) == 1
    steps = sorted(m.step for m in client.get_metric_history(first, "val_error"))
    assert steps == [1, 2, 3]
    scalars, _ = tensorboard_scalars(run)
    assert [s for s, _ in scalars["val_error"]] == [1, 2, 3]


@pytest.mark.slow
def test_a_sweeps_runs_share_one_mlflow_experiment(tmp_path, monkeypatch, in_process_cli):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    sweep_dir = tmp_path / "sweep"
    assert cli("-m", *RUN, "trainer.epochs=1", "sens.lam=1e-5,1e-4", "logger=mlflow",
               f"logger.mlflow.tracking_uri={uri}", f"hydra.sweep.dir={sweep_dir}") == 0
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(f"sweep {sweep_dir.relative_to(tmp_path)}")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["0_lenet300_spec", "1_lenet300_spec"]
    assert sorted(r.data.params["sens.lam"] for r in runs) == ["0.0001", "1e-05"]


@pytest.mark.parametrize("tracker, extra", [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
def test_a_tracker_without_its_package_is_one_message_before_any_training(
        tracker, extra, tmp_path, monkeypatch, capsys, in_process_cli):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, tracker, None)  # import fails as if not installed
    assert cli(*RUN, f"logger={tracker}", f"hydra.run.dir={tmp_path / 'run'}") == 2
    err = capsys.readouterr().err
    assert f"pip install -e '.[{extra}]'" in err and "Nothing was trained" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_an_unknown_tracker_setting_is_refused_by_name(tmp_path, monkeypatch, capsys, in_process_cli):
    monkeypatch.chdir(tmp_path)
    assert cli(*RUN, "logger=mlflow", "+logger.mlflow.uri=x", f"hydra.run.dir={tmp_path / 'run'}") == 2
    assert "logger.mlflow: unknown key(s) uri" in capsys.readouterr().err
