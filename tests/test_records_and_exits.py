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

import pytest
import torch

from conftest import HANG_S, assert_same_run, config, sensreg


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


# A suite started in the background (`nohup ... &`) hands its children SIGINT ignored, and Python
# then never turns a SIGINT into KeyboardInterrupt: the commands below get a terminal's handling.
AS_AT_A_TERMINAL = "import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"


def test_ctrl_c_during_eval_is_one_line_and_exit_130(tmp_path):
    from sensreg.run.lifecycle import train

    train(config(), tmp_path / "run")
    # A real SIGINT while the test split is evaluated.
    script = (AS_AT_A_TERMINAL + "import signal, sys\n"
              "import sensreg.run.reevaluate as r\n"
              "original = r.evaluate\n"
              "def evaluate(*args, **kwargs):\n"
              "    signal.raise_signal(signal.SIGINT)\n"
              "    return original(*args, **kwargs)\n"
              "r.evaluate = evaluate\n"
              "from sensreg.commands.cli import main\n"
              "main(sys.argv[1:])\n")
    out = subprocess.run([sys.executable, "-c", script, "eval", str(tmp_path / "run")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=HANG_S)
    assert out.returncode == 130, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "interrupted" in out.stderr


def signal_in_evaluation(monkeypatch, split_size: int, nth: int = 1) -> dict:
    """A real SIGINT while the ``nth`` evaluation of a split of ``split_size`` samples yields its
    first batch; returns the counts: those evaluations, and the batches yielded after the signal."""
    import signal

    import sensreg.run.evaluate as evaluate_module

    original, seen = evaluate_module.batches, {"evaluations": 0, "batches_after": 0, "sent": False}

    def batches(split, *args, **kwargs):
        mine = len(split) == split_size
        seen["evaluations"] += mine
        for i, batch in enumerate(original(split, *args, **kwargs)):
            if seen["sent"]:
                seen["batches_after"] += 1
            elif mine and seen["evaluations"] == nth and i == 0:
                signal.raise_signal(signal.SIGINT)
                seen["sent"] = True
            yield batch

    monkeypatch.setattr(evaluate_module, "batches", batches)
    return seen


def test_ctrl_c_in_the_final_test_evaluation_stops_at_once_and_the_resume_finishes_the_run(
        tmp_path, monkeypatch, capfd):
    from sensreg.run.interrupt import Interrupted
    from sensreg.run.lifecycle import resume_state, train

    cfg = config(data={"eval_batch_size": 10})  # the test split: 10 batches of 10
    train(cfg, tmp_path / "full")
    seen = signal_in_evaluation(monkeypatch, 100)
    run = tmp_path / "cut"
    with pytest.raises(Interrupted):
        train(cfg, run)
    assert seen["batches_after"] == 0  # the stop came before the next batch, not after the split
    assert "SIGINT: stopping after the training step or evaluation batch under way" in capfd.readouterr().err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["checkpoint_to_resume"] == "last.pt"
    assert not (run / "model.pt").exists()
    monkeypatch.undo()
    train(cfg, run, resume_state(cfg, run / "last.pt"))
    assert_same_run(tmp_path / "full", run)


def test_ctrl_c_in_the_threshold_search_stops_within_an_evaluation_batch_and_the_resume_matches(
        tmp_path, monkeypatch):
    from sensreg.run.interrupt import Interrupted
    from sensreg.run.lifecycle import resume_state, train

    cfg = config(prune={"name": "search", "patience": 0, "tolerance": 0.1}, sens={"name": "spec", "lam": 1e-3},
                 data={"eval_batch_size": 10, "noise": 3.0}, trainer={"epochs": 2, "deterministic": True})
    train(cfg, tmp_path / "full")
    assert len(json.loads((tmp_path / "full" / "summary.json").read_text())["thresholds"]) == 2
    # Epoch 2's end: its validation, then the search's evaluations; the signal in the third.
    per_epoch = json.loads((tmp_path / "full" / "summary.json").read_text())["thresholds"][0]["evaluations"] + 2
    seen = signal_in_evaluation(monkeypatch, 30, nth=per_epoch + 3)
    run = tmp_path / "cut"
    with pytest.raises(Interrupted):
        train(cfg, run)
    assert seen["sent"] and seen["batches_after"] == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs_completed"] == 1
    monkeypatch.undo()
    train(cfg, run, resume_state(cfg, run / "last.pt"))
    assert_same_run(tmp_path / "full", run)


def test_ctrl_c_to_the_command_in_a_threshold_search_stops_it_within_one_evaluation_batch(tmp_path):
    import os
    import signal

    # The search's evaluation batches are counted in a file; at its third batch the process gets
    # a real SIGINT (sent to itself, so that where it lands does not depend on timing). A search
    # evaluates the validation split (3 batches) a dozen times or more: a stop honoured within one
    # batch evaluates at most one more.
    counted = tmp_path / "batches"
    script = ("import os, signal, sys\n"
              "import sensreg.method.prune_schedules as p, sensreg.run.evaluate as e\n"
              "search, batches = p.search_threshold, e.batches\n"
              "def counted(*a, **k):\n"
              "    for b in batches(*a, **k):\n"
              f"        with open({str(counted)!r}, 'a') as f: f.write('batch\\n')\n"
              f"        if len(open({str(counted)!r}).read().split()) == 3: os.kill(os.getpid(), signal.SIGINT)\n"
              "        yield b\n"
              "def counted_search(*a, **k):\n"
              "    e.batches = counted\n"
              "    return search(*a, **k)\n"
              "p.search_threshold = counted_search\n"
              "from sensreg.commands.cli import main\n"
              "main(sys.argv[1:])\n")
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", AS_AT_A_TERMINAL + script, "train", "~experiment", "data=synthetic",
                           "data.num_train=300", "data.num_test=100", "data.eval_batch_size=10", "trainer.epochs=2",
                           "trainer.device=cpu", "prune=search", "prune.patience=0", f"hydra.run.dir={run}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=HANG_S,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert len(counted.read_text().split()) <= 4  # the third batch, then at most the one under way
    assert "SIGINT: stopping after the training step or evaluation batch under way" in err
    assert "stopped in the validation and pruning decision of epoch 1" in out
    # Stopped before its first checkpoint, the run had nothing to keep: its folder goes, so that
    # the command as it was runs again.
    assert "before the first epoch ended: nothing was kept" in err and not run.exists()


def test_resume_without_last_pt_starts_over_and_keeps_the_earlier_records(tmp_path):
    run = tmp_path / "run"
    args = ["train", "~experiment", "data=synthetic", "data.num_train=200", "data.num_test=50", "trainer.epochs=1",
            "trainer.device=cpu", f"hydra.run.dir={run}"]
    assert sensreg(*args, cwd=tmp_path, module=True).returncode == 0
    (run / "last.pt").unlink()  # a run killed before its checkpoint, or with trainer.checkpoint_every=0
    before = {name: (run / name).read_bytes() for name in ("summary.json", "metrics.csv", "config.yaml", "train.log")}
    out = sensreg(*args, "trainer.resume=true", cwd=tmp_path, module=True)
    assert out.returncode == 0, out.stderr
    (aside,) = run.glob("earlier-run-*")
    assert f"found no last.pt in {run} to continue from, so the run starts over" in out.stdout
    assert str(aside) in out.stdout and str(aside) in (run / "train.log").read_text()
    assert {name: (aside / name).read_bytes() for name in before} == before
    assert json.loads((run / "summary.json").read_text())["status"] == "completed" and (run / "last.pt").is_file()


def test_a_run_folder_removed_under_its_run_stops_the_run_and_is_not_made_again(tmp_path):
    import os
    import shutil
    import time

    def under_way(run: Path, checkpointed: bool = False) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "sensreg", "train", "~experiment", "data=synthetic",
                                 "data.num_train=20000", "data.num_test=200", "trainer.epochs=100", "trainer.device=cpu",
                                 f"hydra.run.dir={run}"], cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.time() + HANG_S
        # (last.pt is written after the epoch's line: waited for where the message depends on it)
        while not ((run / "train.log").exists() and "epoch   1 " in (run / "train.log").read_text()
                   and (not checkpointed or (run / "last.pt").exists())):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.05)
        return proc

    # The whole folder removed: the run stops at its next write and does not make it again. It is
    # moved away in one step and then deleted: `rm -rf` removes the files one by one, and the run
    # may meet the missing lock file or one of its own files first (each its own message).
    gone = tmp_path / "gone"
    proc = under_way(gone)
    gone.rename(tmp_path / "deleted")
    shutil.rmtree(tmp_path / "deleted", ignore_errors=True)  # (the run may be writing a file there)
    out, err = proc.communicate(timeout=HANG_S)
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert f"the run folder {gone} was removed while the run went on" in err
    assert not gone.exists()
    # Its lock file removed: another process may have taken the folder; the run writes no more.
    unlocked = tmp_path / "unlocked"
    proc = under_way(unlocked, checkpointed=True)
    (unlocked / ".lock").unlink()
    out, err = proc.communicate(timeout=HANG_S)
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert f"the lock file {unlocked / '.lock'} was removed" in err and f"trainer.resume={unlocked}" in err
    assert json.loads((unlocked / "summary.json").read_text())["status"] == "running"  # left as it was
    assert not (unlocked / ".lock").exists()


LONG_NAME = "n" * 256  # one byte over NAME_MAX
LONG_PATH = "/".join(["p" * 200] * 21)  # 4220 bytes: over PATH_MAX, every name within NAME_MAX


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir", "trainer.init"])
@pytest.mark.parametrize("path, expected", [
    (LONG_NAME, "256 bytes long, and the file system takes at most 255 bytes for one name"),
    (LONG_PATH, "and the system takes paths of at most 4095 bytes"),
])
def test_a_path_beyond_the_systems_limits_is_refused_before_any_work(tmp_path, monkeypatch, capsys, in_process_cli,
                                                                     key, path, expected):
    from conftest import run_in_process

    monkeypatch.chdir(tmp_path)
    mode = ["-m"] if key == "hydra.sweep.dir" else []
    code = run_in_process("train", *mode, "~experiment", "data=synthetic", "trainer.epochs=1", "trainer.device=cpu",
                          f"{key}={tmp_path / path}")
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and f"{key}=" in err and expected in err and f"Choose a shorter path for {key}" in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no run folder, no outputs/


def interrupted_command(tmp_path, module: str, function: str, *args: str) -> subprocess.CompletedProcess:
    """The sensreg command ``args`` with a real SIGINT raised where ``module.function`` is first called."""
    script = (AS_AT_A_TERMINAL + "import importlib, signal, sys\n"
              f"m = importlib.import_module({module!r})\n"
              f"original = m.{function}\n"
              "def interrupted(*args, **kwargs):\n"
              "    signal.raise_signal(signal.SIGINT)\n"
              "    return original(*args, **kwargs)\n"
              f"m.{function} = interrupted\n"
              "from sensreg.commands.cli import main\n"
              "main(sys.argv[1:])\n")
    return subprocess.run([sys.executable, "-c", script, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=HANG_S)


@pytest.mark.parametrize("command, module, function", [
    ("report", "sensreg.records.plots", "epochs_plot"),  # the report draws its plots
    ("compare", "sensreg.records.compare", "write_csv"),  # compare writes its table
])
def test_ctrl_c_during_report_or_compare_is_one_line_and_exit_130(tmp_path, command, module, function):
    from sensreg.run.lifecycle import train

    train(config(), tmp_path / "run")
    out = interrupted_command(tmp_path, module, function, command, str(tmp_path / "run"))
    assert out.returncode == 130, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert f"sensreg {command} stopped by Ctrl-C; no file was left half-written" in out.stderr


def test_ctrl_c_during_the_set_up_of_a_run_leaves_no_run_folder(tmp_path):
    # While the dataset is loaded: the run stops before its first step, and the summary, config and
    # log it had written go with the folder, so that the command as it was runs again.
    run = tmp_path / "run"
    out = interrupted_command(tmp_path, "sensreg.run.lifecycle", "load_dataset", "train", "~experiment",
                              "data=synthetic", "data.num_train=200", "trainer.epochs=1", "trainer.device=cpu",
                              f"hydra.run.dir={run}")
    assert out.returncode == 130, out.stderr
    assert "Traceback" not in out.stderr and "before the first epoch ended: nothing was kept" in out.stderr
    assert not run.exists()
