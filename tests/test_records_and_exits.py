"""Records, exit codes and interrupts: what the command line answers when a dataset is missing, a
sweep's jobs fail, `sensreg eval` is given a checkpoint that does not add up, Ctrl-C comes at a
late phase of a run, a resume finds no last.pt, a run folder is removed under a run, and a path
is longer than the file system takes."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import sensreg


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
