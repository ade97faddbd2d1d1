"""Long runs: checkpoints, exact resume, stops by signal, divergence, busy folders, full disks."""

from __future__ import annotations

import errno
import functools
import json
import os
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pytest
import torch

from sensreg import atomic
from sensreg.records.checkpoint import CheckpointError
from sensreg.run.config import ConfigError, TrainConfig
from sensreg.run.interrupt import Interrupted
from sensreg.records.folder import RunFolderError, RunLock, resolve
from sensreg.run.lifecycle import resume_state, train
from sensreg.run.loop import TrainStep
from sensreg.records.train_state import load_training_state

from conftest import HANG_S, assert_same_run, composed, metrics_without_time, stop_at_step, train_config

# Deterministic CPU runs on noisy synthetic data (noise 3: the validation loss stays well above 0).
BASE = {
    "data": {"name": "synthetic", "num_train": 1200, "num_test": 200, "noise": 3.0},
    "sens": {"name": "spec", "lam": 1e-3},
    "prune": {"name": "search", "patience": 0, "tolerance": 0.1},
    "trainer": {"epochs": 3, "batch_size": 50, "device": "cpu", "deterministic": True, "progress": False},
}
CLI_ARGS = ["~experiment", "data=synthetic", "data.num_train=3000", "data.num_test=200", "data.noise=3.0",
            "trainer.epochs=4", "trainer.batch_size=50", "trainer.device=cpu",
            "trainer.deterministic=true", "sens=unspec"]


config = functools.partial(train_config, BASE)  # config(**sections): BASE with those sections changed


# --- 1. checkpoints ------------------------------------------------------------------------------

def test_last_checkpoint_holds_everything_to_continue(tmp_path):
    cfg = config()
    train(cfg, tmp_path)
    state = load_training_state(tmp_path / "last.pt")  # weights_only=True inside
    assert state["config_hash"] == cfg.hash() and state["loop"]["epoch"] == 3
    assert set(state["rng"]) >= {"torch", "numpy", "python"}
    assert state["optimizer"]["state"], "momentum buffers are saved"
    assert set(state["masks"]) == set(state["model"]) and state["loop"]["thresholds"]
    assert len(state["loop"]["rows"]) == 3 and state["loop"]["shuffle_state"] is not None


def test_checkpoint_every_n_epochs(tmp_path, monkeypatch):
    saved_epochs = []
    import sensreg.records.train_state as train_module
    original = train_module.save_training_state
    monkeypatch.setattr(train_module, "save_training_state",
                        lambda path, state: (saved_epochs.append(state["loop"]["epoch"]), original(path, state)))
    train(config(trainer={"epochs": 5, "checkpoint_every": 2}), tmp_path)
    assert saved_epochs == [2, 4, 5]  # every 2nd epoch and the last


def test_atomic_write_keeps_the_previous_file_when_a_write_fails(tmp_path):
    path = tmp_path / "summary.json"
    atomic.write_json(path, {"status": "completed"})

    def broken(f):
        f.write('{"status": "half')
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic.write_atomic(path, broken)
    assert json.loads(path.read_text()) == {"status": "completed"}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary file left behind


class FillsUp:
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):  # flush, tell, seek: the real file's
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_a_full_disk_under_torch_save_is_the_os_error_naming_the_file(tmp_path):
    # torch.save's zip writer raises a RuntimeError ("unexpected pos") on top of the failed
    # write, which the CLI's handler of OSError would not see.
    path = tmp_path / "last.pt"
    atomic.write_atomic(path, lambda f: torch.save({"epoch": 1}, f), binary=True)
    with pytest.raises(OSError) as caught:
        atomic.write_atomic(path, lambda f: torch.save({"x": torch.zeros(100_000)}, FillsUp(f, 1000)), binary=True)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)
    assert torch.load(path) == {"epoch": 1}  # the previous file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# --- 2. resume -----------------------------------------------------------------------------------

@pytest.mark.parametrize("stop_step", [30, 22])  # 22 steps an epoch: mid-epoch 2; the last step of epoch 1
def test_run_stopped_by_a_signal_and_resumed_equals_an_uninterrupted_run(tmp_path, monkeypatch, stop_step):
    cfg = config()
    train(cfg, tmp_path / "full")
    stop_at_step(monkeypatch, stop_step)
    with pytest.raises(Interrupted):
        train(cfg, tmp_path / "cut")
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["status"] == "interrupted"
    monkeypatch.undo()
    train(cfg, tmp_path / "cut", resume_state(cfg, tmp_path / "cut" / "last.pt"))
    assert_same_run(tmp_path / "full", tmp_path / "cut")
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert summary["status"] == "completed" and len(summary["resumed"]) == 1


def test_resuming_with_more_epochs_extends_the_run(tmp_path):
    cfg3 = config(trainer={"epochs": 3})
    train(cfg3, tmp_path / "three")
    cfg2 = config(trainer={"epochs": 2})
    train(cfg2, tmp_path / "extended")
    train(cfg3, tmp_path / "extended", resume_state(cfg3, tmp_path / "extended" / "last.pt"))
    assert_same_run(tmp_path / "three", tmp_path / "extended")


def test_resuming_with_another_config_is_refused_saying_what_differs(tmp_path):
    train(config(trainer={"epochs": 1}), tmp_path)
    with pytest.raises(ConfigError) as err:
        resume_state(config(sens={"lam": 5e-4}, model={"name": "lenet5"}), tmp_path / "last.pt")
    assert "sens.lam: 0.001 in the saved run, 0.0005 now" in str(err.value)
    assert "model.name: 'lenet300' in the saved run, 'lenet5' now" in str(err.value)
    fewer = config()
    fewer.trainer.epochs = 0  # fewer epochs than the run has completed
    with pytest.raises(ConfigError, match="already completed 1 epochs"):
        resume_state(fewer, tmp_path / "last.pt")
    # where the run executes may change
    assert resume_state(config(trainer={"progress": True, "checkpoint_every": 5}), tmp_path / "last.pt")


def test_truncated_or_foreign_checkpoint_is_refused_by_path(tmp_path):
    train(config(trainer={"epochs": 1}), tmp_path)
    last = tmp_path / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=str(last)):
        resume_state(config(), last)
    torch.save({"weights": torch.zeros(2)}, last)
    with pytest.raises(CheckpointError, match="not a sensreg training checkpoint"):
        resume_state(config(), last)


# --- 4. divergence -------------------------------------------------------------------------------

def test_divergence_stops_with_failed_status_and_keeps_the_last_good_checkpoint(tmp_path):
    # eta jumps by 1e9 after epoch 1: epoch 2 diverges.
    cfg = config(eta_schedule={"name": "step", "milestones": [1], "gamma": 1e9}, lam_schedule={"name": "constant"})
    with pytest.raises(FloatingPointError, match=r"epoch 2 .*Lower sens.lam or optim.lr"):
        train(cfg, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["epochs_completed"] == 1
    state = load_training_state(tmp_path / "last.pt")
    assert state["loop"]["epoch"] == 1
    assert all(bool(torch.isfinite(t).all()) for t in state["model"].values())


def test_divergence_is_caught_within_a_few_dozen_steps_not_at_the_end_of_the_epoch(tmp_path, monkeypatch):
    from sensreg.run import loop as training
    steps = []
    original = TrainStep.__call__

    def counting(self, *args, **kwargs):
        steps.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TrainStep, "__call__", counting)
    # 1080 training samples in batches of 5: 216 steps an epoch; eta 1e6 diverges at once.
    cfg = config(optim={"lr": 1e6}, trainer={"batch_size": 5, "epochs": 1})
    with pytest.raises(FloatingPointError, match=rf"epoch 1, by step {training.DIVERGENCE_EVERY} of 216"):
        train(cfg, tmp_path)
    assert len(steps) == training.DIVERGENCE_EVERY  # stopped there, not after all 216
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"


# --- 6. output safety ----------------------------------------------------------------------------

def test_a_busy_run_folder_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunFolderError, match=f"in use by process {os.getpid()}"):
            with RunLock(tmp_path):
                pass
    assert not (tmp_path / ".lock").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".lock").write_text(f"{dead.stdout.strip()} {os.uname().nodename}\n")
    with RunLock(tmp_path) as lock:
        assert lock.held


def test_a_requeued_slurm_job_takes_over_the_lock_its_earlier_run_left_on_another_node(tmp_path, monkeypatch):
    (tmp_path / ".lock").write_text("4242 node-17 slurm-job-123\n")  # another host: liveness unknown
    monkeypatch.setenv("SLURM_JOB_ID", "124")
    with pytest.raises(RunFolderError, match="in use by process 4242 on node-17"):
        with RunLock(tmp_path):
            pass
    monkeypatch.setenv("SLURM_JOB_ID", "123")  # the same job, requeued: its earlier run is over
    with RunLock(tmp_path) as lock:
        assert lock.held
        assert (tmp_path / ".lock").read_text().split()[2] == "slurm-job-123"


def test_a_full_disk_while_taking_the_lock_leaves_no_lock_and_an_old_empty_lock_is_stale(tmp_path, monkeypatch):
    from sensreg.records import folder as run_folder
    real_fdopen = os.fdopen

    def full(fd, *args, **kwargs):
        return FillsUp(real_fdopen(fd, *args, **kwargs), 0)

    monkeypatch.setattr(run_folder.os, "fdopen", full)
    with pytest.raises(OSError, match="No space left"):
        RunLock(tmp_path).__enter__()
    assert not (tmp_path / ".lock").exists()
    monkeypatch.setattr(run_folder.os, "fdopen", real_fdopen)
    with RunLock(tmp_path):  # the space is back: the folder is free
        pass
    # An empty lock (written by an older version, or under a race) blocks only while it is young.
    (tmp_path / ".lock").write_text("")
    with pytest.raises(RunFolderError, match="in use"):
        RunLock(tmp_path).__enter__()
    old = time.time() - 2 * run_folder.EMPTY_LOCK_GRACE_S
    os.utime(tmp_path / ".lock", (old, old))
    with RunLock(tmp_path) as lock:
        assert lock.held and (tmp_path / ".lock").read_text().split()[0] == str(os.getpid())


def test_taking_the_lock_removes_what_a_killed_writer_left_half_written(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"complete")
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"half")  # SIGKILL during write_atomic
    with RunLock(tmp_path):
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "last.pt"]


def test_fresh_run_refuses_a_folder_that_holds_a_run(tmp_path):
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(RunFolderError, match="trainer.resume=true"):
        resolve(tmp_path, False)
    assert resolve(tmp_path, True) == (tmp_path, None)  # nothing to continue from: a fresh start
    (tmp_path / "last.pt").write_bytes(b"x")
    assert resolve(tmp_path, True) == (tmp_path, tmp_path / "last.pt")
    assert resolve(tmp_path / "elsewhere", str(tmp_path / "last.pt"))[0] == tmp_path


def test_a_run_that_failed_before_its_first_epoch_leaves_its_folder_free_for_a_fresh_run(tmp_path):
    bad_init = tmp_path / "not_weights.pt"
    bad_init.write_bytes(b"not a checkpoint")
    cfg = config(trainer={"init": str(bad_init)})
    run = tmp_path / "run"
    with pytest.raises(CheckpointError, match="trainer.init"):
        train(cfg, run)
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    assert resolve(run, False) == (run, None)  # nothing to lose: the folder is free
    assert train(config(), run)["status"] == "completed"
    # A run that failed later, with an epoch done, keeps its folder to itself.
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "failed"}))
    with pytest.raises(RunFolderError, match="already holds a run"):
        resolve(run, False)


# --- the command line: real signals to a real process --------------------------------------------

def sensreg(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(["sensreg", "train", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_epoch(run: Path, epoch: int, process: subprocess.Popen, timeout: float = HANG_S) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run / "train.log").exists() and f"epoch {epoch:>3} " in (run / "train.log").read_text():
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise TimeoutError(f"epoch {epoch} not reached")


def full_run_and_one_under_way(tmp_path: Path, epoch: int) -> tuple[Path, subprocess.Popen]:
    """An uninterrupted run in tmp_path/full; then the same in tmp_path/cut, running, a moment
    after it has logged ``epoch``."""
    full = sensreg(*CLI_ARGS, f"hydra.run.dir={tmp_path / 'full'}", cwd=tmp_path)
    assert full.wait(timeout=HANG_S) == 0, full.communicate()
    cut_dir = tmp_path / "cut"
    cut = sensreg(*CLI_ARGS, f"hydra.run.dir={cut_dir}", cwd=tmp_path)
    wait_for_epoch(cut_dir, epoch, cut)
    time.sleep(0.3)  # somewhere in the next epoch, or writing this one's checkpoint
    return cut_dir, cut


@pytest.mark.slow
def test_sigterm_then_resume_matches_an_uninterrupted_cli_run(tmp_path):
    cut_dir, cut = full_run_and_one_under_way(tmp_path, 1)
    cut.send_signal(signal.SIGTERM)
    out, err = cut.communicate(timeout=HANG_S)
    assert cut.returncode == 128 + signal.SIGTERM
    assert "trainer.resume=" in err and "Traceback" not in err
    assert json.loads((cut_dir / "summary.json").read_text())["status"] == "interrupted"
    again = sensreg(*CLI_ARGS, f"trainer.resume={cut_dir}", cwd=tmp_path)
    out, err = again.communicate(timeout=HANG_S)
    assert again.returncode == 0, err
    assert_same_run(tmp_path / "full", cut_dir)
    assert not (tmp_path / "outputs").exists()  # resuming elsewhere leaves no empty run folder


@pytest.mark.slow
def test_sigkill_loses_at_most_the_epoch_under_way_and_the_resume_matches_an_uninterrupted_run(tmp_path):
    cut_dir, cut = full_run_and_one_under_way(tmp_path, 2)
    # The epoch's log line comes before its checkpoint: wait for the checkpoint itself, however
    # slow the machine, so that what the kill may lose is the epoch under way and no more.
    deadline = time.time() + HANG_S
    while not ((cut_dir / "last.pt").exists() and load_training_state(cut_dir / "last.pt")["loop"]["epoch"] >= 2):
        assert cut.poll() is None and time.time() < deadline, cut.communicate()
        time.sleep(0.05)
    cut.kill()  # SIGKILL: no handler runs, the lock and perhaps a temporary file stay
    cut.communicate(timeout=HANG_S)
    assert json.loads((cut_dir / "summary.json").read_text())["status"] == "running"
    assert load_training_state(cut_dir / "last.pt")["loop"]["epoch"] >= 2  # at most epoch 3 lost
    again = sensreg(*CLI_ARGS, f"trainer.resume={cut_dir}", cwd=tmp_path)  # takes the stale lock over
    out, err = again.communicate(timeout=HANG_S)
    assert again.returncode == 0, err
    assert_same_run(tmp_path / "full", cut_dir)
    assert not list(cut_dir.glob(".*.tmp")) and not (cut_dir / ".lock").exists()


@pytest.mark.slow
def test_second_sigint_exits_at_once(tmp_path):
    run = tmp_path / "run"
    p = sensreg(*CLI_ARGS, "trainer.epochs=50", f"hydra.run.dir={run}", cwd=tmp_path)
    wait_for_epoch(run, 1, p)
    p.send_signal(signal.SIGINT)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=HANG_S)
    assert p.returncode == 130 and "Traceback" not in err
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"


@pytest.mark.slow
def test_cli_refuses_a_busy_folder_and_a_truncated_checkpoint(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(f"{os.getpid()} {os.uname().nodename}\n")  # this test process is alive
    p = sensreg(*CLI_ARGS, "trainer.epochs=1", f"hydra.run.dir={run}", cwd=tmp_path)
    out, err = p.communicate(timeout=HANG_S)
    assert p.returncode == 2 and "is in use by process" in err and "Traceback" not in err
    (run / ".lock").unlink()
    p = sensreg(*CLI_ARGS, "trainer.epochs=1", f"hydra.run.dir={run}", cwd=tmp_path)
    assert p.wait(timeout=HANG_S) == 0
    last = run / "last.pt"
    last.write_bytes(last.read_bytes()[:500])
    p = sensreg(*CLI_ARGS, "trainer.epochs=2", f"trainer.resume={run}", cwd=tmp_path)
    out, err = p.communicate(timeout=HANG_S)
    assert p.returncode == 1 and str(last) in err and "Traceback" not in err


@pytest.mark.slow
def test_full_disk_fails_loudly_and_keeps_the_previous_files(tmp_path):
    run = tmp_path / "run"
    # metrics.csv can be written once; the second write (after epoch 2) finds the disk full.
    script = (
        "import errno, sys\n"
        "from sensreg.records import folder as run_folder\n"
        "from sensreg.commands.cli import main\n"
        "original, calls = run_folder.write_metrics, []\n"
        "def write_metrics(path, rows):\n"
        "    calls.append(1)\n"
        "    if len(calls) > 1: raise OSError(errno.ENOSPC, 'No space left on device', str(path))\n"
        "    original(path, rows)\n"
        "run_folder.write_metrics = write_metrics\n"
        "main(sys.argv[1:])\n")
    p = subprocess.run([sys.executable, "-c", script, "train", *CLI_ARGS, "sens=spec", f"hydra.run.dir={run}"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=HANG_S,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 1 and "No space left on device" in p.stderr and "intact" in p.stderr
    assert "Traceback" not in p.stderr
    assert len(metrics_without_time(run)) == 1  # the epoch-1 file, whole
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"


def test_a_schedulers_requeue_handler_runs_after_the_checkpoint(tmp_path, monkeypatch):
    # What submitit does on preemption: its SIGUSR2 handler requeues the job and exits.
    seen = []

    def requeue(signum, frame):
        seen.append((signum, (tmp_path / "last.pt").exists()))
        raise SystemExit(-1)

    previous = signal.signal(signal.SIGUSR2, requeue)
    try:
        stop_at_step(monkeypatch, 5, signal.SIGUSR2)
        with pytest.raises(SystemExit):
            train(config(), tmp_path)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert seen == [(signal.SIGUSR2, True)]  # called once, after last.pt was written
    assert load_training_state(tmp_path / "last.pt")["loop"]["batch"] == 5
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "interrupted"


@pytest.mark.slow
def test_a_diverging_job_does_not_cancel_the_rest_of_a_sweep(tmp_path):
    p = sensreg("-m", "~experiment", "data=synthetic", "data.num_train=300", "data.num_test=100", "trainer.epochs=2",
                "trainer.device=cpu", "prune=none", "schedule@eta_schedule=step", "eta_schedule.milestones=[1]",
                "eta_schedule.gamma=1e20,1", "schedule@lam_schedule=constant", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    out, err = p.communicate(timeout=HANG_S)
    assert "job failed, the sweep goes on" in err and "epoch 2" in err and "Traceback" not in err
    statuses = sorted(json.loads(s.read_text())["status"] for s in (tmp_path / "sweep").rglob("summary.json"))
    assert statuses == ["completed", "failed"]


def test_a_stop_during_the_set_up_is_orderly(tmp_path, monkeypatch):
    import sensreg.run.lifecycle as train_module
    original = train_module.setup

    def slow_setup(cfg, *args):
        signal.raise_signal(signal.SIGTERM)  # arrives while the data is being loaded
        return original(cfg, *args)

    monkeypatch.setattr(train_module, "setup", slow_setup)
    with pytest.raises(Interrupted):
        train(config(), tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "interrupted"
    assert not (tmp_path / "last.pt").exists()


def test_legal_but_useless_settings_get_a_one_line_warning_before_the_first_step(tmp_path, caplog):
    from sensreg.run.lifecycle import useless_settings

    assert useless_settings(config(), 1080, 10) == []  # the small run is a sensible one
    cfg = config(sens={"name": "unspec", "lam": 0.999, "classes": 10}, trainer={"batch_size": 2000, "epochs": 1})
    found = useless_settings(cfg, 1080, 10)  # BASE: 1200 samples, 10 % held out for validation
    assert len(found) == 3 and all("\n" not in w for w in found)
    assert "sens.lam=0.999" in found[0] and "1 step(s)" in found[0] and "near chance" in found[0]
    assert "trainer.batch_size=2000" in found[1] and "1080 samples" in found[1]
    assert "sens.classes=10" in found[2]
    with caplog.at_level("WARNING", logger="sensreg"):
        train(cfg, tmp_path / "run")
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert [w.removeprefix("warning: ") for w in warned[:3]] == found
    # A step schedule's milestone after the last epoch never takes effect; one at the last epoch does
    # (from epoch M + 1 on), as do fractions of the run and epochs counted back from its end.
    late = config(eta_schedule={"name": "step", "milestones": [1, 3, 7]}, lam_schedule={"name": "step", "milestones": [2]},
                  trainer={"epochs": 3})
    assert useless_settings(late, 1080, 10) == [
        "eta_schedule.milestones: 3, 7 come(s) after the last epoch (trainer.epochs=3), so the factor never changes "
        "there; give epochs of the run, or fractions of it (eta_schedule.milestones=[0.5,0.75])."]
    within = config(eta_schedule={"name": "step", "milestones": [0.5, 2, -1]}, trainer={"epochs": 3})
    assert useless_settings(within, 1080, 10) == []
    # A fraction is never a mistake: 0.8 of a one-epoch try (the README's) is past its end only
    # because the run is short, and the fix the warning suggested (fractions) warned again.
    short = config(eta_schedule={"name": "step", "milestones": [0.8]}, trainer={"epochs": 1})
    assert useless_settings(short, 1080, 10) == []
    # A threshold search whose patience outlasts the run never prunes.
    assert useless_settings(config(prune={"name": "search", "patience": 3}, trainer={"epochs": 3}), 1080, 10) == [
        "prune.patience=3: a threshold search waits for that many epochs without a lower validation loss, and "
        "the run has 3: nothing will be pruned. Give a patience below trainer.epochs (0: a search after every epoch)."]
    assert useless_settings(config(prune={"name": "search", "patience": 2}, trainer={"epochs": 3}), 1080, 10) == []
    presets = resources.files("sensreg.configs") / "experiment"
    for preset in (p.name.removesuffix(".yaml") for p in presets.iterdir() if p.name.endswith(".yaml")):
        assert useless_settings(TrainConfig.from_dict(composed(f"experiment={preset}")), 60_000, 10) == [], preset
