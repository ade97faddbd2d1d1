"""`sensreg compare`: a tree of fake run folders with known figures, then two real tiny runs.

The fake tree (``tree`` fixture), under outputs/ like the real thing:

    runs/2026-01-01/a_spec_s{0,1,2}      spec, λ=1e-4, config hash hA, seeds 0-2
                                         (remaining 4/5/6 %, test error 2.0/2.2/2.4 %)
    multirun/2026-01-01/12-00-00/
        0_loss_s0, 1_loss_s1             loss, λ=1e-4, hash hB (remaining 8/10 %, error 1.8/2.0 %)
        2_loss_running                   hash hB, seed 2, still running at epoch 3 of 20
        3_unspec_failed                  hash hC, failed before any result
        4_corrupt                        summary.json cut off in the middle
        5_no_summary                     config.yaml only

Pareto front of the five finished runs (remaining %, error %): a_spec_s0 (4, 2.0) has the fewest
parameters and 0_loss_s0 (8, 1.8) the lowest error; each of the other three is beaten by one of
these two. Grouped by hash: hA (5 ± 1, 2.2 ± 0.2, n=3) and hB (9, 1.9, n=2) are both optimal.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from sensreg.records import compare as cmp
from sensreg.records.compare import output as compare_output
from sensreg.records.folder import LOCK_NAME

import conftest
from conftest import assert_png


def make_run(folder: Path, *, sens: str, lam: float, seed: int, config_hash: str, status: str = "completed",
             error_pct: float | None = None, remaining: float | None = None, model: str = "lenet300",
             data: str = "mnist", epochs: int = 20, epochs_done: int | None = None,
             prune: dict | None = None, preset: str | None = None) -> Path:
    """A run folder as a training run writes it, with the figures given (only what a run has so far).
    ``prune``: the config's prune section; ``preset``: the experiment Hydra records as chosen."""
    folder.mkdir(parents=True)
    config = {"data": {"name": data, "root": "data"}, "model": {"name": model},
              "sens": {"name": sens, "lam": lam, "output": "logits", "params": "all", "classes": None},
              "optim": {"name": "sgd", "lr": 0.05}, "trainer": {"epochs": epochs, "seed": seed,
                                                                "device": f"cuda:{seed}"}}
    if prune is not None:
        config["prune"] = prune
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))  # must not count as a run
    if preset is not None:
        record = {"hydra": {"runtime": {"choices": {"experiment": preset, "sens": sens}}}}
        (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(record))
    done = epochs if epochs_done is None else epochs_done
    with open(folder / "metrics.csv", "w") as f:
        f.write("epoch,eta,lam,train_loss,val_loss,val_error,remaining_pct,threshold,seconds\n")
        for e in range(1, done + 1):
            f.write(f"{e},0.05,{lam},0.5,0.4,0.05,{100 - e},0.01,1.5\n")
    summary = {"status": status, "config_hash": config_hash, "seed": seed, "model": model, "data": data,
               "sens": sens}
    if error_pct is not None:
        summary.update(test_error=error_pct / 100, remaining_pct=remaining, compression=100 / remaining,
                       wall_time_s=30.0 + seed, epochs_completed=epochs)
    if status == "failed":
        summary["error"] = "FloatingPointError: the loss became non-finite"
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


@pytest.fixture
def tree(tmp_path) -> Path:
    out = tmp_path / "outputs"
    day = out / "runs" / "2026-01-01"
    for seed, (rem, err) in enumerate([(4.0, 2.0), (5.0, 2.2), (6.0, 2.4)]):
        make_run(day / f"a_spec_s{seed}", sens="spec", lam=1e-4, seed=seed, config_hash="hA",
                 error_pct=err, remaining=rem)
    sweep = out / "multirun" / "2026-01-01" / "12-00-00"
    for seed, (rem, err) in enumerate([(8.0, 1.8), (10.0, 2.0)]):
        make_run(sweep / f"{seed}_loss_s{seed}", sens="loss", lam=1e-4, seed=seed, config_hash="hB",
                 error_pct=err, remaining=rem)
    running = make_run(sweep / "2_loss_running", sens="loss", lam=1e-4, seed=2, config_hash="hB",
                       status="running", epochs_done=3)
    (running / LOCK_NAME).write_text(f"{os.getpid()} {os.uname().nodename}\n")  # a live writer
    make_run(sweep / "3_unspec_failed", sens="unspec", lam=1e-3, seed=0, config_hash="hC", status="failed",
             epochs_done=1)
    corrupt = make_run(sweep / "4_corrupt", sens="spec", lam=1e-5, seed=0, config_hash="hD",
                       error_pct=1.0, remaining=1.0)
    text = (corrupt / "summary.json").read_text()
    (corrupt / "summary.json").write_text(text[: len(text) // 2])  # a half-written file
    (sweep / "multirun.yaml").write_text("hydra: {}\n")  # Hydra's record of the sweep, beside the jobs
    (sweep / "5_no_summary").mkdir()
    (sweep / "5_no_summary" / "config.yaml").write_text("model: {name: lenet300}\n")
    return out


def by_run(rows) -> dict[str, cmp.Row]:
    return {Path(r.run).name: r for r in rows}


def read(tree: Path) -> tuple[list[cmp.Row], list[cmp.Skipped]]:
    return cmp.read_runs(cmp.find_run_dirs([tree]), tree)


# --- reading -----------------------------------------------------------------------------------

def test_every_run_is_listed_and_unreadable_folders_are_skipped_by_path(tree):
    rows, skipped = read(tree)
    runs = by_run(rows)
    assert set(runs) == {"a_spec_s0", "a_spec_s1", "a_spec_s2", "0_loss_s0", "1_loss_s1",
                         "2_loss_running", "3_unspec_failed"}
    assert {Path(s.path).name for s in skipped} == {"4_corrupt", "5_no_summary"}
    corrupt = next(s for s in skipped if Path(s.path).name == "4_corrupt")
    assert "corrupt or half-written" in corrupt.reason

    a0 = runs["a_spec_s0"]
    assert (a0.model, a0.data, a0.sens, a0.lam, a0.eta, a0.epochs, a0.seed) == \
        ("lenet300", "mnist", "spec", 1e-4, 0.05, 20, "0")
    assert a0.test_error_pct == pytest.approx(2.0) and a0.remaining_pct == 4.0
    assert a0.compression == 25.0 and a0.status == "completed" and a0.n == 1
    assert a0.run == os.path.join("runs", "2026-01-01", "a_spec_s0")  # relative to the folder given

    running = runs["2_loss_running"]
    assert running.status == "running" and running.test_error_pct is None and running.n == 0
    assert (running.epochs_done, running.epochs) == (3, 20)
    assert compare_output._epochs(running) == "3/20"
    assert runs["3_unspec_failed"].status == "failed"


# --- filter and sort ---------------------------------------------------------------------------

@pytest.mark.parametrize("where, expected", [
    (["sens=spec"], {"a_spec_s0", "a_spec_s1", "a_spec_s2"}),
    (["sens=loss,unspec", "status!=completed"], {"2_loss_running", "3_unspec_failed"}),
    (["lam<1e-3"], {"a_spec_s0", "a_spec_s1", "a_spec_s2", "0_loss_s0", "1_loss_s1", "2_loss_running"}),
    (["lam=0.001"], {"3_unspec_failed"}),
    (["error<=2.0"], {"a_spec_s0", "0_loss_s0", "1_loss_s1"}),  # runs without a result never match
    (["run=*loss_s*", "seed>=1"], {"1_loss_s1"}),
    (["sens.name=spec", "remaining>4.5"], {"a_spec_s1", "a_spec_s2"}),  # config-style alias
])
def test_where_keeps_the_matching_runs(tree, where, expected):
    rows, _ = read(tree)
    assert set(by_run(cmp.filter_rows(rows, where))) == expected


def test_where_pareto_selects_the_runs_pareto_optimal_among_all_found(tree):
    # Through compare() itself: the rows are marked before they are filtered.
    rows = cmp.compare([str(tree)], where=["pareto=true"], plots=False, out=tree.parent / "cmp").rows
    # (4 %, 2.0 %) and (8 %, 1.8 %): no run has both fewer remaining and a lower error.
    assert set(by_run(rows)) == {"a_spec_s0", "0_loss_s0"} and all(r.pareto for r in rows)
    rows = cmp.compare([str(tree)], where=["pareto=false", "status=completed"], plots=False,
                       out=tree.parent / "cmp").rows
    assert set(by_run(rows)) == {"a_spec_s1", "a_spec_s2", "1_loss_s1"}


@pytest.mark.parametrize("where, message", [
    ("sensitivity=spec", "unknown key 'sensitivity'"),
    ("lam=big", "is a number"),
    ("sens<spec", "is text"),
    ("just-a-word", "is not KEY=VALUE"),
])
def test_bad_where_names_the_problem(where, message):
    with pytest.raises(cmp.CompareError, match=message) as err:
        cmp.parse_where(where)
    if "unknown key" in message:
        assert "sens" in str(err.value) and "remaining" in str(err.value)  # lists the valid keys


def test_sort_by_keys_ascending_descending_missing_last(tree):
    rows, _ = read(tree)
    names = lambda rs: [Path(r.run).name for r in rs]  # noqa: E731
    assert names(cmp.sort_rows(rows, "error,run")) == [
        "0_loss_s0", "1_loss_s1", "a_spec_s0", "a_spec_s1", "a_spec_s2", "2_loss_running", "3_unspec_failed"]
    assert names(cmp.sort_rows(rows, "-remaining"))[:5] == [
        "1_loss_s1", "0_loss_s0", "a_spec_s2", "a_spec_s1", "a_spec_s0"]
    assert names(cmp.sort_rows(rows, "sens,-seed"))[:3] == ["2_loss_running", "1_loss_s1", "0_loss_s0"]
    with pytest.raises(cmp.CompareError, match="unknown key 'speed'"):
        cmp.sort_rows(rows, "speed")


# --- group and Pareto --------------------------------------------------------------------------

def test_group_by_config_hash_gives_mean_std_and_n_over_seeds(tree):
    rows, _ = read(tree)
    groups = {g.config_hash: g for g in cmp.group_rows(rows)}
    assert set(groups) == {"hA", "hB", "hC"}

    a = groups["hA"]
    assert a.n == 3 and a.seed == "0 1 2" and a.status == "completed" and a.sens == "spec"
    assert a.test_error_pct == pytest.approx(2.2) and a.std["test_error_pct"] == pytest.approx(0.2)
    assert a.remaining_pct == pytest.approx(5.0) and a.std["remaining_pct"] == pytest.approx(1.0)
    assert a.wall_time_s == pytest.approx(31.0)  # seeds 0-2 took 30, 31 and 32 s
    assert compare_output._cell(a, "test_error_pct", "pct") == "2.20 ± 0.20"

    b = groups["hB"]  # two finished seeds and one still running
    assert b.n == 2 and b.seed == "0 1 2" and b.status == "2 completed, 1 running"
    assert b.test_error_pct == pytest.approx(1.9) and b.std["test_error_pct"] == pytest.approx(math.sqrt(0.02))
    assert b.remaining_pct == pytest.approx(9.0)

    c = groups["hC"]  # failed: listed, with nothing to average
    assert c.n == 0 and c.test_error_pct is None and c.std == {} and c.status == "failed"

    cmp.mark_pareto(list(groups.values()))
    assert (a.pareto, b.pareto, c.pareto) == (True, True, False)


def names_of(groups) -> dict[str, str]:
    """Group name by config hash."""
    return {g.config_hash: g.run for g in groups}


def test_groups_differing_only_in_a_key_are_named_by_it(tmp_path):
    # The main job at two gmp targets, seeds 0-1 each, on two devices: only prune.target tells
    # the configurations apart (the device says where a run ran; the seed is folded).
    for target, h in (("50x", "h50"), ("22x", "h22")):
        for seed in (0, 1):
            make_run(tmp_path / f"t{target}_s{seed}", sens="spec", lam=3e-4, seed=seed, config_hash=h,
                     error_pct=2.0, remaining=2.0, prune={"name": "gmp", "target": target, "stop_epoch": 0.8})
    groups = cmp.group_rows(read(tmp_path)[0])
    assert names_of(groups) == {"h50": "lenet300 spec prune.target=50x", "h22": "lenet300 spec prune.target=22x"}
    assert all(g.n == 2 and g.seed == "0 1" for g in groups)


def test_groups_are_named_by_their_preset_and_told_apart_within_one(tmp_path):
    # Two presets, and one of them run again at another lambda: the preset names the group, and
    # lam (as the table and --where call sens.lam) tells the two of the same preset apart.
    make_run(tmp_path / "a", sens="spec", lam=1e-3, seed=0, config_hash="hA", error_pct=2.0, remaining=2.0,
             preset="lenet300_spec")
    make_run(tmp_path / "b", sens="spec", lam=5e-4, seed=0, config_hash="hB", error_pct=2.0, remaining=2.0,
             preset="lenet300_spec")
    make_run(tmp_path / "c", sens="l2", lam=1e-3, seed=0, config_hash="hC", error_pct=2.0, remaining=2.0,
             preset="lenet300_l2")
    make_run(tmp_path / "d", sens="spec", lam=1e-3, seed=0, config_hash="hD", error_pct=2.0, remaining=2.0,
             model="lenet5")  # no preset recorded (made with ~experiment, or copied without .hydra/)
    groups = cmp.group_rows(read(tmp_path)[0])
    assert names_of(groups) == {"hA": "lenet300_spec lam=1e-3", "hB": "lenet300_spec lam=5e-4",
                                "hC": "lenet300_l2", "hD": "lenet5 spec"}


def test_a_key_some_runs_lack_still_tells_the_rest_apart(tmp_path):
    # As in outputs/reference: threshold-search runs made before prune.target existed, beside two
    # gmp runs at 100x and 80x. prune tells search from gmp; prune.target, which only the gmp runs
    # have, then tells those two apart. Two with the same config.yaml get their hash.
    make_run(tmp_path / "search", sens="spec", lam=1e-3, seed=0, config_hash="hS", error_pct=2.0, remaining=2.0,
             prune={"name": "search", "tolerance": 0.1})
    for target in ("100x", "80x"):
        make_run(tmp_path / f"gmp{target}", sens="spec", lam=1e-3, seed=0, config_hash=f"h{target}",
                 error_pct=2.0, remaining=2.0, prune={"name": "gmp", "tolerance": 0.1, "target": target})
    make_run(tmp_path / "twin1", sens="loss", lam=1e-3, seed=0, config_hash="hT1", error_pct=2.0, remaining=2.0)
    # (seed 1, on another device: neither tells configurations apart)
    make_run(tmp_path / "twin2", sens="loss", lam=1e-3, seed=1, config_hash="hT2", error_pct=2.0, remaining=2.0)
    names = names_of(cmp.group_rows(read(tmp_path)[0]))
    assert names == {"hS": "lenet300 spec prune=search",
                     "h100x": "lenet300 spec prune=gmp prune.target=100x",
                     "h80x": "lenet300 spec prune=gmp prune.target=80x",
                     "hT1": "lenet300 loss hT1", "hT2": "lenet300 loss hT2"}


def test_the_keys_left_out_of_names_are_those_left_out_of_the_config_hash():
    from sensreg.records.config_keys import NOT_COMPUTATION, NOT_EXPERIMENT

    expected = {"trainer.seed", *(f"{s}." for s in NOT_EXPERIMENT), *(f"{s}.{k}" for s, k in NOT_COMPUTATION)}
    assert set(cmp.NOT_CONFIGURATION) == expected


def test_the_preset_is_read_from_hydras_own_record(tmp_path):
    # What Hydra records of a run (.hydra/hydra.yaml) has the shape of `--cfg hydra`: the real thing.
    def record(*overrides) -> Path:
        out = conftest.sensreg("train", *overrides, "--cfg", "hydra", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        folder = tmp_path / "_".join(overrides).strip("~=")
        (folder / ".hydra").mkdir(parents=True)
        (folder / cmp.HYDRA_RECORD).write_text(out.stdout)
        return folder

    assert cmp.read_preset(record("experiment=lenet300_quick")) == "lenet300_quick"
    assert cmp.read_preset(record("~experiment")) is None
    assert cmp.read_preset(tmp_path / "no_such_run") is None
    broken = tmp_path / "broken"
    (broken / ".hydra").mkdir(parents=True)
    (broken / cmp.HYDRA_RECORD).write_text("hydra: [unclosed")
    assert cmp.read_preset(broken) is None


def test_a_run_found_twice_counts_once_with_a_warning_naming_both_folders(tree, tmp_path):
    # A run folder copied elsewhere in the tree: same config hash, same seed.
    original = tree / "runs" / "2026-01-01" / "a_spec_s0"
    copy = tree / "copied" / "a_spec_s0"
    shutil.copytree(original, copy)
    warnings: list[str] = []
    groups = {g.config_hash: g for g in cmp.group_rows(read(tree)[0], warnings)}
    a = groups["hA"]
    assert a.seed == "0 1 2" and a.n == 3 and len(a.path.split(";")) == 3
    assert a.test_error_pct == pytest.approx(2.2) and a.std["test_error_pct"] == pytest.approx(0.2)
    assert len(warnings) == 1 and "seed 0" in warnings[0] and "hA" in warnings[0]
    assert str(copy.resolve()) in warnings[0] and str(original.resolve()) in warnings[0]

    out = sensreg("compare", str(tree), "--group", "--out", str(tmp_path / "cmp"), cwd=tree.parent)
    assert out.returncode == 0, out.stderr
    [line] = [line for line in out.stderr.splitlines() if "warning" in line]  # one line, both folders
    assert str(copy.resolve()) in line and str(original.resolve()) in line
    assert "0 0 1 2" not in out.stdout and "0 0 1 2" not in (tmp_path / "cmp" / "compare.md").read_text()


def test_a_copy_that_finished_is_kept_over_one_that_did_not(tmp_path):
    make_run(tmp_path / "a_running", sens="spec", lam=1e-4, seed=0, config_hash="h", status="running",
             epochs_done=3)
    make_run(tmp_path / "b_done", sens="spec", lam=1e-4, seed=0, config_hash="h", error_pct=2.0, remaining=2.0)
    warnings: list[str] = []
    [g] = cmp.group_rows(read(tmp_path)[0], warnings)
    assert g.n == 1 and g.status == "completed" and g.path.endswith("b_done") and len(warnings) == 1


def test_pareto_marks_exactly_the_undominated_runs(tree):
    rows, _ = read(tree)
    optimal = cmp.mark_pareto(rows)
    assert {Path(r.run).name for r in optimal} == {"a_spec_s0", "0_loss_s0"}


def test_pareto_ties_and_separate_networks():
    def row(name, rem, err, data="mnist"):
        return cmp.Row(run=name, path=name, status="completed", model="lenet300", data=data,
                       remaining_pct=rem, test_error_pct=err, n=1)
    rows = [row("a", 2.0, 3.0), row("twin", 2.0, 3.0),  # equal points: neither beats the other
            row("same-error-more-params", 4.0, 3.0), row("better", 1.0, 2.0, data="synthetic"),
            row("running", None, None)]
    rows[-1].status, rows[-1].n = "running", 0
    assert {r.run for r in cmp.mark_pareto(rows)} == {"a", "twin", "better"}


# --- references --------------------------------------------------------------------------------

def test_references_only_for_the_same_network_and_dataset():
    lenet300 = cmp.references_for("lenet300", "mnist")
    assert {r["method"] for r in lenet300} == {"Han et al. 2015", "Sparse VD"}
    han = next(r for r in lenet300 if r["method"].startswith("Han"))
    assert han["compression"] == 12 and han["test_error_pct"] == 1.59
    assert han["remaining_pct"] == pytest.approx(100 / 12)
    assert "Learning both Weights and Connections" in han["source"]["title"]
    assert "NeurIPS 2015" in han["source"]["venue"]
    vd = next(r for r in cmp.references_for("lenet5", "mnist") if r["method"] == "Sparse VD")
    assert vd["compression"] == 280 and "ICML 2017" in vd["source"]["venue"]
    assert han["budget"] is None and vd["budget"].startswith("200 epochs")
    assert "github.com/bayesgroup" in vd["budget_source"]["url"]
    assert cmp.references_for("lenet300", "synthetic") == []
    assert cmp.references_for("lenet300", "fashion_mnist") == []


def test_each_plot_gets_the_references_of_its_own_network_and_data(tree, tmp_path, monkeypatch):
    make_run(tree / "runs" / "2026-01-02" / "synth", sens="spec", lam=1e-4, seed=0, config_hash="hS",
             data="synthetic", error_pct=10.0, remaining=3.0)
    drawn = {}
    from sensreg.records import plots
    real = plots.pareto_plot

    def recording(series, references, path, title="", **kwargs):
        drawn[Path(path).name] = [r["method"] for r in references]
        return real(series, references, path, title, **kwargs)

    monkeypatch.setattr(plots, "pareto_plot", recording)
    result = cmp.compare([str(tree)], out=tmp_path / "cmp")
    assert drawn == {"compare_lenet300_mnist.png": ["Han et al. 2015", "Sparse VD"],
                     "compare_lenet300_synthetic.png": []}
    md = (result.out_dir / "compare.md").read_text()
    assert "Published reference points" in md and "arxiv.org/abs/1701.05369" in md


# --- the files ---------------------------------------------------------------------------------

def test_compare_writes_csv_markdown_and_plot_into_the_first_folder(tree):
    result = cmp.compare([str(tree)])
    assert result.out_dir == tree
    assert sorted(p.name for p in result.files) == ["compare.csv", "compare.md", "compare_lenet300_mnist.png"]
    assert_png(tree / "compare_lenet300_mnist.png")

    with open(tree / "compare.csv") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 7
    table = {Path(r["run"]).name: r for r in lines}
    assert table["a_spec_s0"]["pareto"] == "True" and table["a_spec_s1"]["pareto"] == "False"
    assert float(table["0_loss_s0"]["test_error_pct"]) == pytest.approx(1.8)
    assert table["2_loss_running"]["status"] == "running" and table["2_loss_running"]["test_error_pct"] == ""
    assert table["3_unspec_failed"]["status"] == "failed"
    # run folders below the csv's folder are given relative to it
    assert table["a_spec_s0"]["path"] == "runs/2026-01-01/a_spec_s0"

    md = (tree / "compare.md").read_text()
    assert "| ★ | runs/2026-01-01/a_spec_s0 |" in md.replace(os.sep, "/")
    assert "| 2.00 | 4.00 | 25.0× |" in md  # test error and remaining in percent
    assert "running" in md and "failed" in md
    assert "## Skipped folders" in md and "4_corrupt" in md and "5_no_summary" in md
    assert "![compare_lenet300_mnist](compare_lenet300_mnist.png)" in md


def test_grouped_files_and_out_dir(tree, tmp_path):
    out = tmp_path / "elsewhere"
    # A glob over a sweep's jobs also matches its multirun.yaml: that file is passed over.
    result = cmp.compare([str(tree / "runs"), str(tree / "multirun" / "2026-01-01" / "12-00-00" / "*")],
                         group=True, out=out, sort="error")
    assert result.out_dir == out and (out / "compare.csv").is_file()
    assert not (tree / "runs" / "compare.csv").exists()
    with open(out / "compare.csv") as f:
        lines = list(csv.DictReader(f))
    assert [(r["config_hash"], r["n"], r["seed"]) for r in lines] == [
        ("hB", "2", "0 1 2"), ("hA", "3", "0 1 2"), ("hC", "0", "0")]
    assert float(lines[1]["test_error_pct_std"]) == pytest.approx(0.2)
    # elsewhere: the run folders keep their absolute paths
    assert all(Path(p).is_absolute() and Path(p).is_dir() for p in lines[0]["path"].split(";"))
    assert "2.20 ± 0.20" in (out / "compare.md").read_text()
    assert_png(out / "compare_lenet300_mnist.png")


@pytest.mark.parametrize("paths, kwargs, message", [
    (["{tmp}/nope"], {}, "does not exist"),
    (["{tmp}/nothing*"], {}, "matches no folder"),
    (["{tree}/runs/2026-01-01/a_spec_s0/summary.json"], {}, "is a file"),
    (["{tmp}/empty"], {}, "no run folders"),
    (["{tree}"], {"where": ["sens=l2"]}, "none of the 7 runs"),
    (["{tree}"], {"sort": "bogus"}, "unknown key 'bogus'"),
])
def test_user_mistakes_are_compare_errors(tree, tmp_path, paths, kwargs, message):
    (tmp_path / "empty").mkdir()
    paths = [p.format(tmp=tmp_path, tree=tree) for p in paths]
    with pytest.raises(cmp.CompareError, match=message):
        cmp.compare(paths, **kwargs)


# --- the command line --------------------------------------------------------------------------

# One thread for the training runs; the tables printed 200 columns wide, as on a wide terminal.
sensreg = functools.partial(conftest.sensreg, env={"OMP_NUM_THREADS": "1", "COLUMNS": "200"})


def test_cli_prints_the_table_and_lists_skipped_folders(tree):
    out = sensreg("compare", str(tree), "--group", "--sort=-remaining", cwd=tree.parent)
    assert out.returncode == 0, out.stderr
    # groups named by network and variant (these runs record no preset), whole
    assert "lenet300 spec" in out.stdout and "lenet300 loss" in out.stdout and "lenet300 unspec" in out.stdout
    assert "2.20 ± 0.20" in out.stdout and "2 completed, 1 running" in out.stdout  # a run not done: status shown
    assert "3 configurations, 2 Pareto-optimal, 2 folder(s) skipped" in out.stdout
    assert "4_corrupt" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("args, message", [
    (["compare", "missing-folder"], "missing-folder does not exist"),
    (["compare", "empty"], "no run folders"),
    (["compare", "unreadable"], "none of the 1 run folder(s) below unreadable could be read"),
    (["compare", "outputs", "--where", "colour=red"], "unknown key 'colour'"),
    (["compare", "outputs", "--sort", "speed"], "unknown key 'speed'"),
    (["compare"], "the following arguments are required"),
])
def test_cli_mistakes_exit_2_with_one_message(tree, args, message):
    (tree.parent / "empty").mkdir()
    (tree.parent / "unreadable" / "run").mkdir(parents=True)
    (tree.parent / "unreadable" / "run" / "summary.json").write_text("{half-written")
    out = sensreg(*args, cwd=tree.parent)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert not (tree.parent / "unreadable" / "compare.md").exists()  # nothing written


@pytest.mark.slow
def test_two_real_runs_then_compare(tmp_path):
    """End to end: a two-job sweep through the CLI, then `sensreg compare` over it."""
    tiny = ["~experiment", "data=synthetic", "data.num_train=300", "data.num_test=100", "trainer.epochs=1",
            "trainer.device=cpu", "trainer.batch_size=50", "prune.tolerance=0.5"]
    out = sensreg("train", "-m", *tiny, "sens=spec,loss", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    out = sensreg("compare", str(tmp_path / "sweep"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "0_lenet300_spec" in out.stdout and "1_lenet300_loss" in out.stdout
    with open(tmp_path / "sweep" / "compare.csv") as f:
        lines = list(csv.DictReader(f))
    assert sorted(r["sens"] for r in lines) == ["loss", "spec"]
    assert all(r["status"] == "completed" and r["model"] == "lenet300" and r["data"] == "synthetic"
               for r in lines)
    summaries = {json.loads((tmp_path / "sweep" / r["run"] / "summary.json").read_text())["sens"]:
                 json.loads((tmp_path / "sweep" / r["run"] / "summary.json").read_text()) for r in lines}
    for r in lines:  # the table shows what the runs wrote, in percent
        assert float(r["test_error_pct"]) == pytest.approx(100 * summaries[r["sens"]]["test_error"])
        assert float(r["remaining_pct"]) == pytest.approx(summaries[r["sens"]]["remaining_pct"])
    assert any(r["pareto"] == "True" for r in lines)
    assert_png(tmp_path / "sweep" / "compare_lenet300_synthetic.png")


def test_a_running_run_whose_process_is_gone_is_listed_as_abandoned(tmp_path):
    gone = subprocess.run(["python", "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = make_run(tmp_path / "killed", sens="spec", lam=1e-4, seed=0, config_hash="h", status="running",
                      epochs_done=2)
    (killed / LOCK_NAME).write_text(f"{gone.stdout.strip()} {os.uname().nodename}\n")  # SIGKILL leaves it
    make_run(tmp_path / "no_lock", sens="spec", lam=1e-4, seed=1, config_hash="h", status="running", epochs_done=2)
    rows, _ = cmp.read_runs(cmp.find_run_dirs([tmp_path]), tmp_path)
    assert {r.run: r.status for r in rows} == {"killed": "abandoned", "no_lock": "abandoned"}


# --- budgets -------------------------------------------------------------------------------------

def test_budgets_are_a_column_a_key_and_a_marker_per_budget(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    for name, samples in (("short", 540_000), ("long", 3_240_000), ("old", None)):
        run = make_run(root / name, sens="spec", lam=1e-4, seed=0, config_hash=f"h{name}",
                       error_pct=2.0, remaining=2.0)
        summary = json.loads((run / "summary.json").read_text())
        if samples is not None:
            summary["budget"] = {"epochs": samples // 54_000, "steps": samples // 100, "samples": samples,
                                 "wall_time_s": 10.0, "device": "cpu"}
        (run / "summary.json").write_text(json.dumps(summary))
    rows = {r.run: r for r in cmp.compare([str(root)], plots=False).rows}
    assert (rows["short"].samples, rows["long"].samples, rows["old"].samples) == (540_000, 3_240_000, None)
    cells = dict(cmp.columns(False))
    assert [cells["samples"](rows[n]) for n in ("short", "long", "old")] == ["540k", "3.24M", "-"]
    assert [r.run for r in cmp.compare([str(root)], where=["samples<1M"], plots=False).rows] == ["short"]
    assert [r.run for r in cmp.compare([str(root)], where=["budget>1M"], plots=False).rows] == ["long"]

    from sensreg.records import plots
    drawn, real = [], plots.pareto_plot

    def recording(series, references, path, title="", **kwargs):
        drawn.append(sorted(str(p.get("budget")) for pts in series.values() for p in pts))
        return real(series, references, path, title, **kwargs)

    monkeypatch.setattr(plots, "pareto_plot", recording)
    result = cmp.compare([str(root)], out=tmp_path / "cmp")
    assert drawn == [["20 epochs"] * 3]  # one run without a recorded budget: all marked by epochs
    assert_png(result.out_dir / "compare_lenet300_mnist.png")
    shutil.rmtree(root / "old")
    cmp.compare([str(root)], out=tmp_path / "cmp2")
    assert drawn[-1] == ["3.24M samples", "540k samples"]


def test_a_schedule_other_than_the_search_is_its_own_series(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    for name, prune in (("searched", "search"), ("gradual", "gmp")):
        run = make_run(root / name, sens="none", lam=0.0, seed=0, config_hash=f"h{name}", error_pct=2.0,
                       remaining=2.0)
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["prune"] = {"name": prune}
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    from sensreg.records import plots
    names, real = [], plots.pareto_plot
    monkeypatch.setattr(plots, "pareto_plot", lambda series, *a, **k: (names.append(sorted(series)), real(series, *a, **k))[1])
    rows = {r.run: r for r in cmp.compare([str(root)], out=tmp_path / "cmp").rows}
    assert (rows["searched"].prune, rows["gradual"].prune) == ("search", "gmp")
    assert names == [["none", "none prune=gmp"]]


def test_a_group_of_seed_folders_alone_in_their_folder_is_named_by_it(tmp_path):
    # outputs/reference/NAME/seed0..2 (reproduce_mnist.sh's layout) keeps no Hydra record of its
    # preset: the folder names the group. Runs that share a folder with others are named by keys.
    from sensreg.records.compare import Row, name_groups

    def group(h, paths, lam):
        return Row(run="?", path=";".join(str(tmp_path / p) for p in paths), status="completed", model="lenet300",
                   data="mnist", sens="spec", config_hash=h, config={"sens.lam": lam})

    groups = [group("h1", ["ref/lenet300_spec/seed0", "ref/lenet300_spec/seed1"], 1e-3),
              group("h2", ["ref/lenet300_spec_lam5e-4/seed0"], 5e-4),
              group("h3", ["sweep/0_lenet300_spec"], 1e-4), group("h4", ["sweep/1_lenet300_spec"], 1e-5)]
    name_groups(groups)
    assert [g.run for g in groups] == ["lenet300_spec", "lenet300_spec_lam5e-4", "lenet300 spec lam=1e-4",
                                       "lenet300 spec lam=1e-5"]


# --- what a file system may hold --------------------------------------------------------------

def test_a_fifo_or_folder_named_summary_json_is_skipped_with_its_reason_and_never_blocks(tree):
    fifo_run = make_run(tree / "runs" / "fifo", sens="spec", lam=1e-4, seed=0, config_hash="hF", error_pct=2.0,
                        remaining=4.0)
    (fifo_run / "summary.json").unlink()
    os.mkfifo(fifo_run / "summary.json")  # opening it for reading would wait for a writer for ever
    rows, skipped = read(tree)
    reasons = {s.path.name: s.reason for s in skipped}
    assert "not a regular file (a FIFO)" in reasons["fifo"]
    assert "a_spec_s0" in by_run(rows)


def test_symbolic_links_to_run_folders_are_followed_once_and_a_loop_is_named(tree, tmp_path):
    elsewhere = make_run(tmp_path / "elsewhere" / "linked_run", sens="spec", lam=1e-4, seed=5, config_hash="hL",
                         error_pct=2.0, remaining=4.0)
    (tree / "runs" / "link").symlink_to(elsewhere.parent, target_is_directory=True)
    (tree / "runs" / "2026-01-01" / "loop").symlink_to(tree / "runs", target_is_directory=True)
    skipped: list = []
    found = cmp.find_run_dirs([tree], skipped)
    assert elsewhere.resolve() in found
    assert len(found) == len(set(found))
    assert any("searched already (a loop)" in s.reason and s.path.name == "loop" for s in skipped)


def test_sigterm_while_compare_writes_leaves_no_temporary_file(tree, monkeypatch, in_process_cli, capsys):
    import signal

    real = compare_output.write_atomic

    def terminated_while_writing(path, write, binary=False):
        def half_then_signal(f):
            f.write("half a file")
            os.kill(os.getpid(), signal.SIGTERM)  # delivered here, in the middle of the write
            write(f)
        real(path, half_then_signal, binary)

    monkeypatch.setattr(compare_output, "write_atomic", terminated_while_writing)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        assert conftest.run_in_process("compare", str(tree), "--no-plots") == 128 + signal.SIGTERM
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    assert "sensreg compare stopped by SIGTERM" in capsys.readouterr().err
    assert not list(tree.rglob("*.tmp")) and not (tree / "compare.csv").exists()


def test_a_group_chosen_on_the_command_line_against_a_preset_is_in_its_name(tmp_path):
    # The main job run with sens=unspec is no "default" run: its name says which variant it is.
    for seed in (0, 1):
        run = make_run(tmp_path / f"u{seed}", sens="unspec", lam=3e-4, seed=seed, config_hash="hU", error_pct=2.0,
                       remaining=4.0, preset="default")
        record = yaml.safe_load((run / ".hydra" / "hydra.yaml").read_text())
        record["hydra"]["overrides"] = {"task": ["sens=unspec", "model=lenet5", "trainer.seed=0"]}
        (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(record))
    make_run(tmp_path / "d0", sens="spec", lam=3e-4, seed=0, config_hash="hD", error_pct=2.0, remaining=4.0,
             preset="default")
    rows, _ = read(tmp_path)
    names = sorted(r.run for r in cmp.group_rows(rows, []))
    assert names == ["default", "default sens=unspec model=lenet5"]
