"""hydra/sweeper=pareto (sensreg.commands.pareto): a multi-objective Optuna study over real sensreg runs
on synthetic data, read back with optuna's own API."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from conftest import HANG_S, run_in_process, stop_at_step  # noqa: E402
from sensreg.records.compare import compare  # noqa: E402
from sensreg.commands.pareto import objectives, search_space, trials_done  # noqa: E402

# Short trials that prune (patience 0: a threshold search after every epoch).
SWEEP = ["-m", "hydra/sweeper=pareto", "~experiment", "data=synthetic", "data.num_train=400", "data.num_test=200",
         "data.noise=3.0", "trainer.epochs=2", "trainer.batch_size=50", "trainer.device=cpu",
         "trainer.progress=false", "prune.patience=0"]


def sweep(sweep_dir: Path, *extra: str) -> int:
    # (prune.patience is the threshold search's: beside another schedule it would be refused)
    base = SWEEP if not any(e.startswith("prune=") and e != "prune=search" for e in extra) else SWEEP[:-1]
    return run_in_process("train", *base, f"hydra.sweep.dir={sweep_dir}", *extra)


def load(sweep_dir: Path):
    return optuna.load_study(study_name="synthetic_lenet300_spec", storage=f"sqlite:///{sweep_dir / 'study.db'}")


def test_the_search_space_is_read_from_hydras_sweep_syntax():
    space, fixed = search_space(["sens.lam=tag(log, interval(1e-6, 1e-3))", "prune.tolerance=interval(0.01, 0.3)",
                                 "prune.patience=interval(0, 3)", "sens=choice(spec,unspec)", "trainer.epochs=4"])
    assert space["sens.lam"] == optuna.distributions.FloatDistribution(1e-6, 1e-3, log=True)
    assert space["prune.tolerance"] == optuna.distributions.FloatDistribution(0.01, 0.3)
    assert space["prune.patience"] == optuna.distributions.IntDistribution(0, 3)
    assert space["sens"] == optuna.distributions.CategoricalDistribution(["spec", "unspec"])
    assert fixed == ["trainer.epochs=4"]


def test_the_sweeper_without_optuna_is_one_message_before_any_training(tmp_path, monkeypatch, capsys, in_process_cli):
    import sys

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "optuna", None)  # import fails as if not installed
    assert sweep(tmp_path / "sweep", "hydra.sweeper.n_trials=2") == 2
    err = capsys.readouterr().err
    assert "pip install -e '.[sweep]'" in err and "Traceback" not in err and not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("override, message", [
    ("hydra.sweeper.n_jobs=0", "hydra.sweeper.n_jobs=0 must be an integer >= 1"),
    ("hydra.sweeper.sampler=grid", "hydra.sweeper.sampler=grid is not one of: nsgaii, tpe"),
    ("hydra.sweeper.seed=18446744073709551616", "hydra.sweeper.seed=18446744073709551616 must be null (not "
                                                "reproducible) or an integer from 0 to 4294967283"),
    ("hydra.sweeper.seed=-1", "hydra.sweeper.seed=-1 must be null"),
    ("prune=gmp prune.tolerance=interval(0.01,0.3)", "prune.tolerance is read by prune=search only, and this "
                                                     "command chooses prune=gmp"),
    ("sens=none sens.lam=interval(1e-5,1e-3)", "sens.lam is searched, but sens=none does not regularize"),
    ("sens=none prune=none", "hydra/sweeper=pareto has nothing to search: sens=none prune=none"),
    # a key of the search space the chosen optimizer does not read (each optimizer owns its keys)
    ("optim=adam +hydra.sweeper.params={optim.momentum:'interval(0.5,0.95)'}",
     "optim.momentum is searched, but optim=adam does not read it (only optim=sgd does)"),
])
def test_a_sweep_set_up_wrongly_is_one_message_before_any_trial(override, message, tmp_path, monkeypatch, capsys,
                                                                in_process_cli):
    monkeypatch.chdir(tmp_path)
    assert sweep(tmp_path / "sweep", *override.split()) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "sweep" / "study.db").exists()


def test_objectives_come_from_a_completed_summary_only():
    assert objectives({"status": "completed", "val_error": 0.1, "remaining_pct": 5.0, "test_error": 0.9}) == [0.1, 5.0]
    assert objectives({"status": "failed", "val_error": 0.1, "remaining_pct": 5.0}) is None
    assert objectives(None) is None


@pytest.mark.slow
def test_a_pareto_sweep_records_validation_objectives_continues_and_marks_its_front(
        tmp_path, monkeypatch, in_process_cli):
    monkeypatch.chdir(tmp_path)
    sweep_dir = tmp_path / "sweep"
    assert sweep(sweep_dir, "hydra.sweeper.n_trials=3") == 0
    study = load(sweep_dir)
    assert [t.number for t in study.trials] == [0, 1, 2]
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        run = Path(trial.user_attrs["run_dir"])
        assert run.name.startswith(f"{trial.number}_")
        summary = json.loads((run / "summary.json").read_text())
        # The objectives are the run's validation figures, never its test error.
        assert trial.values == [summary["val_error"], summary["remaining_pct"]]
        config = (run / "config.yaml").read_text()
        assert f"lam: {trial.params['sens.lam']}" in config
    first = {t.number: (Path(t.user_attrs["run_dir"]) / "summary.json").stat().st_mtime_ns for t in study.trials}

    # The same command again, with a larger total: trials 3 and 4 run, 0-2 are not rerun.
    assert sweep(sweep_dir, "hydra.sweeper.n_trials=5") == 0
    study = load(sweep_dir)
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4] and trials_done(study) == 5
    assert {n: (Path(study.trials[n].user_attrs["run_dir"]) / "summary.json").stat().st_mtime_ns
            for n in first} == first
    assert len({t.params["sens.lam"] for t in study.trials}) == 5  # a continued study draws new points

    # Another command cannot continue it (its trials would not be comparable).
    assert sweep(sweep_dir, "hydra.sweeper.n_trials=6", "trainer.epochs=3") == 2
    assert len(load(sweep_dir).trials) == 5

    # The study's front, as optuna computes it, is what study.json and sensreg compare mark.
    front = {Path(t.user_attrs["run_dir"]).resolve() for t in study.best_trials}
    recorded = json.loads((sweep_dir / "study.json").read_text())
    assert {(sweep_dir / t["run_dir"]).resolve() for t in recorded["trials"] if t["on_front"]} == front
    assert all(not Path(t["run_dir"]).is_absolute() for t in recorded["trials"])  # the folder can move
    rows = compare([str(sweep_dir)], plots=False).rows
    assert {Path(r.path).resolve() for r in rows if r.study_front} == front and len(rows) == 5
    rows = compare([str(sweep_dir)], where=["front=true"], plots=False).rows
    assert {Path(r.path).resolve() for r in rows} == front


@pytest.mark.slow
def test_failed_trials_are_told_failed_and_the_sweep_goes_on(tmp_path, monkeypatch, in_process_cli, capsys):
    monkeypatch.chdir(tmp_path)
    sweep_dir = tmp_path / "sweep"
    # A negative tolerance is refused by the config check: the sampler can draw one here.
    assert sweep(sweep_dir, "hydra.sweeper.n_trials=4", "prune.tolerance=choice(-1.0,0.2)") == 0
    states = [t.state for t in load(sweep_dir).trials]
    assert len(states) == 4 and optuna.trial.TrialState.FAIL in states and optuna.trial.TrialState.COMPLETE in states
    assert "trial" in capsys.readouterr().out  # "pareto sweep: trial N failed, the sweep goes on"
    # Runs that diverge (a learning rate of 1e30 is legal) fail their trials the same way.
    diverging = tmp_path / "diverging"
    assert sweep(diverging, "hydra.sweeper.n_trials=2", "trainer.epochs=1", "optim.lr=choice(1e30)") == 0
    trials = load(diverging).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL] * 2
    errors = [json.loads(p.read_text())["error"] for p in diverging.glob("*/summary.json")]
    assert len(errors) == 2 and all("non-finite" in e for e in errors)


@pytest.mark.slow
def test_a_sweep_stopped_in_a_trial_continues_that_trial_from_its_checkpoint(tmp_path, monkeypatch, in_process_cli):
    monkeypatch.chdir(tmp_path)
    sweep_dir = tmp_path / "sweep"
    # 8 steps per epoch of 360 training samples at batch 50: trial 0 takes steps 1-16, and step
    # 20 is the 4th of trial 1, whose stop writes last.pt in the middle of its first epoch.
    with monkeypatch.context() as m:
        stop_at_step(m, 20, signal.SIGINT)
        assert sweep(sweep_dir, "hydra.sweeper.n_trials=3") == 130
    study = load(sweep_dir)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING]
    stopped = study.trials[1]
    assert sweep(sweep_dir, "hydra.sweeper.n_trials=3") == 0
    study = load(sweep_dir)
    assert trials_done(study) == 3
    again = [t for t in study.trials if t.user_attrs.get("continues") == 1]
    assert len(again) == 1 and again[0].params == stopped.params
    assert again[0].state == optuna.trial.TrialState.COMPLETE
    run = Path(again[0].user_attrs["run_dir"])
    assert run.name.startswith("1_")  # trial 1's own folder, continued from its last.pt
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed"][0] == {**summary["resumed"][0], "epoch": 0, "batch": 4}


@pytest.mark.slow
def test_a_pareto_sweep_through_submitits_launcher_runs_trials_in_parallel_and_continues(tmp_path):
    # The launcher behind hydra/launcher=slurm, with its local executor: each trial its own process.
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    import os
    import subprocess

    sweep_dir = tmp_path / "sweep"
    cmd = ["sensreg", "train", *SWEEP, "hydra/launcher=submitit_local", "hydra.sweeper.n_jobs=2",
           f"hydra.sweep.dir={sweep_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for total in (2, 3):
        out = subprocess.run([*cmd, f"hydra.sweeper.n_trials={total}"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=HANG_S, env=env)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    study = load(sweep_dir)
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    for trial in study.trials:
        summary = json.loads((Path(trial.user_attrs["run_dir"]) / "summary.json").read_text())
        assert trial.values == [summary["val_error"], summary["remaining_pct"]]


def test_the_default_search_space_is_what_each_preset_reads():
    # `sensreg train -m hydra/sweeper=pareto experiment=NAME` with no other argument searches keys
    # the preset's schedule reads: lambda where the variant regularizes, and the prune schedule's
    # own key (gmp: the target; search: the tolerance).
    from sensreg.commands.pareto import default_space
    from sensreg.run.config_groups import key_readers
    from test_config import experiments
    from conftest import composed

    assert default_space("spec", "gmp") == {"sens.lam": "tag(log, interval(1e-6, 1e-3))",
                                            "prune.target": "interval(0.8, 0.995)"}
    assert set(default_space("spec", "search")) == {"sens.lam", "prune.tolerance"}
    assert set(default_space("none", "gmp")) == {"prune.target"}
    for name in experiments():
        cfg = composed(f"experiment={name}")
        space = default_space(cfg["sens"]["name"], cfg["prune"]["name"])
        for key in space:
            assert key == "sens.lam" or cfg["prune"]["name"] in key_readers(*key.split(".", 1)), (name, key)
        dense = cfg["sens"]["name"] == "none" and cfg["prune"]["name"] == "none"
        assert bool(space) != dense, name


@pytest.mark.slow
def test_the_main_job_is_searched_with_the_defaults(tmp_path, monkeypatch, in_process_cli):
    # The main job prunes with gmp: its default space is lambda and the gmp target.
    monkeypatch.chdir(tmp_path)
    sweep_dir = tmp_path / "sweep"
    assert run_in_process("train", "-m", "hydra/sweeper=pareto", "data=synthetic", "data.num_train=300",
                          "data.num_test=100", "trainer.epochs=1", "trainer.device=cpu", "trainer.progress=false",
                          "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep_dir}") == 0
    study = optuna.load_study(study_name="synthetic_lenet300_spec", storage=f"sqlite:///{sweep_dir / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert all(set(t.params) == {"sens.lam", "prune.target"} for t in study.trials)


# --- one writer per study, and a way back from a damaged one -------------------------------------

@pytest.mark.slow
def test_a_second_command_on_a_running_study_is_refused_and_a_stale_lock_is_taken_over(
        tmp_path, monkeypatch, in_process_cli):
    import os
    import subprocess
    import sys
    import time

    sweep_dir = tmp_path / "sweep"
    lock = sweep_dir / "study.db.lock"
    cmd = [sys.executable, "-m", "sensreg", "train", *SWEEP, "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": ""}
    with subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env) as first:
        deadline = time.monotonic() + HANG_S
        while not (lock.exists() and lock.stat().st_size) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGSTOP)  # held in the middle of its sweep, lock and all
        try:
            second = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=HANG_S, env=env)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        out, err = first.communicate(timeout=HANG_S)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    message = " ".join(second.stderr.split())  # as one line, however the console wrapped it
    assert f"is in use by process {first.pid} on" in message and str(lock) in message
    assert first.returncode == 0, err[-2000:]
    assert [t.state for t in load(sweep_dir).trials] == [optuna.trial.TrialState.COMPLETE] * 2 and not lock.exists()

    # A lock whose process is gone (the first command's, now ended) is taken over.
    lock.write_text(f"{first.pid} {__import__('socket').gethostname()}\n")
    monkeypatch.chdir(tmp_path)
    assert sweep(sweep_dir, "hydra.sweeper.n_trials=3") == 0
    assert trials_done(load(sweep_dir)) == 3 and not lock.exists()


@pytest.mark.parametrize("fault, fix", [
    ("damaged", "Move it aside (or delete it) and run the command again"),
    ("locked", "Close that program"),
])
def test_a_damaged_or_locked_study_file_is_one_message_naming_it_and_the_fix(
        fault, fix, tmp_path, monkeypatch, capsys, in_process_cli):
    import sqlite3

    monkeypatch.chdir(tmp_path)
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    db = sweep_dir / "study.db"
    holder = None
    if fault == "damaged":
        db.write_bytes(bytes(range(256)) * 16)
    else:  # another program holds a write transaction on a real study
        optuna.create_study(study_name="synthetic_lenet300_spec", storage=f"sqlite:///{db}")
        holder = sqlite3.connect(db)
        holder.execute("BEGIN IMMEDIATE")
    try:
        assert sweep(sweep_dir, "hydra.sweeper.n_trials=1") == 2
    finally:
        if holder is not None:
            holder.close()
    err = " ".join(capsys.readouterr().err.split())
    assert f"the study {db}" in err and fix in err and "Nothing was trained" in err and "Traceback" not in err
    assert not (sweep_dir / "study.db.lock").exists() and not list(sweep_dir.glob("*_*"))


@pytest.mark.slow
def test_a_new_study_among_an_earlier_studys_run_folders_numbers_its_own_after_them(
        tmp_path, monkeypatch, in_process_cli):
    monkeypatch.chdir(tmp_path)
    sweep_dir = tmp_path / "sweep"
    assert sweep(sweep_dir, "hydra.sweeper.n_trials=2", "trainer.epochs=1") == 0
    earlier = {p.name: (p / "summary.json").read_bytes() for p in sweep_dir.glob("*_*")}
    assert sorted(earlier) == ["0_lenet300_spec", "1_lenet300_spec"]
    (sweep_dir / "study.db").unlink()  # what the message about a damaged study.db advises

    assert sweep(sweep_dir, "hydra.sweeper.n_trials=2", "trainer.epochs=1") == 0
    study = load(sweep_dir)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert [Path(t.user_attrs["run_dir"]).name for t in study.trials] == ["2_lenet300_spec", "3_lenet300_spec"]
    assert {name: (sweep_dir / name / "summary.json").read_bytes() for name in earlier} == earlier
    # Continued, the new study's folders follow on from its own.
    assert sweep(sweep_dir, "hydra.sweeper.n_trials=3", "trainer.epochs=1") == 0
    assert Path(load(sweep_dir).trials[2].user_attrs["run_dir"]).name == "4_lenet300_spec"
