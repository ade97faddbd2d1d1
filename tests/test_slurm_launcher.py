"""Sweeps through Hydra's submitit launcher: the Slurm job script that configs/hydra/launcher/
slurm.yaml produces, and a real sweep through submitit's local executor, requeue included."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
import submitit  # noqa: E402  (installed with the plugin)

from sensreg.commands import cli  # noqa: E402
from sensreg.commands import train as train_command  # noqa: E402

from conftest import HANG_S, TINY, run_dirs, sensreg  # noqa: E402  (the CLI helpers of the CLI tests)


def slurm_job_script(tmp_path: Path, monkeypatch, overrides: list[str]) -> tuple[str, submitit.AutoExecutor]:
    """The sbatch script that `sensreg train -m hydra/launcher=slurm OVERRIDES` would submit,
    built by the plugin's own launch() and submitit's Slurm executor; nothing is submitted."""
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    # submitit refuses to build a Slurm executor where there is no `srun`; a stand-in will do,
    # as it is never called.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    built: list[tuple[str, submitit.AutoExecutor]] = []

    class Recording(submitit.AutoExecutor):
        def map_array(self, fn, *iterables):  # instead of sbatch: keep the script, submit nothing
            built.append((self._executor._make_submission_file_text("COMMAND", "uid"), self))
            return []

    monkeypatch.setattr(submitit, "AutoExecutor", Recording)
    sweep_dir = tmp_path / "sweep"
    with initialize_config_module(config_module="sensreg.configs", version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", f"hydra.sweep.dir={sweep_dir}", *overrides],
                      return_hydra_config=True)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=train_command.train_task, config=cfg)
    assert launcher.launch([["sens.lam=1e-5"], ["sens.lam=1e-4"]], initial_job_idx=0) == []
    (job,) = built  # the whole sweep is one job array
    return job


def sbatch_flags(script: str) -> dict[str, str]:
    flags = [line.split(None, 1)[1] for line in script.splitlines() if line.startswith("#SBATCH ")]
    return dict(f.lstrip("-").split("=", 1) for f in flags)


def test_slurm_launcher_defaults_make_a_requeueable_single_gpu_job(tmp_path, monkeypatch):
    script, executor = slurm_job_script(tmp_path, monkeypatch, ["hydra.launcher.partition=gpu"])
    flags = sbatch_flags(script)
    assert flags["ntasks-per-node"] == "1" and flags["gpus-per-node"] == "1" and flags["nodes"] == "1"
    assert flags["cpus-per-task"] == "8" and flags["mem"] == "32GB" and flags["time"] == "240"
    assert flags["partition"] == "gpu"
    assert "account" not in flags and "qos" not in flags  # the cluster's defaults
    # SIGUSR2 five minutes before the limit, which sensreg turns into a checkpoint before the
    # requeue; and a job that hits its time limit is requeued, up to 10 times.
    assert flags["signal"] == "USR2@300"
    assert executor._executor.max_num_timeout == 10
    # submitit's files (pickles, logs) sit in the sweep folder
    assert flags["output"].startswith(str(tmp_path / "sweep" / ".submitit") + "/")


def test_slurm_launcher_ddp_job_has_one_task_per_gpu(tmp_path, monkeypatch):
    script, _ = slurm_job_script(tmp_path, monkeypatch, ["hydra.launcher.tasks_per_node=4",
                                                         "hydra.launcher.gpus_per_node=4"])
    flags = sbatch_flags(script)
    assert flags["ntasks-per-node"] == "4" and flags["gpus-per-node"] == "4" and flags["nodes"] == "1"
    assert "partition" not in flags
    # srun starts the tasks: one process per GPU, each with its own rank
    assert "srun " in script and "COMMAND" in script


def test_cfg_hydra_shows_the_slurm_launcher(tmp_path):
    out = sensreg("train", "hydra/launcher=slurm", "hydra.launcher.timeout_min=30", "--cfg", "hydra", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    launcher = yaml.safe_load(out.stdout)["hydra"]["launcher"]
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher["timeout_min"] == 30 and launcher["max_num_timeout"] == 10


def test_missing_plugin_is_a_short_message(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "hydra_plugins.hydra_submitit_launcher", None)  # as if not installed
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "-m", "hydra/launcher=slurm", "sens.lam=1e-5,1e-4"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "hydra/launcher=slurm" in err and "pip install -e '.[slurm]'" in err


@pytest.mark.slow
def test_sweep_through_submitit_requeues_and_resumes(tmp_path):
    """Two jobs through submitit's local executor; one gets SIGUSR2 (what Slurm sends before the
    time limit) mid-run, checkpoints, is requeued by submitit and continues from last.pt."""
    epochs = 12
    sweep_dir = tmp_path / "sweep"
    cmd = ["sensreg", "train", "-m", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep_dir}",
           "trainer.resume=true", *TINY, "data.num_train=2000", "trainer.batch_size=20",
           f"trainer.epochs={epochs}", "prune=none", "sens.lam=0,1e-4"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        # Job 0's task process holds its run folder's lock; signal it once an epoch is done.
        job0 = sweep_dir / "0_lenet300_spec"
        deadline = time.time() + HANG_S
        while not (job0 / "metrics.csv").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        pid = int((job0 / ".lock").read_text().split()[0])
        os.kill(pid, signal.SIGUSR2)
        output, _ = proc.communicate(timeout=HANG_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output

    runs = run_dirs(sweep_dir)
    assert [r.name for r in runs] == ["0_lenet300_spec", "1_lenet300_spec"]
    summaries = [json.loads((r / "summary.json").read_text()) for r in runs]
    assert all(s["status"] == "completed" and s["epochs_completed"] == epochs for s in summaries)
    assert [yaml.safe_load((r / "config.yaml").read_text())["sens"]["lam"] for r in runs] == [0, 1e-4]
    # job 0 stopped part-way, was run again by submitit and continued from its checkpoint
    (resumed,) = summaries[0]["resumed"]
    assert 1 <= resumed["epoch"] < epochs
    assert "resumed" not in summaries[1]
    with open(runs[0] / "metrics.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(1, epochs + 1))
    log = (runs[0] / "train.log").read_text()
    assert "SIGUSR2: stopped" in log and "resumed from last.pt" in log
    # submitit started three task processes: one per job, and job 0 once more after its requeue
    logs = "".join(p.read_text() for p in (sweep_dir / ".submitit").rglob("*_log.out"))
    assert logs.count("Starting with JobEnvironment") == 3
