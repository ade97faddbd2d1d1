"""logger=tensorboard and logger=mlflow (sensreg.run.trackers), read back with each tool's own
reader: TensorBoard's EventAccumulator and MLflow's client."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HANG_S, metrics_without_time, run_in_process, stop_at_step

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


# --- nothing outside the process stalls a run ------------------------------------------------------

def closed_port() -> int:
    """A local port nothing listens on: connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def silent_server() -> socket.socket:
    """A local server that accepts connections and never answers (the kernel completes the
    handshake of up to 8 clients without an accept)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    return server


def train_process(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sensreg", "train", *RUN, "trainer.epochs=1", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": ""})


@pytest.mark.slow
@pytest.mark.parametrize("store", ["refuses connections", "never answers", "is no database"])
def test_an_mlflow_store_that_cannot_be_used_is_one_line_before_the_first_epoch_and_the_run_goes_on(
        store, tmp_path):
    pytest.importorskip("mlflow")
    server = silent_server() if store == "never answers" else None
    if store == "is no database":
        (tmp_path / "store.db").write_bytes(bytes(range(256)) * 20)
        uri = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        uri = f"http://127.0.0.1:{server.getsockname()[1] if server else closed_port()}"
    run = tmp_path / "run"
    with train_process("logger=mlflow", f"logger.mlflow.tracking_uri={uri}", f"hydra.run.dir={run}",
                       cwd=tmp_path) as process:
        out, err = process.communicate(timeout=HANG_S)  # before: 4 minutes, forever, and 100 s
    if server:
        server.close()
    assert process.returncode == 0, err[-2000:]
    lines = out.splitlines()
    warnings = [i for i, line in enumerate(lines) if "warning: logger=mlflow" in line]
    assert len(warnings) == 1 and uri in lines[warnings[0]] and "the run goes on without it" in lines[warnings[0]]
    assert warnings[0] < next(i for i, line in enumerate(lines) if "epoch   1" in line)
    assert "Traceback" not in out + err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and "mlflow_run_id" not in summary["trackers"]


def test_a_required_tracker_that_cannot_be_used_refuses_the_run(tmp_path, monkeypatch, capsys, in_process_cli):
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    uri = f"http://127.0.0.1:{closed_port()}"
    assert cli(*RUN, "logger=mlflow", f"logger.mlflow.tracking_uri={uri}", "logger.mlflow.required=true",
               f"hydra.run.dir={tmp_path / 'run'}") == 2
    err = capsys.readouterr().err
    assert f"logger=mlflow ({uri}) cannot be used: its server refuses connections" in err
    assert "logger.mlflow.required=false" in err and "Nothing was trained" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "metrics.csv").exists()


@pytest.mark.slow
def test_ctrl_c_is_honoured_at_once_while_a_tracker_call_waits_for_its_server(tmp_path):
    pytest.importorskip("mlflow")
    server = silent_server()
    server.settimeout(90)
    uri = f"http://127.0.0.1:{server.getsockname()[1]}"
    with train_process("logger=mlflow", f"logger.mlflow.tracking_uri={uri}", f"hydra.run.dir={tmp_path / 'run'}",
                       cwd=tmp_path) as process:
        connection, _ = server.accept()  # the run's first request is now waiting for an answer
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=HANG_S)  # before: the first Ctrl-C was ignored for a minute
    connection.close()
    server.close()
    assert process.returncode == 130, err[-2000:]
    assert "stopped by SIGINT" in err and "Traceback" not in out + err


def test_a_tracker_call_that_never_returns_is_given_up_on_a_stop_or_at_its_limit():
    """``bounded``'s two ways out of a call that never returns, without measuring time: with an
    hour's limit only the stop can end the wait, and with no stop only the limit. (A broken
    bound would hang; the watcher thread's join is the guard.)"""
    import threading

    from sensreg.run.trackers import TrackerTimeout, bounded

    never = threading.Event()
    outcomes = {}

    def wait(name, **kwargs):
        try:
            bounded(never.wait, **kwargs)
        except TrackerTimeout as err:
            outcomes[name] = str(err)

    waits = [threading.Thread(target=wait, args=("stopped",), kwargs={"limit_s": 3600, "stopping": lambda: True}),
             threading.Thread(target=wait, args=("limit",), kwargs={"limit_s": 0.2})]
    for thread in waits:
        thread.start()
    for thread in waits:
        thread.join(timeout=HANG_S)
    never.set()
    assert outcomes == {"stopped": "the run was stopped while it waited for an answer",
                        "limit": "no answer within 0.2 s"}
    assert bounded(lambda: 42) == 42
    with pytest.raises(KeyError):
        bounded(lambda: {}["x"])


# pytest reports a thread's uncaught exception (its traceback, in a console) as this warning.
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_tensorboard_folder_that_cannot_be_written_is_one_line_and_no_thread_traceback(
        tmp_path, monkeypatch, capsys, in_process_cli):
    pytest.importorskip("tensorboard")
    from tensorboard.compat.tensorflow_stub.io.gfile import LocalFileSystem

    def refused(self, filename, *args, **kwargs):
        raise PermissionError(13, "Permission denied", filename)

    # TensorBoard writes its event files from a thread of its own; every write there is refused,
    # as in a read-only folder (which the tests, run as any user, cannot count on).
    monkeypatch.setattr(LocalFileSystem, "_write", refused)
    monkeypatch.setattr(LocalFileSystem, "append", refused)
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert cli(*RUN, "trainer.epochs=1", "logger=tensorboard", f"hydra.run.dir={run}") == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err and "Exception in thread" not in captured.err
    warnings = [line for line in captured.out.splitlines() if "warning: logger=tensorboard" in line]
    assert len(warnings) == 1 and "Permission denied" in warnings[0]
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
