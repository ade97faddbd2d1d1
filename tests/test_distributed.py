"""Several processes (gloo on the CPU) against one: the same gradients, sensitivities, masks and
weights from the same global batch; one run folder, written by process 0 only."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from sensreg.run import distributed
from sensreg.records.checkpoint import load_checkpoint
from sensreg.run.distributed import DistributedError, from_environment
from sensreg.run.interrupt import Interrupted
from sensreg.models import build_model
from sensreg.method.pruning import Masks, prunable_names
from sensreg.method.sensitivity import VARIANTS, batched_vjps_are_faster, get_variant
from sensreg.run.lifecycle import resume_state, train
from sensreg.method.step import StepSettings
from sensreg.run.loop import TrainStep
from sensreg.records.train_state import load_training_state

from conftest import HANG_S, config, parametrized, stop_at_step


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, task: str, args: tuple, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    d = distributed.init(from_environment(), torch.device("cpu"))
    try:
        result = TASKS[task](d, *args)
    except Interrupted as err:
        result = {"interrupted": str(err)}
    finally:
        distributed.shutdown(d)
    torch.save(result, out / f"rank{rank}.pt")


def run_processes(tmp_path: Path, task: str, *args, world: int = 2) -> list:
    """Run TASKS[task](dist, *args) in ``world`` processes of one gloo group; their results."""
    out = Path(tempfile.mkdtemp(prefix=f"results_{task}_", dir=tmp_path))
    mp.spawn(_worker, args=(world, free_port(), task, args, out), nprocs=world, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


# --- one step: gradients and sensitivities ---------------------------------------------------

def _step(model_name: str):
    torch.manual_seed(0)
    model = build_model(model_name, 10, (1, 28, 28)).double()
    x = torch.randn(7, 1, 28, 28, dtype=torch.float64)  # 7 over 2 processes: parts of 4 and 3
    y = torch.randint(10, (7,))
    return model, x, y


def gradients_of_part(d, model_name, sens, classes, batched, reduction):
    model, x, y = _step(model_name)
    names = prunable_names(model, "all")
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), Masks(model, names),
                     StepSettings(get_variant(sens), names, "logits", classes, reduction=reduction),
                     generator=torch.Generator().manual_seed(5), dist=d)
    if batched is not None:
        step.method.batched = batched
    part = slice(0, 4) if d.rank == 0 else slice(4, 7)
    loss, grads, sens_values = step.gradients(x[part], y[part], total=7)
    return {"loss": loss, "grads": grads, "sens": sens_values}


@pytest.mark.parametrize("model_name, sens, classes, batched, reduction", [
    ("lenet300", "spec", None, None, "batch"),
    ("lenet300", "unspec", None, True, "batch"),   # one batched VJP call, one reduction of (C, ...) tensors
    ("lenet300", "unspec", None, False, "batch"),  # a VJP and a reduction per class
    ("lenet5", "unspec", 3, None, "batch"),        # sampled classes: the same draw on every process
    ("lenet5", "spec", None, None, "batch"),
    ("lenet5", "loss", None, None, "batch"),
    # per-sample sensitivities: each process sums its samples' absolute values, then one sum
    ("lenet300", "spec", None, None, "sample"),
    ("lenet300", "unspec", None, None, "sample"),
    ("lenet5", "unspec", 3, None, "sample"),
    ("lenet5", "spec", None, None, "sample"),
    # the neuron variant: per-sample by definition, its units' values summed over the processes
    ("lenet300", "neuron", None, None, "sample"),
    ("lenet5", "neuron", 3, None, "sample"),
])
def test_two_processes_give_the_gradients_and_sensitivities_of_the_whole_batch(
        tmp_path, model_name, sens, classes, batched, reduction):
    parts = run_processes(tmp_path, "gradients_of_part", model_name, sens, classes, batched, reduction)
    model, x, y = _step(model_name)
    names = prunable_names(model, "all")
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), Masks(model, names),
                     StepSettings(get_variant(sens), names, "logits", classes, reduction=reduction),
                     generator=torch.Generator().manual_seed(5))
    if batched is not None:
        step.method.batched = batched
    loss, grads, sens_values = step.gradients(x, y)
    if batched is None:
        assert step.method.batched == batched_vjps_are_faster(model)
    for part in parts:
        torch.testing.assert_close(part["loss"], loss, rtol=1e-12, atol=1e-12)
        for got, want in zip(part["grads"] + part["sens"], grads + sens_values):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # The sensitivity is not the mean of the processes' own sensitivities: the absolute value
    # comes after the sum. (Otherwise this comparison would not tell the two apart.)
    if sens != "loss":
        assert any(not torch.equal(s, s.abs()) for s in grads)


def test_every_sensitivity_variant_is_summed_over_processes_above():
    # The cases above are chosen by hand (models, class sampling, batched VJPs, reductions); each
    # variant with a sensitivity must be among them: its signed derivatives are what is summed.
    covered = set(parametrized(test_two_processes_give_the_gradients_and_sensitivities_of_the_whole_batch, "sens"))
    missing = [name for name, v in VARIANTS.items() if v.uses_sensitivity and name not in covered]
    assert not missing, (f"the sensitivity variant(s) {missing} of VARIANTS are in no case of "
                         f"test_two_processes_give_the_gradients_and_sensitivities_of_the_whole_batch "
                         f"(tests/test_distributed.py): add one for each")


# --- whole runs -----------------------------------------------------------------------------

def run_config(sens: str = "spec", model: str = "lenet300", augment: bool = False):
    return config(model={"name": model}, sens={"name": sens, "lam": 1e-3},
                  # 297 training images: a short last batch
                  data={"num_train": 330, "num_test": 100, "augment": augment},
                  trainer={"epochs": 3, "batch_size": 40, "deterministic": True},
                  prune={"name": "search", "patience": 0, "tolerance": 0.2})


def train_run(d, run_dirs, sens, model, resume=False, stop_at=None, augment=False):
    cfg = run_config(sens, model, augment)
    if stop_at is not None and d.rank == 1:  # SIGTERM to process 1 alone, during step stop_at
        stop_at_step(pytest.MonkeyPatch(), stop_at, signal.SIGTERM)  # never undone: the process ends
    run_dir = Path(run_dirs[d.rank])
    saved = resume_state(cfg, Path(run_dirs[0]) / "last.pt") if resume else None
    summary = train(cfg, run_dir, saved, d)
    return {"summary": summary}


def final_state(run_dir: Path):
    ckpt = load_checkpoint(run_dir / "model.pt")
    return ckpt["state_dict"], ckpt["masks"]


@pytest.mark.slow
@pytest.mark.parametrize("sens, model, augment", [
    ("spec", "lenet300", False),
    ("unspec", "lenet5", False),
    ("loss", "lenet300", True),  # random crops and flips drawn for the whole batch, then divided
])
def test_a_two_process_run_equals_a_one_process_run(tmp_path, sens, model, augment):
    one = tmp_path / "one"
    train(run_config(sens, model, augment), one)
    two = [tmp_path / "two", tmp_path / "two_rank1"]  # process 1 is told another folder
    results = run_processes(tmp_path, "train_run", [str(p) for p in two], sens, model, False, None, augment)

    assert not two[1].exists()  # only process 0 writes
    state_1, masks_1 = final_state(one)
    state_2, masks_2 = final_state(two[0])
    assert masks_1.keys() == masks_2.keys()
    for name in masks_1:
        assert torch.equal(masks_1[name], masks_2[name]), name
        assert not state_2[name][~masks_2[name]].any()  # pruned entries exactly zero
    # Two halves summed by the all-reduce round differently from one batch; over three epochs of
    # SGD that grows to about 2e-5 in a few LeNet-5 weights on some processors (AMD EPYC).
    for name in state_1:
        torch.testing.assert_close(state_2[name], state_1[name], rtol=1e-3, atol=1e-4)
    s1 = json.loads((one / "summary.json").read_text())
    s2 = json.loads((two[0] / "summary.json").read_text())
    assert s1["remaining_pct"] < 100  # the search pruned: the masks were put to the test
    assert s2["remaining_pct"] == s1["remaining_pct"]
    assert s2["test_error"] == s1["test_error"]
    assert [t["threshold"] for t in s2["thresholds"]] == pytest.approx([t["threshold"] for t in s1["thresholds"]])
    assert s2["processes"] == 2 and "processes" not in s1
    # Every process returns the same summary.
    for key in ("test_error", "remaining_pct", "val_loss"):
        assert results[0]["summary"][key] == results[1]["summary"][key]


@pytest.mark.slow
def test_a_stop_sent_to_one_process_stops_all_at_the_same_step_and_resumes_exactly(tmp_path):
    whole = [tmp_path / "whole", tmp_path / "whole_rank1"]
    run_processes(tmp_path, "train_run", [str(p) for p in whole], "spec", "lenet300")
    cut = [tmp_path / "cut", tmp_path / "cut_rank1"]
    results = run_processes(tmp_path, "train_run", [str(p) for p in cut], "spec", "lenet300", False, 12)
    assert all("interrupted" in r for r in results)  # both stopped, not only the signalled one
    state = load_training_state(cut[0] / "last.pt")
    assert (state["loop"]["epoch"], state["loop"]["batch"]) == (1, 4)  # 8 steps an epoch: step 12
    assert json.loads((cut[0] / "summary.json").read_text())["status"] == "interrupted"

    alone = tmp_path / "alone"  # the same checkpoint, continued by a single process
    shutil.copytree(cut[0], alone)
    run_processes(tmp_path, "train_run", [str(p) for p in cut], "spec", "lenet300", True)
    a, masks_a = final_state(whole[0])
    b, masks_b = final_state(cut[0])
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0)
    for name in masks_a:
        assert torch.equal(masks_a[name], masks_b[name])

    cfg = run_config("spec", "lenet300")
    train(cfg, alone, resume_state(cfg, alone / "last.pt"))
    c, masks_c = final_state(alone)
    for name in a:
        torch.testing.assert_close(c[name], a[name], rtol=1e-4, atol=1e-6)
    for name in masks_a:
        assert torch.equal(masks_a[name], masks_c[name])


def imagenet_run_config(root: str):
    from test_data_imagenet import imagenet_config

    # No augmentation: its crops are drawn in each process's loader, not shared.
    return imagenet_config(Path(root), "model=lenet300", "data.augment=false", "data.num_workers=0",
                           "trainer.epochs=2", "trainer.deterministic=true", "sens.lam=1e-3",
                           "prune.patience=0", "prune.tolerance=0.5")


def train_imagenet_run(d, run_dirs, root):
    return {"summary": train(imagenet_run_config(root), Path(run_dirs[d.rank]), None, d)}


@pytest.mark.slow
def test_two_processes_on_an_image_folder_dataset_equal_one(tmp_path):
    """Each process decodes only its part of every batch; the result is that of one process."""
    from test_data_imagenet import write_imagenet

    root = write_imagenet(tmp_path / "imagenet")
    one = tmp_path / "one"
    train(imagenet_run_config(str(root)), one)
    two = [tmp_path / "two", tmp_path / "two_rank1"]
    run_processes(tmp_path, "train_imagenet_run", [str(p) for p in two], str(root))
    assert not two[1].exists()
    state_1, masks_1 = final_state(one)
    state_2, masks_2 = final_state(two[0])
    for name in masks_1:
        assert torch.equal(masks_1[name], masks_2[name]), name
    for name in state_1:
        torch.testing.assert_close(state_2[name], state_1[name], rtol=1e-4, atol=1e-6)
    s1, s2 = (json.loads((run / "summary.json").read_text()) for run in (one, two[0]))
    assert s1["remaining_pct"] < 100 and s2["remaining_pct"] == s1["remaining_pct"]
    assert s2["test_error"] == s1["test_error"]


TASKS = {"gradients_of_part": gradients_of_part, "train_run": train_run,
         "train_imagenet_run": train_imagenet_run}


# --- the launchers' environment --------------------------------------------------------------

def test_the_environment_of_torchrun_is_read():
    d = from_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (d.rank, d.world, d.local_rank, d.enabled, d.is_main) == (3, 4, 1, True, False)
    assert d.device(torch.device("cuda")) == torch.device("cuda", 1)
    assert d.device(torch.device("cpu")) == torch.device("cpu")
    single = from_environment({})
    assert (single.rank, single.world, single.enabled, single.is_main) == (0, 1, False, True)


@pytest.mark.parametrize("env", [{"RANK": "2", "WORLD_SIZE": "2"}, {"RANK": "x", "WORLD_SIZE": "2"}])
def test_a_broken_environment_is_a_clear_error(env):
    with pytest.raises(DistributedError, match="torchrun --nproc-per-node"):
        from_environment(env)


@pytest.mark.slow
def test_torchrun_writes_one_run_folder_with_one_summary(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "sensreg", "train", "~experiment", "model=resnet20", "data=synthetic", "data.num_train=200",
         "trainer.device=cpu", "trainer.epochs=1", "trainer.progress=false"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = list((tmp_path / "outputs").rglob("summary.json"))
    assert len(summaries) == 1
    summary = json.loads(summaries[0].read_text())
    assert summary["status"] == "completed" and summary["processes"] == 2
    # Nothing else under outputs/: the second process's Hydra folder was not left behind.
    run_dir = summaries[0].parent
    assert [p for p in (tmp_path / "outputs").rglob("*") if p.is_dir() and run_dir not in (p, *p.parents)
            and p not in run_dir.parents] == []
    assert proc.stdout.count("test error") == 1  # one process reports


@pytest.mark.slow
def test_a_sweep_of_two_task_jobs_through_submitit_trains_each_point_on_two_processes(tmp_path):
    """What `hydra/launcher=slurm hydra.launcher.tasks_per_node=2` does on a cluster, with
    submitit's local executor: each sweep point is one job of two tasks, which form one run."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from conftest import TINY, run_dirs, sensreg

    sweep_dir = tmp_path / "sweep"
    out = sensreg("train", "-m", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2",
                  f"hydra.sweep.dir={sweep_dir}", *TINY, "trainer.epochs=1", "sens.lam=0,1e-4", cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    runs = run_dirs(sweep_dir)
    assert [r.name for r in runs] == ["0_lenet300_spec", "1_lenet300_spec"]
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["processes"] == 2
        assert (run / "train.log").read_text().count("test error") == 1  # written by one task
