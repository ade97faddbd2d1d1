"""A run never writes over files it did not write, and a refused command writes nothing, Hydra's
.hydra/ records included: they are written by sensreg once the run is accepted."""

from __future__ import annotations

import pytest
import yaml

from conftest import run_in_process

TINY = ["~experiment", "data=synthetic", "data.num_train=200", "data.num_test=100", "trainer.epochs=1",
        "trainer.batch_size=50", "trainer.device=cpu", "trainer.progress=false"]


def snapshot(folder):
    return {p.relative_to(folder): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("files", [{"notes.txt": "mine"}, {".git/HEAD": "ref: refs/heads/main"},
                                   {"config.yaml": "mine: true", "metrics.csv": "a,b"}])
def test_a_folder_holding_files_a_run_did_not_write_is_refused_and_left_as_it_was(tmp_path, in_process_cli,
                                                                                capsys, files):
    folder = tmp_path / "project"
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    before = snapshot(folder)
    assert run_in_process("train", *TINY, f"hydra.run.dir={folder}") == 2
    message = " ".join(capsys.readouterr().err.split())
    assert f"the folder {folder} is not empty" in message and "choose another hydra.run.dir" in message
    assert snapshot(folder) == before  # nothing written, .hydra/ included


def test_a_refused_second_command_leaves_the_first_runs_records_as_they_were(tmp_path, in_process_cli, capsys):
    run = tmp_path / "run"
    assert run_in_process("train", *TINY, "sens=loss", f"hydra.run.dir={run}") == 0
    record = yaml.safe_load((run / ".hydra" / "hydra.yaml").read_text())
    assert record["hydra"]["runtime"]["choices"]["sens"] == "loss"  # Hydra's record, written by sensreg
    assert "sens=loss" in yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    before = snapshot(run)
    assert run_in_process("train", *TINY, "sens=spec", f"hydra.run.dir={run}") == 2  # not resuming: refused
    assert "already holds a run" in capsys.readouterr().err
    assert snapshot(run) == before


def test_an_empty_folder_made_beforehand_takes_a_run(tmp_path, in_process_cli):
    run = tmp_path / "made"
    run.mkdir()
    assert run_in_process("train", *TINY, f"hydra.run.dir={run}") == 0
    assert (run / "summary.json").is_file() and (run / ".hydra" / "config.yaml").is_file()


def test_a_refused_config_leaves_no_folder_and_no_records(tmp_path, in_process_cli, capsys):
    run = tmp_path / "new"
    assert run_in_process("train", *TINY, "sens.lam=-1", f"hydra.run.dir={run}") == 2
    assert not run.exists()


def test_a_run_whose_output_is_no_terminal_logs_its_progress_during_an_epoch(tmp_path, in_process_cli, monkeypatch):
    from sensreg.run import loop

    run = tmp_path / "piped"
    monkeypatch.setattr(loop, "PROGRESS_LINE_S", 0.0)  # a line after every batch (60 s in use)
    assert run_in_process("train", *TINY[:-1], "trainer.progress=auto", f"hydra.run.dir={run}") == 0
    log = (run / "train.log").read_text()
    assert "epoch 1/1: batch 1/4, about" in log and "epoch 1/1: batch 3/4" in log  # (pytest's stdout is no terminal)
    assert "batch 4/4" not in log  # the epoch's own line follows at once

    quiet = tmp_path / "quiet"
    monkeypatch.setattr(loop, "PROGRESS_LINE_S", 60.0)
    assert run_in_process("train", *TINY[:-1], "trainer.progress=false", f"hydra.run.dir={quiet}") == 0
    assert ": batch " not in (quiet / "train.log").read_text()


def test_hydra_job_chdir_is_refused_before_any_work(tmp_path, in_process_cli, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_in_process("train", *TINY, "hydra.job.chdir=true") == 2
    assert "drop hydra.job.chdir=true" in " ".join(capsys.readouterr().err.split())
    assert list(tmp_path.iterdir()) == []


def test_sigterm_in_the_set_up_is_an_orderly_stop_that_leaves_no_folder(tmp_path, in_process_cli, capsys,
                                                                        monkeypatch):
    import os
    import signal

    from sensreg.run import lifecycle

    real = lifecycle.resume_state

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # as timeout or docker stop would, before the first file
        return real(*args, **kwargs)

    monkeypatch.setattr(lifecycle, "resume_state", signalled)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        code = run_in_process("train", *TINY, f"hydra.run.dir={tmp_path / 'run'}")
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    assert code == 128 + signal.SIGTERM
    assert "interrupted during the set-up (SIGTERM)" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "run").exists()
