"""Records, exit codes and interrupts: what the command line answers when a dataset is missing, a
sweep's jobs fail, `sensreg eval` is given a checkpoint that does not add up, Ctrl-C comes at a
late phase of a run, a resume finds no last.pt, a run folder is removed under a run, and a path
is longer than the file system takes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from conftest import config, sensreg


def test_a_missing_dataset_is_exit_2_one_message_and_no_run_folder(tmp_path):
    # ImageNet cannot be downloaded: the loader says so at once, wherever the tests run.
    run = tmp_path / "run"
    out = sensreg("train", "~experiment", "data=imagenet", f"data.root={tmp_path / 'nowhere'}",
                  "trainer.epochs=1", "trainer.device=cpu", f"hydra.run.dir={run}", cwd=tmp_path, module=True)
    assert out.returncode == 2, out.stderr
    both = out.stdout + out.stderr
    assert both.count("ImageNet is not in") == 1 and "Nothing was trained." in out.stderr
    assert "Traceback" not in both
    assert not run.exists() and not (tmp_path / "nowhere").exists()


SWEEP = ["train", "-m", "~experiment", "data=synthetic", "data.num_train=200", "data.num_test=50", "trainer.epochs=1",
         "trainer.device=cpu", "trainer.progress=false"]


def test_a_sweep_whose_jobs_failed_ends_with_one_line_counting_them_and_exit_1(tmp_path):
    sweep = tmp_path / "sweep"
    # Four jobs: one trains, two are refused (sens.lam=-1), one diverges in its second epoch.
    out = sensreg(*SWEEP, "trainer.epochs=2", "prune=none", "schedule@eta_schedule=step", "eta_schedule.milestones=[1]",
                  "eta_schedule.gamma=1,1e20", "schedule@lam_schedule=constant", "sens.lam=1e-4,-1", f"hydra.sweep.dir={sweep}", cwd=tmp_path, module=True)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 3 of 4 jobs of the sweep failed:"), last
    assert last.count("sens.lam=-1") == 2 and last.count("refused, no run folder") == 2
    assert f"eta_schedule.gamma=1e+20 sens.lam=0.0001 (run folder {sweep / '2_lenet300_spec'})" in last
    statuses = {p.parent.name: json.loads(p.read_text())["status"] for p in sweep.rglob("summary.json")}
    assert statuses == {"0_lenet300_spec": "completed", "2_lenet300_spec": "failed"}
    # Every job refused: nothing was trained, exit code 2 as for a single refused run.
    out = sensreg(*SWEEP, "sens.lam=-1,-2", f"hydra.sweep.dir={tmp_path / 'refused'}", cwd=tmp_path, module=True)
    assert out.returncode == 2 and "2 of 2 jobs of the sweep failed" in out.stderr
    # A sweep without failures says nothing more and exits 0.
    out = sensreg(*SWEEP, "sens.lam=1e-4,1e-3", f"hydra.sweep.dir={tmp_path / 'fine'}", cwd=tmp_path, module=True)
    assert out.returncode == 0 and "jobs of the sweep failed" not in out.stderr


def test_eval_names_unusable_weights_and_a_network_its_summary_does_not_describe(tmp_path):
    from sensreg.run.lifecycle import train

    run, other = tmp_path / "run", tmp_path / "other"
    train(config(), run)
    train(config(data={"num_classes": 5}), other)  # the same network for 5 classes: fc3 is 5x100
    payload = torch.load(run / "model.pt", weights_only=True)
    for name, change, expected in [
        ("nan.pt", lambda t: torch.full_like(t, float("nan")), "fc3.bias holds nan or inf"),
        ("inf.pt", lambda t: torch.full_like(t, float("-inf")), "fc3.bias holds nan or inf"),
        ("ints.pt", lambda t: t.long(), "fc3.bias holds int64 values, not floats"),
    ]:
        entry = payload["sparse"]["fc3.bias"]  # a pruned tensor: its kept values are stored
        bad = {**payload, "sparse": {**payload["sparse"], "fc3.bias": {**entry, "values": change(entry["values"])}}}
        torch.save(bad, tmp_path / name)
        out = sensreg("eval", str(tmp_path / name), cwd=tmp_path, module=True)
        assert out.returncode == 2 and expected in out.stderr and str(tmp_path / name) in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    shutil.copy(other / "model.pt", run / "model.pt")  # another run's model.pt in this run's folder
    out = sensreg("eval", str(run), cwd=tmp_path, module=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "is not the network that summary.json beside it describes" in out.stderr
    assert "fc3.weight is 5x100 here, 10x100 in the summary" in out.stderr
    # The same file outside any run folder is evaluated: there is nothing to contradict it.
    assert sensreg("eval", str(other / "model.pt"), cwd=tmp_path, module=True).returncode == 0


def test_ctrl_c_during_eval_is_one_line_and_exit_130(tmp_path):
    from sensreg.run.lifecycle import train

    train(config(), tmp_path / "run")
    # A real SIGINT while the test split is evaluated.
    script = ("import signal, sys\n"
              "import sensreg.commands.reevaluate as r\n"
              "original = r.evaluate\n"
              "def evaluate(*args, **kwargs):\n"
              "    signal.raise_signal(signal.SIGINT)\n"
              "    return original(*args, **kwargs)\n"
              "r.evaluate = evaluate\n"
              "from sensreg.commands.cli import main\n"
              "main(sys.argv[1:])\n")
    out = subprocess.run([sys.executable, "-c", script, "eval", str(tmp_path / "run")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 130, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "interrupted" in out.stderr
