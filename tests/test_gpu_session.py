"""scripts/gpu_session.sh rehearsed on the CPU: every phase end to end at a tiny size, with the
$OUT layout the GPU call brings back, so that the one device call cannot rot between sessions."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile

import pytest

from conftest import REPO

LAYOUT = {"session.log", "phases.json", "smoke.json", "gpu_tests.log", "bench_train.json", "concurrency.json",
          "campaign.json", "campaign.tar.gz"}


@pytest.mark.slow
def test_the_gpu_session_rehearsed_on_the_cpu_fills_out_as_on_the_gpu(tmp_path):
    out = tmp_path / "out"
    # The session fits its phases to a device's minutes; on a loaded machine its clock runs 50
    # times slower, so that what is checked here is what it does, not how fast this machine is.
    env = {**os.environ, "DEVICE": "cpu", "REHEARSAL": "1", "REHEARSAL_SLOWDOWN": "50", "SKIP_INSTALL": "1",
           "OUT": str(out), "RUNS": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "scripts/gpu_session.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # What comes back from the device: at most 8 files, none deeper than two folders.
    assert {p.name for p in out.iterdir()} == LAYOUT
    phases = json.loads((out / "phases.json").read_text())
    assert [phases[p]["status"] for p in ("smoke", "speed", "campaign")] == ["done"] * 3, phases
    smoke = json.loads((out / "smoke.json").read_text())
    for name, run in smoke["runs"].items():
        if name not in ("spec_fp16", "spec_compile"):  # CUDA only; minutes of CPU compilation
            assert run.get("eval_matches_summary") is True, (name, run)
    assert set(json.loads((out / "concurrency.json").read_text())["epochs_per_minute"]) == {"1", "2"}
    campaign = json.loads((out / "campaign.json").read_text())
    assert campaign["runs"] and all(r["status"] == "completed" for r in campaign["runs"].values()), campaign
    with tarfile.open(out / "campaign.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.endswith("summary.json") for n in names) and not any(n.endswith("last.pt") for n in names)
    assert "Traceback" not in (out / "session.log").read_text()
