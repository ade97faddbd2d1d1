"""The committed reference results (outputs/reference/) stay re-checkable: every compact model.pt
re-evaluates to exactly its summary's figures, docs/results.md's table is the one the summaries
give, and each row of the README's short table is one of its rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sensreg.run.reevaluate import evaluate_checkpoint

from conftest import REPO, needs_mnist

REFERENCE = REPO / "outputs" / "reference"
RUNS = sorted(p.parent for p in REFERENCE.glob("*/seed*/model.pt"))
# Fashion-MNIST comes from Debian's dataset-fashion-mnist (or a copy in data/); MNIST from data/.
HAVE_FASHION = Path("/usr/share/datasets/fashion-mnist").is_dir() or (REPO / "data" / "FashionMNIST").is_dir()


def _dataset(run) -> str:
    return json.loads((run / "summary.json").read_text()).get("data", "mnist")


def _reevaluable(run):
    needs_fashion = pytest.mark.skipif(_dataset(run) == "fashion_mnist" and not HAVE_FASHION,
                                       reason="Fashion-MNIST not installed (dataset-fashion-mnist)")
    return pytest.param(run, marks=[needs_mnist, needs_fashion], id=f"{run.parent.name}/{run.name}")


def test_every_reference_run_is_complete():
    assert RUNS, "no reference runs committed under outputs/reference/"
    for run in RUNS:
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "completed", run
        assert (run / "metrics.csv").is_file() and (run / "config.yaml").is_file(), run
        assert summary["checkpoint_bytes"] == (run / "model.pt").stat().st_size, run


@pytest.mark.parametrize("run", [_reevaluable(r) for r in RUNS])
def test_reference_checkpoint_reproduces_its_summary(run):
    summary = json.loads((run / "summary.json").read_text())
    result = evaluate_checkpoint(run / "model.pt", {"root": str(REPO / "data")})
    assert result["test_error"] == summary["test_error"]
    assert result["sparsity"]["prunable"]["remaining_pct"] == summary["remaining_pct"]
    for key in ("params", "macs", "units"):  # the compacted network, as recorded
        assert result["structure"][key] == summary["structure"][key], key


def test_the_results_tables_are_the_summaries():
    table = subprocess.run([sys.executable, str(REPO / "scripts" / "results_table.py"), str(REFERENCE)],
                           capture_output=True, text=True, check=True).stdout
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert rows
    results = (REPO / "docs" / "results.md").read_text()
    for row in rows:
        assert row in results, f"docs/results.md's table lacks or differs in: {row}"
    readme = (REPO / "README.md").read_text()
    results_section = readme[readme.index("## Results"):readme.index("## Documentation")]
    readme_rows = [line for line in results_section.splitlines() if line.startswith("| `")]
    assert len(readme_rows) >= 10
    for row in readme_rows:
        assert row in rows, f"README's Results row is no row of scripts/results_table.py's table: {row}"


def test_the_committed_comparison_is_current(tmp_path):
    # The README's `sensreg compare outputs/reference --group` writes compare.csv and compare.md
    # there: the committed ones must be what it writes today (but for the date it was written
    # and where the run folders are given from), every preset in them.
    import csv

    done = subprocess.run([sys.executable, "-m", "sensreg", "compare", str(REFERENCE), "--group",
                           "--out", str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr

    def rows(path):
        with open(path) as f:
            return [{k: v for k, v in r.items() if k != "path"} for r in csv.DictReader(f)]

    def lines(path):
        return [line for line in path.read_text().splitlines() if not line.startswith("Runs below")]

    stale = "is stale: run `sensreg compare outputs/reference --group`"
    assert rows(tmp_path / "compare.csv") == rows(REFERENCE / "compare.csv"), f"outputs/reference/compare.csv {stale}"
    assert lines(tmp_path / "compare.md") == lines(REFERENCE / "compare.md"), f"outputs/reference/compare.md {stale}"
