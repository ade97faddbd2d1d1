"""The training loop: sensitivity-driven regularization, pruning by thresholding, reporting.

Reads top to bottom: ``train`` sets everything up, runs the epochs (each: train, validate,
maybe prune, log a line) and writes the run folder. ``TrainStep`` is the hot path, one
minibatch; the benchmark script times it directly.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import report
from .checkpoint import (init_model_, load_training_state, rng_states, save_model,
                         save_training_state, set_rng_states)
from .compiling import compile_error, compile_errors, compile_model, compiled_passes
from .config import NOT_COMPUTATION, ConfigError, TrainConfig, config_differences, resolve_device
from .data import Dataset, batches, crop_flip, crop_flip_draws, load_dataset, num_batches, part_of
from .distributed import SINGLE, Dist
from .interrupt import Interrupted, StopSignals
from .evaluate import evaluate
from .models import build_model
from .precision import autocast, grad_scaler
from .pruning import Masks, prunable_names, search_threshold, sparsity_stats
from .per_sample import LayerTape, has_batch_statistics, held_batch_statistics
from .regularizer import build_schedule, insensitivity_stats, lambda_schedule, rescale_, shrink_
from .run_folder import CHECKPOINT_NAME
from .sensitivity import Variant, batched_vjps_are_faster, get_variant, gradients_and_sensitivity

log = logging.getLogger("sensreg")


class TrainStep:
    """One minibatch: forward, loss gradient and sensitivity, shrink, optimizer step, masks.

    ``precision`` (fp32, bf16, fp16): the forward pass runs under autocast in that precision
    (``precision.py``); the weights, gradients and sensitivities stay float32. fp16 scales the
    loss with a GradScaler (``self.scaler``) and skips a step whose gradient overflowed.
    ``compile``: the forward pass goes through ``torch.compile(model)``.
    ``dist``: one of several processes, each given its part of every batch (``distributed.py``);
    the gradient, sensitivities and loss are summed over them, so each takes the same step.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, variant: Variant,
                 masks: Masks, regularized: list[str], output: str = "logits",
                 classes: int | None = None, generator: torch.Generator | None = None,
                 precision: str = "fp32", compile: bool = False, dist: Dist = SINGLE,
                 reduction: str = "batch", scale: str = "none", gamma: float = 1.0,
                 scale_over: str = "tensor"):
        self.model, self.optimizer, self.variant, self.masks = model, optimizer, variant, masks
        self.output, self.classes, self.generator = output, classes, generator
        # Frozen parameters (requires_grad=False) are neither trained nor regularized.
        named = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.names = list(named)
        self.params = list(named.values())
        self.reg_index = [self.names.index(n) for n in regularized]
        self.mask_index = [self.names.index(n) for n in masks.names]
        self.device = next(model.parameters()).device
        self.precision = precision
        self.dist = dist
        self.scaler = grad_scaler(self.device, precision)
        self.compiled = compile
        self.forward = compile_model(model) if compile else model
        # Inductor's compiled backward calls out= kernels (aten::mm.out) that have no rule in
        # autograd's batched-gradient mode, which then fails: compiled, the unspecific VJPs go
        # one class after the other.
        self.batched = batched_vjps_are_faster(model) and not compile
        # The sample reduction records each layer's input and output in the forward pass; with
        # batch norm, the sensitivity has a forward pass of its own, with the batch's statistics
        # held constant, so that each sample's output depends on that sample alone.
        self.tape = LayerTape(model, self.params) if reduction == "sample" and variant.uses_sensitivity else None
        self.held_statistics = self.tape is not None and has_batch_statistics(model)
        self.scale, self.gamma, self.scale_over = scale, gamma, scale_over
        # Kept-entry masks of the regularized tensors (None: not prunable), for insensitivity_stats.
        self.reg_kept = [masks.factors[masks.names.index(n)] if n in masks.names else None for n in regularized]
        self.insensitivity: dict[str, float] | None = None  # of the last step called with measure=True

    def gradients(self, x: Tensor, y: Tensor, total: int | None = None
                  ) -> tuple[Tensor, list[Tensor], list[Tensor] | None]:
        """The loss, its gradient and the sensitivity (or None) at the current weights.

        Under fp16 the gradient is that of the scaled loss (``GradScaler.unscale_`` divides it);
        the loss and the sensitivities are never scaled. ``total``: the size of the whole batch
        of which (x, y) is this process's part (several processes only).
        """
        if not self.compiled:
            return self._gradients(x, y, total)
        try:
            with compiled_passes():
                return self._gradients(x, y, total)
        except compile_errors() as err:  # compilation happens in the first forward and backward
            raise compile_error(err) from err

    def _gradients(self, x: Tensor, y: Tensor, total: int | None = None
                   ) -> tuple[Tensor, list[Tensor], list[Tensor] | None]:
        sens_logits = None
        with autocast(self.device, self.precision):
            if self.tape is None:
                logits = self.forward(x)
            elif self.held_statistics:
                logits = self.forward(x)
                with self.tape.record(), held_batch_statistics(self.model):
                    sens_logits = self.forward(x)
            else:
                with self.tape.record():
                    logits = self.forward(x)
        # The loss and the outputs that the sensitivities differentiate are formed in float32
        # from the (bf16/fp16) logits; the cast is part of the graph, so the loss gradient and
        # the sensitivities' backward passes all run back through the same autocast forward.
        # (In fp32 there is nothing to cast: a float64 model stays float64.)
        if self.precision != "fp32":
            logits = logits.float()
            sens_logits = None if sens_logits is None else sens_logits.float()
        if self.dist.enabled:
            # This part's share of the batch mean: summed over the processes, the batch mean.
            total = len(y) if total is None else total
            loss = F.cross_entropy(logits, y, reduction="sum") / total
            reported = loss.detach().clone()  # summed along with the first reduction of the step
            summed = False

            def reduce(tensors: list[Tensor]) -> None:
                nonlocal summed
                self.dist.all_sum_(tensors if summed else tensors + [reported])
                summed = True
        else:
            total, loss, reduce = None, F.cross_entropy(logits, y), None
        # The scaler's factor as a tensor (scaling a one): no wait for the device, as get_scale() would.
        scale = None if self.scaler is None else self.scaler.scale(torch.ones((), device=self.device))
        grads, sens = gradients_and_sensitivity(self.variant, logits, loss, y, self.params, self.output,
                                                self.classes, self.generator, self.batched, scale,
                                                total, reduce, self.tape, sens_logits)
        return (loss.detach() if reduce is None else reported), grads, sens

    def __call__(self, x: Tensor, y: Tensor, lam: float, total: int | None = None,
                 measure: bool = False) -> Tensor:
        """One step; ``measure``: also keep the insensitivity figures of this step in
        ``self.insensitivity`` (a wait for the device: once an epoch, not every step)."""
        loss, grads, sens = self.gradients(x, y, total)
        if self.scaler is not None and not self._unscale_(grads):
            return loss
        reg_sens = None if sens is None else [sens[i] for i in self.reg_index]
        if reg_sens is not None:
            rescale_(reg_sens, self.scale, self.gamma, self.scale_over)
        if measure and self.variant.regularizes:
            self.insensitivity = insensitivity_stats(reg_sens, self.reg_kept)
        if self.variant.regularizes and lam > 0:
            shrink_([self.params[i] for i in self.reg_index], reg_sens, lam)
        self.masks.mask_([grads[i] for i in self.mask_index])
        for p, g in zip(self.params, grads):
            p.grad = g
        self.optimizer.step()
        if self.scaler is not None:
            self.scaler.update()
        self.masks.apply_()
        return loss

    def _unscale_(self, grads: list[Tensor]) -> bool:
        """fp16: divide the gradients by the loss scale in place; False if they overflowed.

        A step whose scaled gradient overflowed is skipped whole, the shrink included (the loss
        variant's sensitivity is that gradient), and the scaler lowers its scale for the next.
        """
        for p, g in zip(self.params, grads):
            p.grad = g  # GradScaler.unscale_ works on the optimizer's .grad, i.e. on these tensors
        self.scaler.unscale_(self.optimizer)
        # What unscale_ found, read as GradScaler.step reads it before it skips a step.
        if sum(v.item() for v in self.scaler._found_inf_per_device(self.optimizer).values()):
            self.scaler.update()
            return False
        return True


def build_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)
    return torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps)


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


def setup(cfg: TrainConfig, dist: Dist = SINGLE) -> tuple[torch.device, Dataset, nn.Module]:
    """Device, data and model for ``cfg``; raises on a missing dataset or a bad init checkpoint."""
    device = dist.device(resolve_device(cfg.trainer.device))
    seed_everything(cfg.trainer.seed, cfg.trainer.deterministic)
    data = load_dataset(cfg.data.name, cfg.data.root, cfg.data.val_fraction, cfg.data.split_seed,
                        device if cfg.data.on_device else "cpu", **cfg.data.loader_options())
    if not cfg.data.on_device:
        data = replace(data, train=data.train.to(device), val=data.val.to(device), test=data.test.to(device))
    model = build_model(cfg.model.name, data.num_classes, data.input_shape)
    if cfg.trainer.channels_last and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        # NHWC convolutions: on the CPU their backward pass is about twice as fast (LeNet-5).
        model = model.to(memory_format=torch.channels_last)
    if cfg.trainer.init:
        init_model_(model, cfg.trainer.init, cfg.model.name, data.num_classes, cfg.data.name)
    return device, data, model.to(device)


@dataclass
class LoopState:
    """Where the epoch loop stands: everything besides model, masks, optimizer and generators
    that a resumed run needs to carry on exactly as if it had never stopped."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches of the current epoch completed (non-zero only when stopped mid-epoch)
    loss_sum: float = 0.0  # of the current epoch's batches so far
    epoch_seconds: float = 0.0  # spent in the current epoch before a stop
    elapsed: float = 0.0  # wall time of earlier sessions of this run
    shuffle_state: Tensor | None = None  # shuffling generator at the start of the current epoch
    threshold: float = 0.0
    best_val: float = float("inf")
    stale: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    # the insensitivity figures of the current epoch's last step, once it has run (a stop right
    # after that step resumes with no step left to measure)
    insensitivity: dict[str, float] | None = None
    thresholds: list[dict[str, Any]] = field(default_factory=list)


def train(cfg: TrainConfig, run_dir: Path, saved: dict[str, Any] | None = None,
          dist: Dist = SINGLE) -> dict[str, Any]:
    """Train, regularize, prune and evaluate as ``cfg`` says; write the run folder; return the summary.

    ``saved``: the training state to continue from (``resume_state``), None for a fresh run.
    ``dist``: this process's place among several (``distributed.py``); only process 0 writes
    the run folder, every process returns the summary.
    """
    run_dir = Path(run_dir)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    summary: dict[str, Any] = {
        "status": "running", "config_hash": cfg.hash(), "seed": cfg.trainer.seed,
        "model": cfg.model.name, "data": cfg.data.name, "sens": cfg.sens.name,
        "versions": report.versions(), "git_commit": report.git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
    }
    if saved is not None:
        summary["started"] = saved["summary"].get("started", summary["started"])
        summary["resumed"] = saved["summary"].get("resumed", []) + [
            {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "epoch": saved["loop"]["epoch"],
             "batch": saved["loop"]["batch"]}]
    if dist.enabled:
        summary["processes"] = dist.world
    write_summary = (lambda: report.write_json(run_dir / "summary.json", summary)) if dist.is_main else (lambda: None)
    write_summary()
    loop = LoopState(**saved["loop"]) if saved is not None else LoopState()
    try:
        # Signals are caught from here on, so a stop during the set-up is orderly too.
        with StopSignals() as stop:
            _train(cfg, run_dir, summary, loop, saved, stop, dist)
    except BaseException as err:
        # SystemExit: a scheduler's signal handler (submitit's requeue) ended the process.
        interrupted = isinstance(err, (Interrupted, KeyboardInterrupt, SystemExit))
        summary["status"] = "interrupted" if interrupted else "failed"
        summary["error"] = str(err) if isinstance(err, Interrupted) else f"{type(err).__name__}: {err}"
        summary["epochs_completed"] = loop.epoch
        summary["wall_time_s"] = loop.elapsed + time.time() - started
        if (run_dir / CHECKPOINT_NAME).exists():
            summary["checkpoint_to_resume"] = CHECKPOINT_NAME
        write_summary()
        raise
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


def _train(cfg: TrainConfig, run_dir: Path, summary: dict[str, Any], loop: LoopState,
           saved: dict[str, Any] | None, stop: StopSignals, dist: Dist = SINGLE) -> None:
    session_start = time.time()
    device, data, model = setup(cfg, dist)
    summary["device"] = str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    log.info("run folder %s | %s on %s, sens=%s, device %s%s | train %d, val %d, test %d",
             run_dir, cfg.model.name, cfg.data.name, cfg.sens.name, summary["device"],
             f" x {dist.world} processes" if dist.enabled else "",
             len(data.train), len(data.val), len(data.test))

    optimizer = build_optimizer(cfg, model.parameters())
    variant = get_variant(cfg.sens.name)
    masks = Masks(model, prunable_names(model, cfg.prune.params, cfg.prune.batchnorm))
    shuffle_gen = torch.Generator().manual_seed(cfg.trainer.seed)
    class_gen = torch.Generator().manual_seed(cfg.trainer.seed + 1)
    # Crops and flips of training batches; like class_gen it is saved as it stands at a
    # checkpoint, so a resumed run draws what the uninterrupted run would have drawn next.
    # (A folder dataset augments as it decodes, with its loader's own random draws.)
    augment_gen = torch.Generator().manual_seed(cfg.trainer.seed + 2) \
        if cfg.data.augment and not data.augmented_in_loader else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        masks.load_state_dict(saved["masks"])
        optimizer.load_state_dict(saved["optimizer"])
        class_gen.set_state(saved["class_generator"])
        if augment_gen is not None:  # the config check on resume makes sure the run augmented
            augment_gen.set_state(saved["augment_generator"])
        set_rng_states(saved["rng"])  # process 0's; the others draw nothing that matters from them
        log.info("resumed from %s at epoch %d%s", CHECKPOINT_NAME, loop.epoch + 1,
                 f", batch {loop.batch + 1}" if loop.batch else "")
    if loop.shuffle_state is not None:
        shuffle_gen.set_state(loop.shuffle_state)
    dist.sync_model_(model)  # every process starts from process 0's weights
    t = cfg.trainer
    step = TrainStep(model, optimizer, variant, masks, prunable_names(model, cfg.sens.params, cfg.prune.batchnorm),
                     cfg.sens.output, cfg.sens.classes, class_gen, t.precision, t.compile, dist,
                     cfg.sens.reduction, cfg.sens.scale, cfg.sens.gamma, cfg.sens.scale_over)
    if saved is not None and step.scaler is not None:  # fp16: the loss scale it had reached
        step.scaler.load_state_dict(saved["scaler"])
    warmup = t.warmup_epochs
    eta_at = build_schedule(**vars(cfg.eta_schedule))
    lam_at = lambda_schedule(vars(cfg.lam_schedule), vars(cfg.eta_schedule), t.epochs, warmup)
    eval_bs = cfg.data.eval_batch_size
    show_progress = dist.is_main and (t.progress is True or (t.progress == "auto" and sys.stdout.isatty()))
    checkpoint_path = run_dir / CHECKPOINT_NAME

    def elapsed() -> float:
        return loop.elapsed + time.time() - session_start  # loop.elapsed: earlier sessions

    def save_checkpoint() -> None:
        if not dist.is_main:
            return
        save_training_state(checkpoint_path, {
            "config": cfg.to_dict(), "config_hash": cfg.hash(),
            "model": model.state_dict(), "masks": masks.state_dict(),
            "optimizer": optimizer.state_dict(),
            "class_generator": class_gen.get_state(), "rng": rng_states(),
            "augment_generator": None if augment_gen is None else augment_gen.get_state(),
            "scaler": None if step.scaler is None else step.scaler.state_dict(),
            "loop": {**asdict(loop), "elapsed": elapsed()}, "summary": summary,
        })

    stop.raise_if_requested()  # stopped during the set-up: nothing to save yet
    while loop.epoch < t.epochs:
        epoch = loop.epoch
        epoch_start = time.time() - loop.epoch_seconds
        dense = epoch < warmup
        eta = cfg.optim.lr * eta_at(epoch, t.epochs)
        lam = 0.0 if dense else cfg.sens.lam * lam_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = eta

        model.train()
        loop.shuffle_state = shuffle_gen.get_state()  # the epoch's order can be drawn again from here
        n_batches = num_batches(data.train, t.batch_size)
        loss_sum = torch.tensor(loop.loss_sum, device=device)
        with _progress(show_progress, f"epoch {epoch + 1}/{t.epochs}", n_batches, loop.batch) as advance:
            for b, (x, y) in enumerate(batches(data.train, t.batch_size, shuffle=True, generator=shuffle_gen,
                                               start=loop.batch, shard=dist.shard), start=loop.batch):
                # The whole batch's size: of which (x, y) is this process's part.
                total = min(t.batch_size, len(data.train) - b * t.batch_size)
                if augment_gen is not None:  # drawn for the whole batch, so the same on every process
                    draws = [part_of(d, dist.shard) for d in crop_flip_draws(total, augment_gen)]
                    x = crop_flip(x, draws, fill=data.pad_value)
                loss_sum += step(x, y, lam, total, measure=b == n_batches - 1)
                if b == n_batches - 1:
                    loop.insensitivity = step.insensitivity
                advance()
                if dist.any(stop.requested is not None):  # every process stops after the same step
                    stop.agree()
                    loop.batch, loop.loss_sum = b + 1, float(loss_sum)
                    loop.epoch_seconds = time.time() - epoch_start
                    save_checkpoint()
                    log.info("%s: stopped in epoch %d after batch %d of %d; %s holds the state. "
                             "Continue with trainer.resume=%s", stop.requested, epoch + 1, b + 1,
                             n_batches, checkpoint_path, run_dir)
                    stop.raise_if_requested()
        train_loss = float(loss_sum) / n_batches
        if not math.isfinite(train_loss) or not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            kept = (f"the last good checkpoint, {checkpoint_path}, holds epoch {loop.epoch}"
                    if checkpoint_path.exists() else "no checkpoint was written before it")
            # Loss scaling guards the gradient, not the forward pass: float16 logits overflow at 65504.
            bf16 = " (or use trainer.precision=bf16)" if t.precision == "fp16" else ""
            raise FloatingPointError(
                f"the training loss or the weights became non-finite (inf/nan) in epoch {epoch + 1} "
                f"(eta {eta:g}, lam {lam:g}); {kept}. Lower sens.lam or optim.lr{bf16} and start again.")
        # Validation, and with it the threshold search, in the training precision (faster on
        # a GPU); the final test evaluation in float32, as `sensreg eval` recomputes it.
        dist.sync_buffers_(model)
        val = evaluate(model, data.val, eval_bs, t.precision, dist)

        # Pruning decisions use the validation split only.
        if not dense and cfg.prune.start_epoch <= epoch + 1 <= (cfg.prune.stop_epoch or t.epochs):
            if cfg.prune.name == "search":
                if val["loss"] < loop.best_val:
                    loop.best_val, loop.stale = val["loss"], 0
                else:
                    loop.stale += 1
                if loop.stale >= cfg.prune.patience:
                    found = _search_and_prune(model, masks, optimizer, data, eval_bs, val["loss"],
                                              cfg.prune.tolerance, epoch + 1, t.precision, dist,
                                              cfg.prune.scope)
                    if found is not None:
                        loop.thresholds.append(found)
                        loop.threshold = found["threshold"]
                        val = evaluate(model, data.val, eval_bs, t.precision, dist)
                    loop.best_val, loop.stale = val["loss"], 0
            elif cfg.prune.name == "fixed" and (epoch + 1 - cfg.prune.start_epoch) % cfg.prune.every == 0:
                before = masks.remaining_pct()
                # scope=layer: prune.threshold is τ, each tensor's threshold τ·σ_l (Masks.scales)
                per_tensor = masks.scaled_thresholds(cfg.prune.threshold, masks.scales(cfg.prune.scope))
                pruned = masks.prune_below_(per_tensor, optimizer)
                if pruned:
                    loop.threshold = cfg.prune.threshold
                    val_after = evaluate(model, data.val, eval_bs, t.precision, dist)
                    loop.thresholds.append({
                        "epoch": epoch + 1, "threshold": loop.threshold,
                        **_scope_record(cfg.prune.scope, masks, per_tensor), "pruned": pruned,
                        "remaining_pct_before": before, "remaining_pct_after": masks.remaining_pct(),
                        "val_loss_before": val["loss"], "val_loss_after": val_after["loss"]})
                    val = val_after

        row = {"epoch": epoch + 1, "eta": eta, "lam": lam, "train_loss": train_loss,
               "val_loss": val["loss"], "val_error": val["error"],
               "remaining_pct": masks.remaining_pct(), "threshold": loop.threshold,
               **(loop.insensitivity or {}), "seconds": time.time() - epoch_start}
        loop.rows.append(row)
        loop.epoch, loop.batch, loop.loss_sum, loop.epoch_seconds = epoch + 1, 0, 0.0, 0.0
        loop.insensitivity = None
        loop.shuffle_state = shuffle_gen.get_state()
        if dist.is_main:
            report.write_metrics(run_dir / "metrics.csv", loop.rows)
        log.info(report.epoch_line(row))
        if dist.any(stop.requested is not None):
            stop.agree()
        if stop.requested or (t.checkpoint_every and loop.epoch % t.checkpoint_every == 0) \
                or loop.epoch == t.epochs:
            save_checkpoint()
        if stop.requested:
            log.info("%s: stopped after epoch %d; continue with trainer.resume=%s",
                     stop.requested, loop.epoch, run_dir)
            stop.raise_if_requested()

    test = evaluate(model, data.test, eval_bs, dist=dist)
    stats = sparsity_stats(model, data.input_shape, masks.names)
    if dist.is_main:
        save_model(run_dir / "model.pt", model, masks.state_dict(), model_name=cfg.model.name,
                   num_classes=data.num_classes, input_shape=data.input_shape, config=cfg.to_dict())
    summary.pop("error", None)
    summary.pop("checkpoint_to_resume", None)
    summary.update({
        "status": "completed",
        "epochs_completed": loop.epoch,
        "test_error": test["error"], "test_top5_error": test.get("top5_error"), "test_loss": test["loss"],
        "val_error": loop.rows[-1]["val_error"], "val_loss": loop.rows[-1]["val_loss"],
        "remaining_pct": stats["prunable"]["remaining_pct"], "compression": stats["prunable"]["compression"],
        "remaining_pct_all": stats["all"]["remaining_pct"], "compression_all": stats["all"]["compression"],
        "sparsity": stats, "flops": stats["flops"], "thresholds": loop.thresholds,
        "wall_time_s": elapsed(), "checkpoint": "model.pt",
    })
    if dist.is_main:
        summary["checkpoint_bytes"] = (run_dir / "model.pt").stat().st_size
        report.write_json(run_dir / "summary.json", summary)
    table = report.layer_table(stats)
    log.info("test error %.2f%%%s | remaining %.3f%% of prunable parameters (%.1fx), %.3f%% of all (%.1fx) "
             "| FLOPs left %.2f%%", 100 * test["error"],
             f" (top-5 {100 * test['top5_error']:.2f}%)" if "top5_error" in test else "",
             stats["prunable"]["remaining_pct"], stats["prunable"]["compression"],
             stats["all"]["remaining_pct"], stats["all"]["compression"], stats["flops"]["remaining_pct"])
    log.info("per-layer sparsity:\n%s", report.render_text(table).rstrip())


def _search_and_prune(model: nn.Module, masks: Masks, optimizer, data: Dataset, eval_bs: int,
                      val_loss: float, tolerance: float, epoch: int,
                      precision: str = "fp32", dist: Dist = SINGLE,
                      scope: str = "global") -> dict[str, Any] | None:
    """Find the largest threshold within tolerance on the validation loss and apply it: one
    global T on |w| (scope ``global``), or one τ pruning |w| < τ·σ_l in each tensor (``layer``).

    σ_l is taken once, before the search, from the weights (the same on every process), and held
    for every τ tried and for the one applied: the pruning applied is the one evaluated."""
    saved = [p.detach().clone() for p in masks.params]
    scales = masks.scales(scope)  # 1.0 each for global
    normalized = scales if scope == "layer" else None  # global: the search on |w| as it always was

    @torch.no_grad()
    def loss_with(threshold: float) -> float:
        for p, s, m, t in zip(masks.params, saved, masks.masks, masks.scaled_thresholds(threshold, scales)):
            p.copy_(s * (m & (s.abs() >= t)))
        loss = evaluate(model, data.val, eval_bs, precision, dist)["loss"]
        for p, s in zip(masks.params, saved):
            p.copy_(s)
        return loss

    before = masks.remaining_pct()
    result = search_threshold(masks.kept_magnitudes(normalized), loss_with, val_loss, tolerance,
                              limit=masks.emptying_threshold(normalized))
    if result.threshold <= 0.0:
        return None
    per_tensor = masks.scaled_thresholds(result.threshold, scales)
    pruned = masks.prune_below_(per_tensor, optimizer)
    return {"epoch": epoch, "threshold": result.threshold, **_scope_record(scope, masks, per_tensor),
            "pruned": pruned,
            "remaining_pct_before": before, "remaining_pct_after": masks.remaining_pct(),
            "val_loss_before": result.loss_before, "val_loss_after": result.loss_after,
            "evaluations": result.evaluations}


def _scope_record(scope: str, masks: Masks, per_tensor: list[float]) -> dict[str, Any]:
    """The scope of a threshold decision and, for ``layer``, each tensor's own threshold τ·σ_l
    (0.0 for a tensor the rule leaves alone: Masks.scales)."""
    if scope == "global":
        return {"scope": scope}
    return {"scope": scope, "layer_thresholds": dict(zip(masks.names, per_tensor))}


def _progress(enabled: bool, description: str, total: int, completed: int = 0):
    """A rich progress bar (on a terminal only); yields a function that advances it by one."""
    if not enabled:
        return nullcontext(lambda: None)
    from contextlib import contextmanager

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    @contextmanager
    def bar():
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), transient=True) as progress:
            task = progress.add_task(description, total=total, completed=completed)
            yield lambda: progress.advance(task)

    return bar()
