"""Structure as a result: a run's summary.json records the compacted network (units kept per
layer, parameters and multiply-adds dense, nonzero and compacted), equal to an independent count
from its model.pt; `sensreg eval` recomputes it, the log prints it, and `sensreg compare` shows,
sorts, filters and plots by it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from conftest import assert_png, run_in_process

TINY = ["~experiment", "data=synthetic", "data.num_train=300", "data.num_test=100", "trainer.epochs=2",
        "trainer.batch_size=50", "trainer.device=cpu", "trainer.progress=false", "sens=none", "prune=gmp",
        "prune.every=1"]


def mlp_units(weights: list[torch.Tensor]) -> tuple[int, list[int]]:
    """The inputs and units of an MLP (the weights of its linear layers, first to last) that can
    change its output, counted directly: a unit stays while it has a nonzero weight from a kept
    unit of the layer before (else it is silent: its constant output folds into the next bias)
    and a nonzero weight to a kept unit of the layer after (else nothing reads it); the outputs
    all stay. Repeated until nothing changes: one removal can leave another unit silent or unread."""
    keep = [torch.ones(weights[0].shape[1], dtype=torch.bool)]
    keep += [torch.ones(w.shape[0], dtype=torch.bool) for w in weights]
    while True:
        before = [k.clone() for k in keep]
        for i, w in enumerate(weights):
            live = (w != 0) & keep[i + 1][:, None] & keep[i][None, :]  # weights between kept units
            keep[i] &= live.any(dim=0)  # read by the next layer
            if i + 1 < len(weights):
                keep[i + 1] &= live.any(dim=1)  # fed by the layer before
        if all(torch.equal(a, b) for a, b in zip(before, keep)):
            return int(keep[0].sum()), [int(k.sum()) for k in keep[1:]]


@pytest.mark.parametrize("target", ["20x", "100x"])
def test_a_runs_summary_records_its_compacted_network_as_counted_from_its_weights(tmp_path, in_process_cli,
                                                                                  capsys, target):
    run = tmp_path / "run"
    assert run_in_process("train", *TINY, f"prune.target={target}", f"hydra.run.dir={run}") == 0
    log = " ".join((run / "train.log").read_text().split())
    structure = json.loads((run / "summary.json").read_text())["structure"]

    from sensreg.records.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run / "model.pt")
    weights = [ckpt["state_dict"][f"fc{i}.weight"] * ckpt["masks"][f"fc{i}.weight"] for i in (1, 2, 3)]
    inputs, units = mlp_units(weights)
    assert structure["inputs"]["fc1"] == [inputs, 784]
    assert structure["units"] == {"fc1": [units[0], 300], "fc2": [units[1], 100], "fc3": [10, 10]}
    sizes = [inputs, *units]
    macs = sum(a * b for a, b in zip(sizes, sizes[1:]))
    assert structure["macs"] == {"dense": 784 * 300 + 300 * 100 + 100 * 10,
                                 "nonzero": sum(int((w != 0).sum()) for w in weights), "compact": macs}
    assert structure["params"]["compact"] == macs + sum(units)  # weights and biases
    assert structure["params"]["dense"] == 266_610
    assert structure["macs"]["compact"] < structure["macs"]["dense"]  # the pruning left units without weights
    assert "compacted network:" in log and "units kept:" in log


def test_eval_recomputes_the_structure_and_compares_it_with_the_summary(tmp_path, in_process_cli, capsys):
    run = tmp_path / "run"
    assert run_in_process("train", *TINY, "prune.target=20x", f"hydra.run.dir={run}") == 0
    capsys.readouterr()
    assert run_in_process("eval", str(run / "model.pt"), "--json") == 0
    result = json.loads(capsys.readouterr().out)
    summary = json.loads((run / "summary.json").read_text())
    assert result["structure"] == summary["structure"] and result["matches_summary"]

    # A summary whose structure differs from the checkpoint's is reported as not matching.
    changed = {**summary, "structure": {**summary["structure"],
                                        "macs": {**summary["structure"]["macs"], "compact": 1}}}
    (run / "summary.json").write_text(json.dumps(changed))
    run_in_process("eval", str(run / "model.pt"), "--json")
    assert json.loads(capsys.readouterr().out)["matches_summary"] is False


def test_compare_shows_sorts_filters_and_plots_by_the_compacted_cost(tmp_path, in_process_cli, capsys):
    sweep = tmp_path / "sweep"
    for target in ("5x", "100x"):
        assert run_in_process("train", *TINY, f"prune.target={target}", f"hydra.run.dir={sweep / target}") == 0
    capsys.readouterr()
    structures = {t: json.loads((sweep / t / "summary.json").read_text())["structure"] for t in ("5x", "100x")}
    x = {t: s["macs"]["dense"] / s["macs"]["compact"] for t, s in structures.items()}
    assert x["100x"] > x["5x"]

    assert run_in_process("compare", str(sweep), "--wide", "--sort=-macs_x") == 0
    printed = capsys.readouterr().out
    assert "compact params" in printed and "MACs ×" in printed
    assert printed.index("100x") < printed.index("5x ")  # most multiply-adds saved first
    with open(sweep / "compare.csv") as f:
        rows = {Path(r["run"]).name: r for r in csv.DictReader(f)}
    for t, s in structures.items():
        assert float(rows[t]["macs_compact"]) == s["macs"]["compact"]
        assert float(rows[t]["params_compact"]) == s["params"]["compact"]
        assert float(rows[t]["macs_x"]) == pytest.approx(x[t])
    assert_png(sweep / "compare_lenet300_synthetic_macs.png")

    threshold = (x["5x"] + x["100x"]) / 2
    assert run_in_process("compare", str(sweep), "--where", f"macs_x>{threshold}", "--out", str(tmp_path / "cmp"),
                          "--no-plots") == 0
    with open(tmp_path / "cmp" / "compare.csv") as f:
        assert [Path(r["run"]).name for r in csv.DictReader(f)] == ["100x"]
