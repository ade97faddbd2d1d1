"""The command line as a user meets it: subprocesses of the installed `sensreg` command."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from conftest import REPO, TINY, needs_mnist, run_dirs, run_in_process, sensreg


def test_help_lists_commands(tmp_path):
    out = sensreg("--help", cwd=tmp_path)
    assert out.returncode == 0
    assert "train" in out.stdout and "eval" in out.stdout
    out = sensreg("train", "--help", cwd=tmp_path)
    assert out.returncode == 0
    for group in ("model:", "sens:", "prune:", "schedule:", "lenet5", "unspec"):
        assert group in out.stdout


def test_version_is_the_packages(tmp_path):
    import tomllib

    out = sensreg("--version", cwd=tmp_path, module=True)
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert out.returncode == 0 and out.stdout == f"sensreg {version}\n"


def test_cfg_job_prints_composed_config(tmp_path):
    out = sensreg("train", "model=lenet5", "sens=unspec", "--cfg", "job", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "name: lenet5" in out.stdout and "name: unspec" in out.stdout
    assert not (tmp_path / "outputs").exists()


def test_train_writes_run_folder_and_eval_reproduces_it(tmp_path):
    out = sensreg("train", *TINY, "sens=spec", "prune.patience=0", "prune.tolerance=0.5", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (run,) = run_dirs(tmp_path / "outputs")
    for name in ("config.yaml", "metrics.csv", "summary.json", "model.pt", "train.log"):
        assert (run / name).is_file(), name

    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(rows[0]) == {"epoch", "eta", "lam", "train_loss", "val_loss", "val_error",
                            "remaining_pct", "threshold", "insens_mean", "insens_below_half", "seconds"}

    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert 0.0 <= summary["test_error"] <= 1.0 and summary["test_top5_error"] <= summary["test_error"]
    assert summary["sparsity"]["all"]["params"] == 266_610
    assert summary["flops"]["dense"] == 784 * 300 + 300 * 100 + 100 * 10
    for key in ("config_hash", "versions", "device", "wall_time_s", "thresholds", "compression"):
        assert key in summary
    # patience 0: a search after every epoch; tolerance 0.5 lets it prune something
    assert summary["thresholds"] and summary["remaining_pct"] < 100.0

    ckpt = torch.load(run / "model.pt", weights_only=True)
    assert ckpt["model_name"] == "lenet300"

    ev = sensreg("eval", str(run / "model.pt"), "--json", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert result["test_error"] == summary["test_error"]
    assert result["sparsity"]["prunable"]["remaining_pct"] == summary["remaining_pct"]
    assert result["matches_summary"] is True
    by_folder = sensreg("eval", str(run), "--json", cwd=tmp_path)  # the run folder itself
    assert by_folder.returncode == 0 and json.loads(by_folder.stdout)["matches_summary"] is True

    # the per-epoch line and the final table reach the log
    log = (run / "train.log").read_text()
    assert "epoch   2" in log and "fc1.weight" in log


def test_multirun_sweep_gives_one_folder_per_job(tmp_path):
    out = sensreg("train", "-m", *TINY, "trainer.epochs=1", "sens.lam=0,1e-4", "trainer.seed=0,1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    runs = run_dirs(tmp_path / "outputs" / "multirun")
    assert len(runs) == 4
    summaries = [json.loads((r / "summary.json").read_text()) for r in runs]
    assert all(s["status"] == "completed" for s in summaries)
    # the config hash ignores the seed: two configurations, two seeds each
    hashes = [s["config_hash"] for s in summaries]
    assert len(set(hashes)) == 2 and all(hashes.count(h) == 2 for h in hashes)
    # every job logs, to its own train.log and to the terminal
    for r in runs:
        assert "epoch   1 " in (r / "train.log").read_text(), r
        assert str(r) in out.stdout


def test_python_dash_m_entry_point(tmp_path):
    out = sensreg("train", *TINY, "trainer.epochs=1", "sens=none", "prune=none", cwd=tmp_path, module=True)
    assert out.returncode == 0, out.stderr
    assert len(run_dirs(tmp_path / "outputs")) == 1


@pytest.mark.parametrize("override, must_mention", [
    ("model=lenet7", ["lenet7", "lenet300", "lenet5"]),
    ("sens=specific", ["specific", "spec", "unspec"]),
    ("sens.lam=-1", ["sens.lam", ">= 0"]),
    ("trainer.epochs=0", ["trainer.epochs", ">= 1"]),
    ("trainer.batch_size=0", ["trainer.batch_size"]),
    ("data.val_fraction=1.5", ["data.val_fraction", "between 0 and 1"]),
    ("prune.tolerance=-0.1", ["prune.tolerance"]),
    ("sens.output=softmax", ["sens.output", "logits", "probs"]),
    ("trainer.epochz=3", ["epochz"]),
    ("optim.lr=-0.1", ["optim.lr", "> 0"]),
    ("trainer.checkpoint_every=-1", ["trainer.checkpoint_every", ">= 0"]),
    ("trainer.resume=/no/such/run", ["trainer.resume=/no/such/run", "no such run folder"]),
    ("data=cifar7", ["cifar7", "mnist", "synthetic"]),
    ("trainer.init=/no/such/model.pt", ["trainer.init=/no/such/model.pt", "does not exist"]),
    ("trainer.batch_size=1.5", ["trainer.batch_size=1.5", "integer"]),
    ("trainer.deterministic=maybe", ["trainer.deterministic='maybe'", "true or false"]),
    ("data.num_train=1", ["data.num_train=1", ">= 2"]),
    ("hydra.run.dir=README.md/run", ["hydra.run.dir=README.md/run", "is a file"]),
    ("hydra.run.dir=/proc/1/sensreg_run", ["hydra.run.dir", "not writable"]),
    ("eta_schedule=linear", ["eta_schedule=linear", "constant, cosine, step", "schedule@eta_schedule=step"]),
    ("schedule=step", ["schedule=step", "eta_schedule and lam_schedule", "eta_schedule=step"]),
])
def test_bad_input_is_a_short_message_before_any_training(tmp_path, override, must_mention):
    (tmp_path / "README.md").write_text("a file where a folder is asked for\n")
    out = sensreg("train", *TINY, override, cwd=tmp_path)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    for word in must_mention:
        assert word in text, (word, text)
    assert "Traceback" not in text
    assert "epoch" not in out.stdout  # nothing trained
    assert not run_dirs(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_requested_without_gpu_is_refused(tmp_path):
    out = sensreg("train", *TINY, "trainer.device=cuda", cwd=tmp_path)
    assert out.returncode == 2
    assert "trainer.device=cuda" in out.stderr and "Traceback" not in out.stderr


def test_eval_refuses_bad_checkpoints(tmp_path):
    missing = sensreg("eval", str(tmp_path / "nope.pt"), cwd=tmp_path)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    bad = sensreg("eval", str(garbage), cwd=tmp_path)
    assert bad.returncode == 2 and str(garbage) in bad.stderr and "Traceback" not in bad.stderr
    foreign = tmp_path / "state_dict.pt"
    torch.save({"w": torch.zeros(2)}, foreign)
    bad = sensreg("eval", str(foreign), cwd=tmp_path)
    assert bad.returncode == 2 and "not a sensreg model checkpoint" in bad.stderr
    unfinished = tmp_path / "run"
    unfinished.mkdir()
    (unfinished / "summary.json").write_text('{"status": "stopped"}')
    bad = sensreg("eval", str(unfinished), cwd=tmp_path)
    assert bad.returncode == 2 and "has no model.pt" in bad.stderr and "trainer.resume" in bad.stderr
    nothing = tmp_path / "elsewhere"  # not a run folder at all: no resume advice
    nothing.mkdir()
    bad = sensreg("eval", str(nothing), cwd=tmp_path)
    assert bad.returncode == 2 and "is not a run folder" in bad.stderr and "resume" not in bad.stderr


def test_a_mistyped_key_names_the_key_it_most_likely_meant(tmp_path):
    out = sensreg("train", *TINY, "trainer.epoch=3", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "did you mean trainer.epochs?" in out.stderr and "+trainer.epoch" not in out.stderr
    assert not (tmp_path / "outputs").exists()  # refused before Hydra made a run folder


@pytest.mark.parametrize("overrides, expected", [
    (["optim=sgd", "optim.betas=[0.8,0.9]"], "optim.betas is read by optim=adam only, and this command chooses "
                                             "optim=sgd. Drop optim.betas, or choose optim=adam."),
    (["data.num_train=300", "data=mnist"], "data.num_train is read by data=synthetic only"),
    (["eta_schedule=cosine", "eta_schedule.gamma=0.5"], "eta_schedule.gamma is read by eta_schedule=step only, "
                                                        "and this command chooses eta_schedule=cosine"),
])
def test_a_key_another_option_reads_is_named_with_that_option(tmp_path, monkeypatch, capsys, in_process_cli,
                                                              overrides, expected):
    # Hydra's own answer would suggest +optim.betas, which would be accepted and then ignored.
    monkeypatch.chdir(tmp_path)
    assert run_in_process("train", *TINY, *overrides) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert expected in err and "+optim" not in err and "Traceback" not in err
    assert not (tmp_path / "outputs").exists()


def test_a_refused_config_removes_its_run_folder_but_never_the_folder_it_runs_in(tmp_path):
    # The dated folders Hydra made above the run folder go; the (now empty) working folder stays.
    here = tmp_path / "project"
    here.mkdir()
    out = sensreg("train", *TINY, "sens.lam=-1", "hydra.run.dir=runs/2026/a", cwd=here)
    assert out.returncode == 2 and "sens.lam" in out.stderr
    assert here.is_dir() and not any(here.iterdir())
    out = sensreg("train", *TINY, "sens.lam=-1", f"hydra.run.dir={tmp_path / 'run'}", cwd=here)
    assert out.returncode == 2 and here.is_dir() and tmp_path.is_dir() and not (tmp_path / "run").exists()


def test_missing_dataset_says_where_it_looked(tmp_path):
    out = sensreg("train", "~experiment", "data=mnist", f"data.root={tmp_path / 'no' / 'such' / 'dir'}",
                  "trainer.epochs=1", cwd=tmp_path)
    assert out.returncode != 0
    assert str(tmp_path / "no" / "such" / "dir" / "MNIST" / "raw") in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "no").exists()  # the folders the failed download made are gone


@pytest.mark.slow
@needs_mnist
def test_lenet300_one_epoch_on_real_mnist(tmp_path):
    """The real check: LeNet-300-100, one epoch of MNIST, under 4 % test error (the groups' own
    defaults: the main job's schedule needs at least 5 epochs)."""
    out = sensreg("train", "~experiment", "model=lenet300", "trainer.epochs=1", "trainer.device=cpu",
                  f"data.root={REPO / 'data'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (run,) = run_dirs(tmp_path / "outputs")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_error"] < 0.04, summary["test_error"]
    assert summary["sparsity"]["all"]["params"] == 266_610


@pytest.mark.parametrize("spelling", ["eta_schedule=constant", "lam_schedule=step"])
def test_a_section_chosen_by_its_own_name_is_taken_for_the_group_choice(tmp_path, spelling):
    # `sensreg train --help` lists the section eta_schedule; Hydra wants schedule@eta_schedule.
    section, _, option = spelling.partition("=")
    out = sensreg("train", spelling, "--cfg", "job", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == sensreg("train", f"schedule@{spelling}", "--cfg", "job", cwd=tmp_path).stdout
    assert f"{section}:\n  name: {option}" in out.stdout
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("overrides, expected", [
    (["prune.tolerance=-1"], "prune.tolerance is not read by prune=gmp, the option this command runs with (from "
                             "experiment=default and the defaults), so the run would ignore it. Drop prune.tolerance, "
                             "or choose prune=search."),
    (["experiment=lenet5_spec", "data.num_train=5"], "data.num_train is not read by data=mnist, the option this "
                                                     "command runs with (from experiment=lenet5_spec and the defaults)"),
    (["~experiment", "eta_schedule.milestones=[2]"], "eta_schedule.milestones is not read by eta_schedule=constant, "
                                                     "the option this command runs with (from the defaults)"),
    (["experiment=lenet300_quick", "prune=none", "prune.patience=3"], None),  # the command line's choice: checked first
    (["~experiment", "prune.target=50x"], "prune.target is not read by prune=search, the option this command runs "
                                          "with (from the defaults), so the run would ignore it. Drop prune.target, "
                                          "or choose one of prune=gmp, prune=gmp_units."),
])
def test_a_key_the_chosen_option_does_not_read_is_refused_whoever_chose_it(tmp_path, monkeypatch, capsys,
                                                                           in_process_cli, overrides, expected):
    monkeypatch.chdir(tmp_path)
    tiny = ["trainer.epochs=1", "trainer.device=cpu"] + ([] if any(o.startswith("data.") for o in overrides)
                                                       else ["data=synthetic", "data.num_train=400", "data.num_test=200"])
    assert run_in_process("train", *tiny, *overrides) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert (expected or "prune.patience is read by prune=search only") in err and "Traceback" not in err
    assert not (tmp_path / "outputs").exists()
