"""scripts/sensitivity_table.py on fake run folders with curves worked out by hand.

The fixture writes, for one network at 60 epochs and two seeds:

- l2, seed 0: (val 0.02, 50×, test 0.018), (0.03, 100×, test 0.024), and (0.02, 30×) which the
  more compressed point at the same val error replaces; seed 1: (0.02, 40×), (0.04, 160×).
- gmp, one point a seed: (0.025, 100×) at seed 0, (0.02, 80×) at seed 1.
- spec λ 1e-3: seed 0 at (0.025, 150×): l2 there exp((log 50 + log 100) / 2) = 70.71×, ratio
  2.1213, l2's test error 0.021 (halfway); gmp's single point is at exactly 0.025, ratio 1.5. Seed 1 at
  (0.03, 160×): l2 there √(40·160) = 80×, ratio 2; gmp: one point, at another error.
- spec λ 3e-3: seed 0 at val 0.035, seed 1 at 0.015: outside l2's range at both, and not at
  gmp's single points; outside every curve's compressions too, and on no side of any point in
  both measures (neither dominates).

and runs the script must leave out: a failed run, the per-sample and scaled spec variants, unspec,
a per-layer threshold and a dense run; and an l2 run of another budget, which only that budget's
row sees.
"""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

SCRIPT = REPO / "scripts" / "sensitivity_table.py"
spec_ = importlib.util.spec_from_file_location("sensitivity_table", SCRIPT)
st = sys.modules["sensitivity_table"] = importlib.util.module_from_spec(spec_)  # dataclasses look it up there
spec_.loader.exec_module(st)


def write_run(folder, *, seed, val, compression, test=None, sens="spec", lam=1e-3, prune="search",
              epochs=60, status="completed", model="lenet300", **extra):
    """A run folder as `sensreg train` leaves it, as far as the script reads it."""
    folder.mkdir(parents=True)
    summary = {"status": status, "seed": seed, "model": model, "data": "mnist", "epochs_completed": epochs,
               "val_error": val, "test_error": val - 0.004 if test is None else test, "compression": compression}
    macs = extra.pop("macs_x", None)
    if macs is not None:  # the compacted network: 1000 multiply-adds dense, 1000 / macs_x compacted
        summary["structure"] = {"macs": {"dense": 1000, "nonzero": 10, "compact": 1000 / macs},
                                "params": {"dense": 2000, "nonzero": 20, "compact": 2000 / macs}}
    prune_cfg = {"name": prune, "scope": extra.pop("scope", "global"), "stop_epoch": None, "tolerance": 0.1}
    if prune in ("gmp", "gmp_units"):
        prune_cfg["target"] = extra.pop("target")
    config = {"model": {"name": model}, "data": {"name": "mnist"}, "trainer": {"seed": seed, "epochs": epochs},
              "sens": {"name": sens, "lam": lam, **extra}, "prune": prune_cfg,
              "eta_schedule": {"name": "step", "milestones": [40, 50]}}
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "l2/a_s0", seed=0, val=0.02, compression=50, test=0.018, sens="l2")
    write_run(root / "l2/b_s0", seed=0, val=0.03, compression=100, test=0.024, sens="l2", lam=2e-3)
    write_run(root / "l2/c_s0", seed=0, val=0.02, compression=30, sens="l2", lam=5e-4)  # same val, less compressed
    write_run(root / "l2/a_s1", seed=1, val=0.02, compression=40, sens="l2")
    write_run(root / "l2/b_s1", seed=1, val=0.04, compression=160, sens="l2", lam=2e-3)
    write_run(root / "gmp/s0", seed=0, val=0.025, compression=100, test=0.02, sens="none", prune="gmp", target="100x")
    write_run(root / "gmp/s1", seed=1, val=0.02, compression=80, sens="none", prune="gmp", target="80x")
    write_run(root / "spec/s0", seed=0, val=0.025, compression=150, test=0.019, reduction="batch", scale="none")
    write_run(root / "spec/s1", seed=1, val=0.03, compression=160, test=0.022)  # no reduction/scale: batch, none
    write_run(root / "spec3/s0", seed=0, val=0.035, compression=300, lam=3e-3)
    write_run(root / "spec3/s1", seed=1, val=0.015, compression=20, lam=3e-3)
    # None of these may enter a curve or a row.
    write_run(root / "other/failed", seed=0, val=0.025, compression=1000, status="failed")
    write_run(root / "other/sample", seed=0, val=0.025, compression=1000, reduction="sample")
    write_run(root / "other/scaled", seed=0, val=0.025, compression=1000, scale="max")
    write_run(root / "other/unspec", seed=0, val=0.025, compression=1000, sens="unspec")
    write_run(root / "other/l2_layer", seed=0, val=0.025, compression=1, sens="l2", scope="layer")
    write_run(root / "other/dense", seed=0, val=0.025, compression=1, sens="none", prune="none")
    write_run(root / "other/l2_20ep", seed=0, val=0.025, compression=1, sens="l2", epochs=20)
    return root


def test_interpolation_by_hand(runs):
    found = st.find_runs([str(runs)])
    assert sorted(r.path.name for r in found if r.method == "spec") == ["s0", "s0", "s1", "s1"]
    # Of the runs to leave out, only the l2 run of 20 epochs is read: it is l2, at another budget.
    assert {r.path.name for r in found if r.path.parent.name == "other"} == {"l2_20ep"}
    spec = [r for r in found if r.method == "spec" and r.path.parent.name == "spec"]
    l2 = [r for r in found if r.method == "l2" and r.budget == 60]

    comp = st.compare(spec, l2, "l2")
    assert comp.ratios == pytest.approx([150 / math.exp((math.log(50) + math.log(100)) / 2), 160 / 80])
    assert comp.ratios[0] == pytest.approx(2.1213, abs=1e-4)
    assert comp.base_test[0] == pytest.approx(0.021)  # halfway between 0.018 and 0.024
    assert comp.spec_test == [0.019, 0.022]
    assert comp.verdict() == "wins"
    std = statistics.stdev([2.12132, 2.0])
    assert comp.cell() == f"2.06 ± {std:.2f}× (2)"

    gmp = [r for r in found if r.method == "gmp"]
    comp = st.compare(spec, gmp, "gmp")
    assert comp.ratios == pytest.approx([1.5])  # gmp's single point at exactly spec's val error
    assert comp.base_test == pytest.approx([0.02])
    assert dict(comp.missing) == {"one gmp point": 1}
    # Seed 1 (0.03, 160×) against gmp's (0.02, 80×): more compressed, less accurate: no order.
    assert dict(comp.order) == {"neither": 1} and comp.gaps == []
    assert comp.cell() == "1.50× (1); one gmp point (1); neither (1)"
    assert comp.verdict() == "is ahead on a single seed"

    spec3 = [r for r in found if r.path.parent.name == "spec3"]
    comp = st.compare(spec3, l2, "l2")
    assert comp.ratios == [] and dict(comp.missing) == {"outside l2's range": 2}
    assert comp.cell() == "outside l2's range; neither (2)" and comp.verdict() is None
    assert comp.gap_verdict() is None


def test_equal_compression_and_order():
    points = [(0.02, math.log(50), 0.018), (0.03, math.log(100), 0.024)]
    # log-linear in compression: √(50·100) is halfway
    assert st.at_compression(points, math.sqrt(5000)) == pytest.approx((0.025, 0.021))
    assert st.at_compression(points, 100) == pytest.approx((0.03, 0.024))
    assert st.at_compression(points, 101) is None and st.at_compression(points, 49) is None
    assert st.at_compression(points[:1], 50) == pytest.approx((0.02, 0.018))  # a one-point curve, exactly
    assert st.judge([1.0000000001], 1.0) == "is level on a single seed"
    assert st.judge([1.01], 1.0) == "is ahead on a single seed" and st.judge([-0.001], 0.0) == "is behind on a single seed"

    def run(val, compression):
        return st.Run(None, "n", 60, 0, "spec", "gmp", {}, val, val, compression)

    assert st.dominance(points, run(0.02, 60)) == "dominates a point"  # as accurate as (0.02, 50×), sparser
    assert st.dominance(points, run(0.035, 90)) == "is dominated"  # (0.03, 100×) beats it in both
    assert st.dominance(points, run(0.015, 20)) == "neither"
    assert st.dominance(points, run(0.02, 50)) == "is dominated"  # equal to a point: not a win

    # Spec at 100× against a gmp curve through 100× at val 0.03: no ratio (spec is more accurate
    # than every point), the gap at equal compression instead: +0.5 points, gmp's test error there.
    spec = [st.Run(None, "n", 60, seed, "spec", "gmp", {}, 0.025, 0.02, 100) for seed in (0, 1)]
    gmp = [st.Run(None, "n", 60, seed, "gmp", "gmp", {}, val, 0.024, c)
           for seed in (0, 1) for val, c in ((0.03, 100), (0.04, 200))]
    comp = st.compare(spec, gmp, "gmp")
    assert comp.ratios == [] and comp.gaps == pytest.approx([0.005, 0.005])
    assert comp.gap_base_test == pytest.approx([0.024, 0.024]) and comp.gap_spec_test == [0.02, 0.02]
    assert comp.cell() == "outside gmp's range; at equal compression val err +0.50 ± 0.00 pt (2)"
    assert comp.gap_verdict() == "wins" and not comp.unmatched


def test_curve_edges():
    points = [(0.02, math.log(50), 0.018), (0.03, math.log(100), 0.024)]
    assert st.at(points, 0.02, "l2") == pytest.approx((50, 0.018))  # a point itself
    assert st.at(points, 0.03, "l2") == pytest.approx((100, 0.024))
    assert st.at(points, 0.0199, "l2") == "outside l2's range"
    assert st.at(points, 0.0301, "l2") == "outside l2's range"
    assert st.at(points[:1], 0.025, "l2") == "one l2 point"
    assert st.at([], 0.025, "l2") == "no l2 run at this seed"


def test_table_and_verdict(runs, tmp_path):
    spec20 = tmp_path / "more"  # a second root: a 20-epoch budget
    write_run(spec20 / "spec", seed=0, val=0.02, compression=22.2, epochs=20, prune="gmp", target=0.955)
    write_run(spec20 / "gmp", seed=0, val=0.021, compression=22.2, epochs=20, sens="none", prune="gmp", target=0.955)
    write_run(spec20 / "copy_of_spec_s0", seed=0, val=0.025, compression=150, test=0.019)  # counted once
    write_run(spec20 / "s40", seed=0, val=0.02, compression=50, epochs=40)  # gmp but no l2 at 40 epochs
    write_run(spec20 / "g40", seed=0, val=0.02, compression=40, epochs=40, sens="none", prune="gmp", target="40x")
    write_run(spec20 / "s4a", seed=0, val=0.03, compression=5, epochs=4)  # no baseline at all at 4 epochs
    write_run(spec20 / "s4b", seed=0, val=0.04, compression=9, epochs=4, lam=1e-2)
    done = subprocess.run([sys.executable, str(SCRIPT), str(runs), str(spec20)], capture_output=True, text=True,
                          check=True, cwd=tmp_path)
    out = done.stdout
    rows = {tuple(c.strip() for c in line.split("|")[1:4]): [c.strip() for c in line.split("|")[4:-1]]
            for line in out.splitlines() if line.startswith("| lenet300")}
    assert {key[1:] for key in rows} == {("4", "spec: 2 settings (search)"), ("20", "spec: λ 0.001, gmp 22.2×"),
                                         ("40", "spec: λ 0.001, search"), ("60", "spec: λ 0.001, search"),
                                         ("60", "spec: λ 0.003, search")}
    assert "copy_of_spec_s0 repeats" in done.stderr
    std = statistics.stdev([2.12132, 2.0])
    # seeds | compression | val err | test err | × l2 | l2 test | × gmp | gmp test | × gmp_units | its test
    assert rows["lenet300/mnist", "60", "spec: λ 0.001, search"] == [
        "2", "155 ± 7×", "2.75 %", "2.05 %", f"2.06 ± {std:.2f}× (2)", "2.35 %",
        "1.50× (1); one gmp point (1); neither (1)", "2.00 %", "no gmp_units runs", ""]
    assert rows["lenet300/mnist", "4", "spec: 2 settings (search)"] == [
        "1", "5–9×", "3.00–4.00 %", "2.60–3.60 %", "no l2 runs", "", "no gmp runs", "", "no gmp_units runs", ""]
    assert rows["lenet300/mnist", "40", "spec: λ 0.001, search"][4:] == [
        "no l2 runs", "", "1.25× (1)", "1.60 %", "no gmp_units runs", ""]
    assert rows["lenet300/mnist", "60", "spec: λ 0.003, search"][4:] == [
        "outside l2's range; neither (2)", "", "one gmp point; neither (2)", "", "no gmp_units runs", ""]
    # The 20-epoch budget's only l2 run (other/l2_20ep) prunes by search: no l2 curve of gmp's
    # schedule to set the spec gmp run against (l2 is compared along spec's own schedule).
    # gmp's one point is at spec's own target: compared at equal compression (0.021 - 0.02).
    assert rows["lenet300/mnist", "20", "spec: λ 0.001, gmp 22.2×"][4:] == [
        "no l2 run at this seed", "", "one gmp point; at equal compression val err +0.10 pt (1)", "1.70 %",
        "no gmp_units runs", ""]
    assert "- **lenet300/mnist, 60 epochs.** Against l2, spec wins at *λ 0.001, search* (2.06 ± 0.09×; test " \
           "error 2.05 % against 2.35 % on those seeds); no comparison for 2 more spec runs (outside l2's range for " \
           "2 spec runs); ordered only: *λ 0.003, search* neither on 2 seeds." in out
    assert "Against gmp, spec is ahead on a single seed at *λ 0.001, search* (1.50×; test error 1.90 % against " \
           "2.00 % on those seeds); no comparison for 3 more spec runs (one gmp point for 3 spec runs); ordered " \
           "only: *λ 0.003, search* neither on 2 seeds; *λ 0.001, search* neither on 1 seed." in out
    assert "- **lenet300/mnist, 4 epochs.** No l2 or gmp or gmp_units run at this budget." in out
    assert "- **lenet300/mnist, 20 epochs.** Against l2, spec: no comparison (no l2 run at this seed). Against " \
           "gmp, spec is ahead on a single seed at *λ 0.001, gmp 22.2×* at equal compression (val err +0.10 pt; " \
           "test error 1.60 % against 1.70 % on those seeds)." in out


# The runs the results page's table of what the sensitivity buys is made of: the reference runs and
# the LeNet-5 runs from the dense start (one seed each).
DOCUMENTED = ["outputs/reference", "outputs/study/dense5_60"]


@pytest.mark.parametrize("measure", ["compression", "macs"])
def test_the_results_page_holds_the_table_of_the_committed_runs(measure):
    done = subprocess.run([sys.executable, str(SCRIPT), "--measure", measure, *DOCUMENTED], capture_output=True,
                          text=True, check=True, cwd=REPO)
    rows = [line for line in done.stdout.splitlines() if line.startswith("| lenet")]
    verdicts = [line for line in done.stdout.splitlines() if line.startswith("- **lenet")]
    assert len(rows) >= 6 and len(verdicts) >= 4
    results = (REPO / "docs" / "results.md").read_text()
    for row in rows:
        assert row in results, f"docs/results.md lacks or differs in: {row}"
    for verdict in verdicts:
        assert verdict in results, f"docs/results.md lacks or differs in: {verdict}"


def test_the_cost_measure_sets_the_compacted_networks_against_each_other(tmp_path):
    # The same validation errors as a compression curve, but spec's network costs 4x fewer
    # multiply-adds than dense and l2's 2x to 8x: at spec's val error (halfway), l2's is 4x
    # (log-linear), a ratio of 1.0; a run without a structure record is left out with a note.
    root = tmp_path / "runs"
    write_run(root / "l2/a", seed=0, val=0.02, compression=50, sens="l2", macs_x=2.0)
    write_run(root / "l2/b", seed=0, val=0.04, compression=100, sens="l2", lam=2e-3, macs_x=8.0)
    write_run(root / "spec/a", seed=0, val=0.03, compression=70, macs_x=4.0)
    write_run(root / "spec/old", seed=1, val=0.03, compression=70)
    by_macs = st.find_runs([str(root)], "macs")
    assert sorted(r.compression for r in by_macs) == [2.0, 4.0, 8.0]  # the measure, not the compression
    comp = st.compare([r for r in by_macs if r.method == "spec"], [r for r in by_macs if r.method == "l2"], "l2")
    assert comp.ratios == [pytest.approx(1.0)]
    by_compression = st.compare(*(([r for r in st.find_runs([str(root)]) if r.method == m and r.seed == 0])
                                  for m in ("spec", "l2")), "l2")
    assert by_compression.ratios == [pytest.approx(70 / (50 * 2 ** 0.5))]
    out = subprocess.run([sys.executable, str(SCRIPT), "--measure", "macs", str(root)], capture_output=True,
                         text=True, check=True, cwd=REPO)
    assert "| fewer MACs |" in out.stdout and "| spec: λ 0.001, search | 1 | 4.0× |" in out.stdout
    assert "1 runs record no macs" in out.stderr


def test_the_neuron_variant_and_the_structured_baseline_take_their_places(tmp_path):
    # neuron is a subject with rows of its own (its scale in its setting), set against every
    # baseline; gmp_units (sens=none prune=gmp_units) is the third baseline, one curve per seed.
    root = tmp_path / "runs"
    write_run(root / "neuron/s0", seed=0, val=0.03, compression=80, sens="neuron", scale="max")
    write_run(root / "units/a", seed=0, val=0.02, compression=20, sens="none", prune="gmp_units", target="20x")
    write_run(root / "units/b", seed=0, val=0.04, compression=80, sens="none", prune="gmp_units", target="80x")
    found = st.find_runs([str(root)])
    assert sorted(r.method for r in found) == ["gmp_units", "gmp_units", "neuron"]
    neuron = [r for r in found if r.method == "neuron"]
    comp = st.compare(neuron, [r for r in found if r.method == "gmp_units"], "gmp_units")
    assert comp.ratios == [pytest.approx(80 / 40)]  # gmp_units at val 0.03: exp((log 20 + log 80) / 2) = 40x
    out = subprocess.run([sys.executable, str(SCRIPT), str(root)], capture_output=True, text=True, check=True,
                         cwd=REPO).stdout
    assert "| neuron: λ 0.001, search, S scaled: max | 1 | 80× |" in out
    assert "Against gmp_units, neuron is ahead on a single seed at *λ 0.001, search, S scaled: max* (2.00×;" in out
