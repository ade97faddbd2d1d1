#!/usr/bin/env python
"""One GPU session in phases ordered by value, each with its own time cap, each writing its
results under $OUT the moment it finishes (a later phase running out of time loses nothing
before it). Started by scripts/gpu_session.sh, which installs what the machine lacks first.

- smoke: the gpu-marked tests; a short run of every sensitivity variant and of spec in bf16,
  fp16 and compiled, each checked by `sensreg eval` on the device; the host synchronisations
  inside a few training steps of spec (torch.cuda.set_sync_debug_mode).
- speed: scripts/bench_train.py, and the throughput of K concurrent LeNet-5 spec runs on the one
  device (epochs per minute, all runs together) for each K.
- campaign: the runs of scripts/campaign_lenet5.txt, K at a time (the K that measured best),
  their epochs set from that throughput so that every run ends before the cap; then their run
  folders (without last.pt) packed into $OUT/campaign.tar.gz.

Files under $OUT: session.log (the whole log, from the .sh), phases.json, smoke.json,
gpu_tests.log, bench_train.json, concurrency.json, campaign.json, campaign.tar.gz.

    DEVICE=cpu REHEARSAL=1 OUT=/tmp/session python scripts/gpu_session.py   # every phase, tiny, on the CPU
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get("OUT", "/tmp/gpu_session"))
DEVICE = os.environ.get("DEVICE", "cuda")
REHEARSAL = bool(os.environ.get("REHEARSAL"))  # tiny sizes: the whole session in a few minutes on a CPU
START = time.monotonic()
# Seconds from the start: each phase's cap, and the end of everything (a 600 s call, less the
# install and a margin for the archive and the transfer back).
CAPS = {"smoke": 120, "speed": 90}
END = float(os.environ.get("SESSION_SECONDS", 500))
REHEARSAL_CAPS = {"smoke": 240, "speed": 120, "campaign": 120}
# The rehearsal's clock runs this many times slower than the wall clock, so that on a loaded or
# slow machine every cap and timeout stretches alike and the rehearsal does what it would do on an
# idle one (the tests set it: a loaded CI machine must not make the session run out of time).
SLOWDOWN = float(os.environ.get("REHEARSAL_SLOWDOWN", 1)) if REHEARSAL else 1.0
RUNS = Path(os.environ.get("RUNS", "/tmp/gpu_session_runs"))  # run folders; the archive takes the campaign's
MIN_EPOCHS = 100  # a campaign run shorter than this says little: fewer runs rather than shorter ones
PYTHON = sys.executable

if REHEARSAL:
    DATA = ["data=synthetic", "data.num_train=300", "data.num_test=100"]
    SHORT = [*DATA, "trainer.epochs=1"]
    KS = (1, 2)
else:
    DATA = ["data=mnist"]
    SHORT = [*DATA, "trainer.epochs=2"]
    KS = (1, 4, 8, 12)


def say(message: str) -> None:
    print(f"[{time.monotonic() - START:6.1f} s] {message}", flush=True)


def clock() -> float:
    """Seconds since the start, on the session's clock (``SLOWDOWN``)."""
    return (time.monotonic() - START) / SLOWDOWN


def left(cap_end: float) -> float:
    return cap_end - clock()


def write_json(name: str, data) -> None:
    path = OUT / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


def sensreg(*args: str, timeout: float, log: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [PYTHON, "-m", "sensreg", *args]
    try:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=max(timeout, 1) * SLOWDOWN)
    except subprocess.TimeoutExpired as err:
        done = subprocess.CompletedProcess(cmd, 124, err.stdout or "", f"timed out after {timeout:.0f} s")
    if log is not None:
        log.write_text(f"$ {shlex.join(cmd)}\n{done.stdout}\n{done.stderr}")
    return done


def summary_of(run: Path) -> dict:
    try:
        return json.loads((run / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


# --- phase a: smoke -----------------------------------------------------------------------------

SMOKE_RUNS = [(v, [f"sens={v}"]) for v in ("none", "l2", "loss", "spec", "unspec")] + [
    ("spec_sample", ["sens=spec", "sens.reduction=sample"]),
    ("spec_bf16", ["sens=spec", "trainer.precision=bf16"]),
    ("spec_fp16", ["sens=spec", "trainer.precision=fp16"]),
    ("spec_compile", ["sens=spec", "trainer.compile=true"]),
]


def smoke(cap_end: float) -> dict:
    results: dict = {"device": DEVICE, "runs": {}}
    tests = subprocess.run([PYTHON, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"],
                           cwd=REPO, capture_output=True, text=True, timeout=max(left(cap_end) - 60, 10) * SLOWDOWN)
    (OUT / "gpu_tests.log").write_text(tests.stdout + tests.stderr)
    results["gpu_tests"] = {"exit": tests.returncode, "last_line": (tests.stdout.strip().splitlines() or [""])[-1]}
    say(f"gpu-marked tests: {results['gpu_tests']['last_line']}")
    write_json("smoke.json", results)
    for name, overrides in SMOKE_RUNS:
        if name == "spec_fp16" and DEVICE == "cpu":
            results["runs"][name] = {"status": "not run: fp16 needs CUDA"}
            continue
        if name == "spec_compile" and REHEARSAL:  # a CPU compile takes most of the rehearsal's minutes
            results["runs"][name] = {"status": "not run in the rehearsal"}
            continue
        run = RUNS / "smoke" / name
        done = sensreg("train", "~experiment", "model=lenet300", *SHORT, f"trainer.device={DEVICE}",
                       "prune.patience=0", "trainer.progress=false", *overrides, f"hydra.run.dir={run}",
                       timeout=min(60, left(cap_end)), log=RUNS / f"smoke_{name}.log")
        s = summary_of(run)
        entry = {"exit": done.returncode, "status": s.get("status"), "test_error": s.get("test_error"),
                 "remaining_pct": s.get("remaining_pct"), "wall_time_s": s.get("wall_time_s")}
        if done.returncode == 0:
            ev = sensreg("eval", str(run), f"trainer.device={DEVICE}", "--json", timeout=min(30, left(cap_end)))
            try:
                entry["eval_matches_summary"] = json.loads(ev.stdout)["matches_summary"]
            except (ValueError, KeyError):
                entry["eval_error"] = ev.stderr[-500:]
        else:
            entry["error"] = done.stderr[-800:]
        results["runs"][name] = entry
        say(f"smoke {name}: {entry}")
        write_json("smoke.json", results)
    results["host_syncs_in_step"] = count_syncs()
    write_json("smoke.json", results)
    return {"runs_ok": sum(1 for r in results["runs"].values() if r.get("eval_matches_summary"))}


def count_syncs() -> dict:
    """Host synchronisations inside a few training steps of spec, by torch.cuda's own detector."""
    if DEVICE == "cpu":
        return {"counted": False, "why": "no CUDA device: nothing to synchronise with"}
    code = r"""
import json, sys, warnings, torch
sys.path.insert(0, "scripts")
from bench_overhead import make_step
from sensreg.run.config import TrainConfig
from sensreg.data.batching import batches
from sensreg.run.lifecycle import setup
cfg = TrainConfig.from_dict({"data": {"name": "mnist"}, "model": {"name": "lenet300"},
                             "sens": {"name": "spec"}, "trainer": {"device": "cuda"}})
device, data, model = setup(cfg)
step = make_step(cfg, data, model, "spec")
xs = list(batches(data.train, 100, shuffle=True, generator=torch.Generator().manual_seed(0)))[:13]
for x, y in xs[:3]:
    step(x, y, 1e-4)
torch.cuda.synchronize()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    torch.cuda.set_sync_debug_mode("warn")
    for x, y in xs[3:]:
        step(x, y, 1e-4)
    torch.cuda.set_sync_debug_mode(0)
print(json.dumps({"counted": True, "steps": len(xs) - 3, "syncs": len(caught),
                  "where": sorted({str(w.message)[:160] for w in caught})[:10]}))
"""
    try:
        done = subprocess.run([PYTHON, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60 * SLOWDOWN)
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError) as err:
        return {"counted": False, "why": f"{type(err).__name__}: {err}"}


# --- phase b: speed -----------------------------------------------------------------------------

def speed(cap_end: float) -> dict:
    bench = [PYTHON, "scripts/bench_train.py", "--device", DEVICE, "--json", str(OUT / "bench_train.json")]
    if REHEARSAL:
        bench += ["--data", "synthetic", "--models", "lenet300", "--steps", "3", "--rounds", "1", "--warmup", "1",
                  "--variants", "none", "spec", "--resnet", "no"]
    try:
        subprocess.run(bench, cwd=REPO, timeout=max(left(cap_end) - 40, 5) * SLOWDOWN, check=False)
    except subprocess.TimeoutExpired:
        say("benchmark: out of time")
    rates: dict[int, float] = {}
    for k in KS:
        if left(cap_end) < 15:
            break
        rates[k] = concurrent_rate(k, min(60, left(cap_end)))
        say(f"{k} concurrent LeNet-5 spec run(s): {rates[k]:.2f} epochs per minute in all")
        write_json("concurrency.json", {"device": DEVICE, "epochs_per_minute": rates})
    return {"epochs_per_minute": rates}


def concurrent_rate(k: int, timeout: float) -> float:
    """Epochs per minute of ``k`` LeNet-5 spec runs on the device together (0 where none ends)."""
    epochs = 1 if REHEARSAL else 3
    procs, t0 = [], clock()
    for i in range(k):
        cmd = [PYTHON, "-m", "sensreg", "train", "experiment=lenet5_spec", *DATA, f"trainer.epochs={epochs}",
               f"trainer.device={DEVICE}", "trainer.progress=false", "trainer.checkpoint_every=0",
               f"hydra.run.dir={RUNS / f'speed_k{k}_{i}'}"]
        procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    ok = 0
    for p in procs:
        try:
            ok += p.wait(timeout=max(timeout - (clock() - t0), 1) * SLOWDOWN) == 0
        except subprocess.TimeoutExpired:
            p.kill()
    minutes = (clock() - t0) / 60
    return ok * epochs / minutes if ok else 0.0


# --- phase c: campaign --------------------------------------------------------------------------

def read_plan(path: Path) -> list[tuple[str, list[str]]]:
    """``name | overrides`` per line; # starts a comment."""
    plan = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, overrides = line.partition("|")
            plan.append((name.strip(), shlex.split(overrides)))
    return plan


def campaign(cap_end: float) -> dict:
    plan = read_plan(REPO / "scripts" / "campaign_lenet5.txt")
    if REHEARSAL:
        plan = plan[:2]
    try:
        rates = {int(k): v for k, v in json.loads((OUT / "concurrency.json").read_text())["epochs_per_minute"].items()}
    except (OSError, ValueError, KeyError):
        rates = {}
    k = max(rates, key=rates.get) if rates and max(rates.values()) > 0 else 1
    per_run = rates.get(k, 0.0) / k  # epochs per minute of one run among k
    minutes = (left(cap_end) - 30) / 60  # 30 s for the archive
    # The plan is in order of value: as many waves of k runs as leave each run MIN_EPOCHS, at
    # least one; 15 % of the time kept back for evaluation, checkpoints and stragglers.
    budget = 0.85 * minutes * per_run  # epochs one run could train in the time left
    waves = max(1, min(math.ceil(len(plan) / k), int(budget // MIN_EPOCHS)))
    plan = plan[:k * waves]
    epochs = max(1, min(int(budget / waves), 400 if not REHEARSAL else 2))
    say(f"campaign: {len(plan)} runs, {k} at a time ({waves} wave(s)), {epochs} epochs each")
    record = {"device": DEVICE, "concurrent": k, "epochs": epochs, "runs": {}}
    write_json("campaign.json", record)
    pending = list(plan)
    running: list[tuple[str, list[str], subprocess.Popen]] = []
    while pending or running:
        while pending and len(running) < k:
            name, overrides = pending.pop(0)
            cmd = [PYTHON, "-m", "sensreg", "train", *overrides, *(DATA if REHEARSAL else []),
                   f"trainer.epochs={epochs}", f"trainer.device={DEVICE}", "trainer.progress=false",
                   f"hydra.run.dir={RUNS / 'campaign' / name}"]
            running.append((name, overrides, subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL,
                                                              stderr=subprocess.DEVNULL)))
        time.sleep(1)
        for entry in list(running):
            name, overrides, proc = entry
            if proc.poll() is None and left(cap_end) < 25:
                proc.terminate()  # a stop: the run keeps its last checkpoint and says interrupted
                proc.wait()
            if proc.poll() is not None:
                running.remove(entry)
                s = summary_of(RUNS / "campaign" / name)
                record["runs"][name] = {"overrides": overrides, "exit": proc.returncode, **{
                    key: s.get(key) for key in ("status", "epochs_completed", "val_error", "test_error",
                                                "compression", "remaining_pct", "wall_time_s")}}
                write_json("campaign.json", record)
        if pending and left(cap_end) < 60:
            for name, overrides in pending:
                record["runs"][name] = {"overrides": overrides, "status": "not started: out of time"}
            pending = []
    with tarfile.open(OUT / "campaign.tar.gz", "w:gz") as tar:
        tar.add(RUNS / "campaign", arcname="campaign", filter=lambda t: None if t.name.endswith("last.pt") else t)
    write_json("campaign.json", record)
    return {"runs": len(record["runs"]), "completed": sum(r.get("status") == "completed" for r in record["runs"].values())}


def main() -> None:
    import shutil

    OUT.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(RUNS, ignore_errors=True)
    RUNS.mkdir(parents=True)
    phases: dict = {}
    for name, fn in (("smoke", smoke), ("speed", speed), ("campaign", campaign)):
        # Each phase ends by its cap or where the session must end, whichever comes first; in the
        # rehearsal (a CPU, slower) every cap counts from the phase's own start.
        now = clock()
        cap_end = now + REHEARSAL_CAPS[name] if REHEARSAL else min(now + CAPS.get(name, END), END)
        t0 = time.monotonic()
        say(f"phase {name}: until {cap_end:.0f} s")
        try:
            phases[name] = {"status": "done", **fn(cap_end)}
        except Exception as err:  # a phase that breaks must not cost the ones after it
            phases[name] = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
        phases[name]["seconds"] = round(time.monotonic() - t0, 1)
        say(f"phase {name}: {phases[name]}")
        write_json("phases.json", phases)


if __name__ == "__main__":
    main()
