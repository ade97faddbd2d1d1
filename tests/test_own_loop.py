"""examples/own_loop.py, a plain PyTorch loop over the public API, trains exactly as `sensreg
train` with the same settings: the same figures in every metrics.csv column they share, epoch
by epoch, and the same final weights, bit for bit (one process, the CPU)."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys

import pytest
import torch

from conftest import REPO, run_in_process

SYNTHETIC = {"num_train": 1024, "num_test": 512, "num_classes": 10, "noise": 1.0, "shape": (1, 28, 28)}


def load_example():
    spec = importlib.util.spec_from_file_location("own_loop", REPO / "examples" / "own_loop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("epochs", [1, 3])
def test_the_own_loop_trains_as_sensreg_train_does(tmp_path, monkeypatch, in_process_cli, epochs):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert run_in_process("train", "data=synthetic", f"trainer.epochs={epochs}", "trainer.device=cpu",
                          f"hydra.run.dir={run}") == 0
    model, rows, test = load_example().train(epochs, seed=0, dataset="synthetic", root=str(tmp_path), **SYNTHETIC)

    with open(run / "metrics.csv") as f:
        expected = list(csv.DictReader(f))
    assert len(rows) == len(expected) == epochs
    for got, want in zip(rows, expected):
        for key, value in got.items():
            assert float(want[key]) == pytest.approx(value, rel=1e-15, abs=0), (got["epoch"], key)
    assert float(expected[-1]["remaining_pct"]) == pytest.approx(4.5, abs=0.01)  # gmp reached 22x

    from sensreg.records.checkpoint import load_checkpoint

    saved = load_checkpoint(run / "model.pt")["state_dict"]
    state = model.state_dict()
    assert saved.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(saved[name], tensor), name
    summary = __import__("json").loads((run / "summary.json").read_text())
    assert summary["test_error"] == test["error"]


def test_the_example_runs_as_a_script_and_imports_no_hydra(tmp_path):
    code = ("import runpy, sys\n"
            f"sys.argv = ['own_loop.py', '--help']\n"
            f"try: runpy.run_path({str(REPO / 'examples' / 'own_loop.py')!r}, run_name='__main__')\n"
            "except SystemExit: pass\n"
            "assert not [m for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf', 'rich')]\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "--epochs" in done.stdout
