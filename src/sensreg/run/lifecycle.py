"""One training run, from its config to a finished run folder.

``train`` is the whole life of a run: the summary says ``running``; the data, model, optimizer,
masks, step and pruning schedule are set up (``setup_training``), a resumed run's state is
restored, the epochs run (``train.run_epochs``), and the test evaluation, model.pt and the
completed summary are written (``finish``). Whatever ends the run early is recorded in the
summary (``failed`` or ``interrupted``, with the error) before it is raised again.

``resume_state`` reads and checks the last.pt a run continues from, before anything is written.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sensreg.run import evaluate as evaluation
from sensreg.records.config_keys import NOT_COMPUTATION
from sensreg.run.config import ConfigError, TrainConfig
from sensreg.run.config_diff import config_differences
from sensreg.run.devices import resolve_device
from sensreg.data import Dataset, load_dataset
from sensreg.run.distributed import SINGLE, Dist
from sensreg.run.environment import git_commit, versions
from sensreg.run.init_weights import init_model_
from sensreg.run.interrupt import Interrupted, StopSignals
from sensreg.models import build_model
from sensreg.method.positions import epoch_at, is_fraction
from sensreg.method.prune_schedules import build_prune_schedule
from sensreg.run.trackers import NO_TRACKERS, Trackers
from sensreg.method.pruning import Masks, prunable_names, sparsity_stats
from sensreg.records.folder import CHECKPOINT_NAME, MODEL_NAME, RunFolder
from sensreg.records.report import report_for_trackers
from sensreg.records.summary import ABSENT, RunSummary
from sensreg.records.structure import network_structure, structure_lines
from sensreg.method.sensitivity import get_variant
from sensreg.method.step import StepSettings
from sensreg.records.tables import layer_table, render_text
from sensreg.run.loop import Training, TrainStep, build_optimizer, kept_checkpoint, run_epochs
from sensreg.records.train_state import load_training_state

log = logging.getLogger("sensreg")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"


def train(cfg: TrainConfig, run_dir: Path, saved: dict[str, Any] | None = None,
          dist: Dist = SINGLE, trackers: Trackers = NO_TRACKERS) -> dict[str, Any]:
    """Train, regularize, prune and evaluate as ``cfg`` says; write the run folder; return the summary.

    ``saved``: the training state to continue from (``resume_state``), None for a fresh run.
    ``dist``: this process's place among several (``distributed.py``); only process 0 writes
    the run folder, every process returns the summary. ``trackers``: the experiment trackers
    the run is logged to (``trackers.py``; process 0's, none on the others).
    """
    folder = RunFolder(run_dir)
    if dist.is_main:
        folder.path.mkdir(parents=True, exist_ok=True)
    started = time.time()
    summary = started_summary(cfg, started, saved, dist)
    write_summary = (lambda: folder.write_summary(summary)) if dist.is_main else (lambda: None)
    tr = None
    try:
        write_summary()  # inside: where even this first write fails, the summary says so if it can
        # Signals are caught from here on, so a stop during the set-up is orderly too.
        with StopSignals() as stop:
            tr = setup_training(cfg, folder, summary, saved, stop, dist, session_start=started)
            if trackers:
                if summary.trackers is ABSENT:  # (a resumed run continues those its summary names)
                    summary.trackers = {}
                trackers.start(folder.path, cfg.to_dict(), summary.trackers, tr.loop.epoch if saved else None,
                               decisions_done=len(tr.prune.thresholds), stopping=lambda: stop.requested is not None)
                tr.trackers = trackers
                write_summary()  # with the tracker runs' ids
            run_epochs(tr)
            finish(tr)
            write_summary()
            if trackers.names:
                trackers.finish(folder.path, summary.as_dict(), *report_for_trackers(folder.path))
            trackers.close("completed")
    except BaseException as err:
        # SystemExit: a scheduler's signal handler (submitit's requeue) ended the process.
        interrupted = isinstance(err, (Interrupted, KeyboardInterrupt, SystemExit))
        summary.status = "interrupted" if interrupted else "failed"
        summary.error = str(err) if isinstance(err, Interrupted) else f"{type(err).__name__}: {err}"
        # Where the run got to: the loop's, or the resumed state's if it failed in the set-up.
        done, earlier = (tr.loop.epoch, tr.loop.elapsed) if tr is not None else \
            (saved["loop"]["epoch"], saved["loop"]["elapsed"]) if saved is not None else (0, 0.0)
        summary.epochs_completed = done
        summary.wall_time_s = earlier + time.time() - started
        if folder.has_checkpoint():
            summary.checkpoint_to_resume = CHECKPOINT_NAME
        if folder.gone() is None:  # nothing is written into a folder removed under the run
            write_summary()
        trackers.close(summary.status)
        raise
    return summary.as_dict()


def started_summary(cfg: TrainConfig, started: float, saved: dict[str, Any] | None,
                    dist: Dist) -> RunSummary:
    """summary.json as a run starts (status ``running``); a resumed run keeps its first start
    and adds this one to ``resumed``."""
    summary = RunSummary(
        status="running", config_hash=cfg.hash(), seed=cfg.trainer.seed,
        model=cfg.model.name, data=cfg.data.name, sens=cfg.sens.name,
        versions=versions(), git_commit=git_commit(),
        started=time.strftime(TIME_FORMAT, time.localtime(started)),
    )
    if saved is not None:  # (its summary as last.pt holds it: a dict)
        summary.started = saved["summary"].get("started", summary.started)
        if "trackers" in saved["summary"]:  # the tracker runs it continues
            summary.trackers = saved["summary"]["trackers"]
        summary.resumed = saved["summary"].get("resumed", []) + [
            {"at": time.strftime(TIME_FORMAT), "epoch": saved["loop"]["epoch"],
             "batch": saved["loop"]["batch"]}]
    if dist.enabled:
        summary.processes = dist.world
    return summary


def resume_state(cfg: TrainConfig, path: Path | None) -> dict[str, Any] | None:
    """The training state in ``path`` (a last.pt), checked against ``cfg``; None without a path.

    Raises CheckpointError for an unreadable or foreign file, and ConfigError where the saved
    run's config differs from ``cfg`` in anything but the epoch count and where the run executes.
    """
    if path is None:
        return None
    saved = load_training_state(path)
    differences = config_differences(saved["config"], cfg.to_dict(),
                                     ignore=NOT_COMPUTATION + (("trainer", "epochs"),))
    if differences:
        raise ConfigError(f"cannot resume {path} with a different config; only trainer.epochs (and "
                          f"where the run executes) may change. Differences:\n  - " + "\n  - ".join(differences))
    if saved["loop"]["epoch"] > cfg.trainer.epochs:
        raise ConfigError(f"cannot resume {path} with trainer.epochs={cfg.trainer.epochs}: it has already "
                          f"completed {saved['loop']['epoch']} epochs.")
    return saved


def seed_everything(seed: int, deterministic: bool) -> None:
    import random

    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed % 2**32)
    except ImportError:
        pass
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


# λ from which the shrink takes a weight of insensitivity 1 below a hundredth of its value within
# 50 steps ((1 - 0.09)^50 < 0.01): faster than any gradient can hold it up.
USELESS_LAM = 0.09


def useless_settings(cfg: TrainConfig, train_size: int, num_classes: int) -> list[str]:
    """Settings the config check lets through, as they are legal, that certainly waste the run;
    each a one-line warning, logged before the first step."""
    found = []
    if cfg.sens.name != "none" and cfg.sens.lam >= USELESS_LAM:
        found.append(f"sens.lam={cfg.sens.lam:g} shrinks a weight that the output does not depend on "
                     f"to under 1 % of its value within {math.ceil(math.log(0.01) / math.log(1 - cfg.sens.lam))} "
                     f"step(s): the network will end near chance. Usual values are 1e-5 to 1e-3.")
    if cfg.trainer.batch_size > train_size:
        found.append(f"trainer.batch_size={cfg.trainer.batch_size} is larger than the training split "
                     f"({train_size} samples): every epoch is one step over all of them.")
    if cfg.sens.name in ("unspec", "neuron") and cfg.sens.classes is not None and cfg.sens.classes >= num_classes:
        found.append(f"sens.classes={cfg.sens.classes} is not fewer than the dataset's {num_classes} "
                     f"classes: the exact sensitivity over all of them is computed (sens.classes=null).")
    epochs = cfg.trainer.epochs
    if cfg.prune.name == "search" and cfg.prune.patience >= epochs:
        # (a warning, not a refusal: `sensreg train ~experiment trainer.epochs=1` must run)
        found.append(f"prune.patience={cfg.prune.patience}: a threshold search waits for that many epochs "
                     f"without a lower validation loss, and the run has {epochs}: nothing will be pruned. "
                     f"Give a patience below trainer.epochs (0: a search after every epoch).")
    for section in ("eta_schedule", "lam_schedule"):
        schedule = getattr(cfg, section)
        # A fraction is where the run is at that point, whatever its length: in a run too short to
        # reach it (0.8 of a one-epoch try) it is no mistake to warn about.
        late = [m for m in schedule.milestones if not is_fraction(m) and epoch_at(m, epochs) >= epochs] \
            if schedule.name == "step" else []
        if late:  # (a milestone M takes effect from epoch M + 1 on: regularizer.step)
            found.append(f"{section}.milestones: {', '.join(map(str, late))} come(s) after the last epoch "
                         f"(trainer.epochs={epochs}), so the factor never changes there; give epochs of the run, "
                         f"or fractions of it ({section}.milestones=[0.5,0.75]).")
    return found


def setup(cfg: TrainConfig, dist: Dist = SINGLE) -> tuple[torch.device, Dataset, nn.Module]:
    """Device, data and model for ``cfg``; raises on a missing dataset or a bad init checkpoint."""
    device = dist.device(resolve_device(cfg.trainer.device))
    seed_everything(cfg.trainer.seed, cfg.trainer.deterministic)
    data = load_dataset(cfg.data.name, cfg.data.root, cfg.data.val_fraction, cfg.data.split_seed,
                        device if cfg.data.on_device else "cpu", **cfg.data.loader_options())
    if not cfg.data.on_device:
        data = replace(data, train=data.train.to(device), val=data.val.to(device), test=data.test.to(device))
    model = build_model(cfg.model.name, data.num_classes, data.input_shape, **cfg.model.options())
    if cfg.trainer.channels_last and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        # NHWC convolutions: on the CPU their backward pass is about twice as fast (LeNet-5).
        model = model.to(memory_format=torch.channels_last)
    if cfg.trainer.init:
        init_model_(model, cfg.trainer.init, cfg.model.name, data.num_classes, cfg.data.name)
    return device, data, model.to(device)


def step_settings(cfg: TrainConfig, model: nn.Module) -> StepSettings:
    """The method's step as the config's ``sens`` section sets it; the regularized parameters are
    picked from ``sens.params`` as the masks' are from ``prune.params``."""
    sens = cfg.sens
    return StepSettings(variant=get_variant(sens.name),
                        regularize=prunable_names(model, sens.params, cfg.prune.batchnorm),
                        output=sens.output, classes=sens.classes, reduction=sens.reduction,
                        scale=sens.scale, gamma=sens.gamma, scale_over=sens.scale_over)


def setup_training(cfg: TrainConfig, folder: RunFolder, summary: RunSummary, saved: dict[str, Any] | None,
                   stop: StopSignals, dist: Dist = SINGLE, session_start: float | None = None) -> Training:
    """Everything the epoch loop needs, fresh or restored from ``saved``.

    The order is that of every run before it: the seeded global generators are drawn from in
    the same sequence (data split, model initialization), so a seed gives the same run."""
    session_start = time.time() if session_start is None else session_start
    device, data, model = setup(cfg, dist)
    summary.device = str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    log.info("run folder %s | %s on %s, sens=%s, device %s%s | train %d, val %d, test %d",
             folder.path, cfg.model.name, cfg.data.name, cfg.sens.name, summary.device,
             f" x {dist.world} processes" if dist.enabled else "",
             len(data.train), len(data.val), len(data.test))
    for warning in useless_settings(cfg, len(data.train), data.num_classes):
        log.warning("warning: %s", warning)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    if frozen:
        log.info("frozen (requires_grad False): %d parameter tensors, %d values; not trained, regularized or pruned",
                 len(frozen), sum(p.numel() for p in frozen))
    t = cfg.trainer
    optimizer = build_optimizer(cfg, model.parameters())
    masks = Masks(model, prunable_names(model, cfg.prune.params, cfg.prune.batchnorm))
    class_gen = torch.Generator().manual_seed(t.seed + 1)
    step = TrainStep(model, optimizer, masks, step_settings(cfg, model), generator=class_gen,
                     precision=t.precision, compile=t.compile, dist=dist)
    tr = Training(
        cfg, folder, summary, data, model, optimizer, masks, step,
        prune=build_prune_schedule(cfg.prune, t.epochs),
        shuffle_gen=torch.Generator().manual_seed(t.seed), class_gen=class_gen,
        augment_gen=torch.Generator().manual_seed(t.seed + 2)
        if cfg.data.augment and not data.augmented_in_loader else None,
        stop=stop, dist=dist, session_start=session_start)
    if saved is not None:
        tr.restore(saved)
        log.info("resumed from %s at epoch %d%s", CHECKPOINT_NAME, tr.loop.epoch + 1,
                 f", batch {tr.loop.batch + 1}" if tr.loop.batch else "")
    dist.sync_model_(model)  # every process starts from process 0's weights
    return tr


def budget(tr: Training, wall_time_s: float) -> dict[str, Any]:
    """What the run cost: epochs, training steps, training samples seen, and its wall time on
    its device (all sessions of a resumed run together), so that runs (and published points)
    are compared at equal budgets."""
    epochs = tr.loop.epoch
    return {"epochs": epochs, "steps": epochs * tr.prune_ctx.steps_per_epoch,
            "samples": epochs * len(tr.data.train), "wall_time_s": wall_time_s,
            "device": tr.summary.device}


def finish(tr: Training) -> None:
    """The test evaluation (float32, as `sensreg eval` recomputes it), model.pt and the
    completed summary, and the closing log lines."""
    cfg, data, summary = tr.cfg, tr.data, tr.summary
    try:
        test = evaluation.evaluate(tr.model, data.test, cfg.data.eval_batch_size, dist=tr.dist, stop=tr.stop)
    except Interrupted:
        log.info("%s: stopped in the final test evaluation; the last epoch is done and %s",
                 tr.stop.requested, kept_checkpoint(tr))
        raise
    stats = sparsity_stats(tr.model, data.input_shape, tr.masks.names)
    structure = network_structure(tr.model, data.test, tr.masks) if tr.dist.is_main else None
    if tr.dist.is_main:
        model_bytes = tr.folder.save_model(
            tr.model, tr.masks.state_dict(), model_name=cfg.model.name, num_classes=data.num_classes,
            input_shape=data.input_shape, config=cfg.to_dict())
    last, elapsed = tr.loop.rows[-1], tr.elapsed()
    summary.update(
        status="completed", error=ABSENT, checkpoint_to_resume=ABSENT,
        epochs_completed=tr.loop.epoch,
        test_error=test["error"], test_top5_error=test.get("top5_error"), test_loss=test["loss"],
        val_error=last.val_error, val_loss=last.val_loss,
        remaining_pct=stats["prunable"]["remaining_pct"], compression=stats["prunable"]["compression"],
        remaining_pct_all=stats["all"]["remaining_pct"], compression_all=stats["all"]["compression"],
        sparsity=stats, flops=stats["flops"], structure=structure, thresholds=tr.prune.thresholds,
        wall_time_s=elapsed, checkpoint=MODEL_NAME, budget=budget(tr, elapsed),
    )
    if tr.dist.is_main:
        summary.checkpoint_bytes = model_bytes
    from sensreg.records.report import shows_top5

    log.info("test error %.2f%%%s | remaining %.3f%% of prunable parameters (%.1fx), %.3f%% of all (%.1fx) "
             "| FLOPs left %.2f%%", 100 * test["error"],
             f" (top-5 {100 * test['top5_error']:.2f}%)" if "top5_error" in test and shows_top5(data.num_classes)
             else "",
             stats["prunable"]["remaining_pct"], stats["prunable"]["compression"],
             stats["all"]["remaining_pct"], stats["all"]["compression"], stats["flops"]["remaining_pct"])
    log.info("per-layer sparsity:\n%s", render_text(layer_table(stats, structure)).rstrip())
    for line in structure_lines(structure) if tr.dist.is_main else ():
        log.info("%s", line)
    # The run's start names the folder too, but by now it has scrolled far out of sight.
    log.info("run folder: %s", tr.folder.path)
