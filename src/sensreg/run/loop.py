"""The training loop: ``TrainStep``, one minibatch (the hot path, timed directly by the
benchmark), and ``run_epochs``, the epochs of a run (train, validate, ask the pruning schedule,
log, checkpoint).

Everything the loop works with is in one ``Training``: set up by ``lifecycle.py`` (which also owns the
run's life: resuming, the summary, the final files), saved whole into last.pt by
``Training.checkpoint`` and restored from it by ``Training.restore``.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sensreg.run.compiling import compile_error, compile_errors, compile_model, compiled_passes
from sensreg.run.config import TrainConfig
from sensreg.data import Dataset, batches, crop_flip, crop_flip_draws, num_batches, part_of
from sensreg.run.distributed import SINGLE, Dist
from sensreg.run import evaluate as evaluation
from sensreg.errors import Diverged, lookup
from sensreg.run.interrupt import Interrupted, StopSignals
from sensreg.run.optimizers import OPTIMIZERS
from sensreg.run.precision import autocast, grad_scaler
from sensreg.method.prune_schedules import PruneContext, PruneSchedule
from sensreg.run.trackers import NO_TRACKERS, Trackers
from sensreg.method.pruning import Masks
from sensreg.method.regularizer import build_schedule, lambda_schedule
from sensreg.records.folder import RunFolder
from sensreg.records.summary import MetricsRow, RunSummary
from sensreg.method.sensitivity import Variant, batched_vjps_are_faster
from sensreg.method.step import SensitivityStep, StepSettings
from sensreg.records.train_state import rng_states, set_rng_states

log = logging.getLogger("sensreg")


class TrainStep:
    """One minibatch: forward, loss gradient and sensitivity, shrink, optimizer step, masks.

    The method's step (``method/step.py``'s ``SensitivityStep``, which a plain loop uses too,
    with its ``settings``: variant, regularized names, output, classes, reduction and scale)
    with what a run adds around it:
    ``precision`` (fp32, bf16, fp16): the forward pass runs under autocast in that precision
    (``precision.py``); the weights, gradients and sensitivities stay float32. fp16 scales the
    loss with a GradScaler (``self.scaler``) and skips a step whose gradient overflowed.
    ``compile``: the forward pass goes through ``torch.compile(model)``.
    ``dist``: one of several processes, each given its part of every batch (``distributed.py``);
    the gradient, sensitivities and loss are summed over them, so each takes the same step.
    ``generator``: draws the classes of ``unspec`` and ``neuron`` (``settings.classes``).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, masks: Masks,
                 settings: StepSettings, *, generator: torch.Generator | None = None,
                 precision: str = "fp32", compile: bool = False, dist: Dist = SINGLE):
        self.optimizer = optimizer
        # Inductor's compiled backward calls out= kernels (aten::mm.out) that have no rule in
        # autograd's batched-gradient mode, which then fails: compiled, the unspecific VJPs go
        # one class after the other.
        self.method = SensitivityStep.from_settings(
            model, optimizer, settings, masks=masks, generator=generator,
            batched=batched_vjps_are_faster(model) and not compile,
            forward=compile_model(model) if compile else model)
        self.params = self.method.params
        self.device = next(model.parameters()).device
        self.precision = precision
        self.dist = dist
        self.scaler = grad_scaler(self.device, precision)
        self.compiled = compile

    @property
    def insensitivity(self) -> dict[str, float] | None:
        """The insensitivity figures of the last step called with measure=True."""
        return self.method.insensitivity

    @property
    def model(self) -> nn.Module:
        return self.method.model

    @property
    def settings(self) -> StepSettings:
        return self.method.settings

    @property
    def variant(self) -> Variant:
        return self.method.variant

    @property
    def masks(self) -> Masks:
        return self.method.masks

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
        with autocast(self.device, self.precision):
            logits, sens_logits = self.method.forward(x)
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
        grads, sens = self.method.gradients(logits, loss, y, loss_scale=scale, total=total, reduce=reduce,
                                            sens_logits=sens_logits)
        return (loss.detach() if reduce is None else reported), grads, sens

    def __call__(self, x: Tensor, y: Tensor, lam: float, total: int | None = None,
                 measure: bool = False) -> Tensor:
        """One step; ``measure``: also keep the insensitivity figures of this step in
        ``self.insensitivity`` (a wait for the device: once an epoch, not every step)."""
        loss, grads, sens = self.gradients(x, y, total)
        if self.scaler is not None and not self._unscale_(grads):
            return loss
        self.method.update(grads, sens, lam, measure, after_step=None if self.scaler is None else self.scaler.update)
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
    return lookup(OPTIMIZERS, cfg.optim.name, "optimizer").build(params, cfg.optim)


@dataclass
class LoopState:
    """Where the epoch loop stands: everything besides model, masks, optimizer, generators and
    the pruning schedule that a resumed run needs to carry on exactly as if it had never stopped."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches of the current epoch completed (non-zero only when stopped mid-epoch)
    loss_sum: float = 0.0  # of the current epoch's batches so far
    epoch_seconds: float = 0.0  # spent in the current epoch before a stop
    elapsed: float = 0.0  # wall time of earlier sessions of this run
    shuffle_state: Tensor | None = None  # shuffling generator at the start of the current epoch
    rows: list[MetricsRow] = field(default_factory=list)  # one per epoch completed
    # the insensitivity figures of the current epoch's last step, once it has run (a stop right
    # after that step resumes with no step left to measure)
    insensitivity: dict[str, float] | None = None


@dataclass
class Training:
    """A run's training as it stands: what the loop works with and what last.pt holds.

    ``shuffle_gen`` orders the batches; ``class_gen`` draws the classes of the sampled
    unspecific sensitivity; ``augment_gen`` the crops and flips of a tensor dataset's training
    batches (None: no augmentation, or a folder dataset, which augments as it decodes). All three
    are saved as they stand, so a resumed run draws what the uninterrupted run would have drawn.
    """

    cfg: TrainConfig
    folder: RunFolder
    summary: RunSummary  # the run's summary.json as it stands (saved in last.pt with the rest)
    data: Dataset
    model: nn.Module
    optimizer: torch.optim.Optimizer
    masks: Masks
    step: TrainStep
    prune: PruneSchedule
    shuffle_gen: torch.Generator
    class_gen: torch.Generator
    augment_gen: torch.Generator | None
    stop: StopSignals
    dist: Dist = SINGLE
    loop: LoopState = field(default_factory=LoopState)
    session_start: float = field(default_factory=time.time)
    trackers: Trackers = NO_TRACKERS  # TensorBoard, MLflow (process 0 only)

    def __post_init__(self) -> None:
        # What the pruning schedule may act on, and the validation pass it decides by.
        self.prune_ctx = PruneContext(self.model, self.masks, self.optimizer, self.validate,
                                      num_batches(self.data.train, self.cfg.trainer.batch_size))

    def validate(self) -> dict[str, float]:
        """The model on the validation split, in the run's precision, over all its processes."""
        return evaluation.evaluate(self.model, self.data.val, self.cfg.data.eval_batch_size,
                                   self.cfg.trainer.precision, self.dist, self.stop)

    def elapsed(self) -> float:
        """Wall time of this run: earlier sessions and this one."""
        return self.loop.elapsed + time.time() - self.session_start

    def checkpoint(self) -> None:
        """Write last.pt (process 0). The loop's and the schedule's state are one flat ``loop``
        entry, as they were before schedules had a state of their own."""
        if not self.dist.is_main:
            return
        self.folder.save_checkpoint({
            "config": self.cfg.to_dict(), "config_hash": self.cfg.hash(),
            "model": self.model.state_dict(), "masks": self.masks.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "class_generator": self.class_gen.get_state(), "rng": rng_states(),
            "augment_generator": None if self.augment_gen is None else self.augment_gen.get_state(),
            "scaler": None if self.step.scaler is None else self.step.scaler.state_dict(),
            # (asdict turns the metrics rows into plain dicts, which load with weights_only=True)
            "loop": {**asdict(self.loop), "elapsed": self.elapsed(), **self.prune.state_dict()},
            "summary": self.summary.as_dict(),
        })

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue from ``saved`` (a last.pt, checked against the config by ``run.resume_state``)."""
        names = {f.name for f in fields(LoopState)}
        self.loop = LoopState(**{k: v for k, v in saved["loop"].items() if k in names})
        self.loop.rows = [MetricsRow.from_dict(row) for row in self.loop.rows]
        if self.loop.shuffle_state is not None:  # the order of the epoch it stopped in
            self.shuffle_gen.set_state(self.loop.shuffle_state)
        self.prune.load_state_dict(saved["loop"])
        self.model.load_state_dict(saved["model"])
        self.masks.load_state_dict(saved["masks"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.class_gen.set_state(saved["class_generator"])
        if self.augment_gen is not None:  # the config check on resume makes sure the run augmented
            self.augment_gen.set_state(saved["augment_generator"])
        set_rng_states(saved["rng"])  # process 0's; the others draw nothing that matters from them
        if self.step.scaler is not None:  # fp16: the loss scale it had reached
            self.step.scaler.load_state_dict(saved["scaler"])


def run_epochs(tr: Training) -> None:
    """Train from where ``tr.loop`` stands to the last epoch: each epoch trains, validates,
    lets the pruning schedule decide (on the validation split only), logs a row and checkpoints."""
    cfg, t, loop, dist, stop = tr.cfg, tr.cfg.trainer, tr.loop, tr.dist, tr.stop
    eta_at = build_schedule(**vars(cfg.eta_schedule))
    lam_at = lambda_schedule(vars(cfg.lam_schedule), vars(cfg.eta_schedule), t.epochs, t.warmup_epochs)
    stop.raise_if_requested()  # stopped during the set-up: nothing to save yet
    while loop.epoch < t.epochs:
        epoch = loop.epoch
        epoch_start = time.time() - loop.epoch_seconds
        dense = epoch < t.warmup_epochs
        eta = cfg.optim.lr * eta_at(epoch, t.epochs)
        lam = 0.0 if dense else cfg.sens.lam * lam_at(epoch)
        for group in tr.optimizer.param_groups:
            group["lr"] = eta

        train_loss = train_epoch(tr, lam, epoch_start, prune_steps=tr.prune.steps and not dense)
        check_finite(tr, train_loss, eta, lam)
        # Validation, and with it the threshold search, in the training precision (faster on
        # a GPU); the final test evaluation in float32, as `sensreg eval` recomputes it.
        dist.sync_buffers_(tr.model)
        try:
            val = tr.prune_ctx.validate()
            if not dense:
                val = tr.prune.after_epoch(epoch + 1, val, tr.prune_ctx)
        except Interrupted:
            # No checkpoint of a half-made pruning decision: the last one stands, and the resumed
            # run does this epoch (from where that checkpoint is) again.
            log.info("%s: stopped in the validation and pruning decision of epoch %d; %s", stop.requested,
                     epoch + 1, kept_checkpoint(tr))
            raise

        row = MetricsRow(epoch=epoch + 1, eta=eta, lam=lam, train_loss=train_loss,
                         val_loss=val["loss"], val_error=val["error"],
                         remaining_pct=tr.masks.remaining_pct(), threshold=tr.prune.threshold,
                         **(loop.insensitivity or {}), seconds=time.time() - epoch_start)
        loop.rows.append(row)
        loop.epoch, loop.batch, loop.loss_sum, loop.epoch_seconds = epoch + 1, 0, 0.0, 0.0
        loop.insensitivity = None
        loop.shuffle_state = tr.shuffle_gen.get_state()
        if dist.is_main:
            tr.folder.write_metrics(loop.rows)
            tr.trackers.log_epoch(row, tr.prune.thresholds)
        log.info(epoch_line(row))
        if dist.any(stop.requested is not None):
            stop.agree()
        if stop.requested or (t.checkpoint_every and loop.epoch % t.checkpoint_every == 0) \
                or loop.epoch == t.epochs:
            tr.checkpoint()
        if stop.requested:
            log.info("%s: stopped after epoch %d; continue with trainer.resume=%s",
                     stop.requested, loop.epoch, tr.folder.path)
            stop.raise_if_requested()


def train_epoch(tr: Training, lam: float, epoch_start: float, prune_steps: bool = False) -> float:
    """The training batches of the current epoch (from ``tr.loop.batch`` on, for an epoch
    stopped part-way); returns the epoch's mean training loss. ``prune_steps``: the pruning
    schedule is asked after every step. A stop request is honoured after the step in which it
    arrives: every process checkpoints there and raises ``Interrupted``."""
    t, loop, dist, stop, data = tr.cfg.trainer, tr.loop, tr.dist, tr.stop, tr.data
    tr.model.train()
    loop.shuffle_state = tr.shuffle_gen.get_state()  # the epoch's order can be drawn again from here
    n_batches = num_batches(data.train, t.batch_size)
    loss_sum = torch.tensor(loop.loss_sum, device=tr.step.device)
    watch = DivergenceWatch(tr.step.device)
    terminal = sys.stdout.isatty()
    show_progress = dist.is_main and (t.progress is True or (t.progress == "auto" and terminal))
    lines = dist.is_main and t.progress == "auto" and not terminal  # output to a pipe or a log file
    with _progress(show_progress, f"epoch {loop.epoch + 1}/{t.epochs}", n_batches, loop.batch, lines) as advance:
        for b, (x, y) in enumerate(batches(data.train, t.batch_size, shuffle=True, generator=tr.shuffle_gen,
                                           start=loop.batch, shard=dist.shard), start=loop.batch):
            # The whole batch's size: of which (x, y) is this process's part.
            total = min(t.batch_size, len(data.train) - b * t.batch_size)
            if tr.augment_gen is not None:  # drawn for the whole batch, so the same on every process
                draws = [part_of(d, dist.shard) for d in crop_flip_draws(total, tr.augment_gen)]
                x = crop_flip(x, draws, fill=data.pad_value)
            loss_sum += tr.step(x, y, lam, total, measure=b == n_batches - 1)
            # A look at the loss every DIVERGENCE_EVERY steps stops a diverged run there rather than
            # at the end of its epoch (DivergenceWatch: on a GPU without waiting for it).
            if (b + 1) % DIVERGENCE_EVERY == 0 and dist.any(not watch.finite(loss_sum)):
                raise diverged(tr, f"epoch {loop.epoch + 1}, by step {b + 1} of {n_batches}",
                               tr.optimizer.param_groups[0]["lr"], lam)
            if prune_steps:
                tr.prune.after_step(loop.epoch + 1, b, tr.prune_ctx)
            if b == n_batches - 1:
                loop.insensitivity = tr.step.insensitivity
            advance()
            if dist.any(stop.requested is not None):  # every process stops after the same step
                stop.agree()
                loop.batch, loop.loss_sum = b + 1, float(loss_sum)
                loop.epoch_seconds = time.time() - epoch_start
                tr.checkpoint()
                log.info("%s: stopped in epoch %d after batch %d of %d; %s holds the state. "
                         "Continue with trainer.resume=%s", stop.requested, loop.epoch + 1, b + 1,
                         n_batches, tr.folder.checkpoint_path, tr.folder.path)
                stop.raise_if_requested()
    return float(loss_sum) / n_batches


DIVERGENCE_EVERY = 50  # training steps between two looks at the loss (train_epoch)


class DivergenceWatch:
    """Whether the running loss sum is finite, asked every DIVERGENCE_EVERY steps.

    On the CPU the sum is read at once. On a GPU, reading it would make the host wait for the
    device to finish every queued step; instead each look copies the sum to pinned host memory
    behind an event and reads the copy made at the previous look, which has long arrived (if not,
    it waits for the next look). A diverged run then stops at most two looks late, and the
    training step never waits for the device."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.host = torch.zeros((), pin_memory=True) if self.cuda else None
        self.copied: torch.cuda.Event | None = None

    def finite(self, loss_sum: torch.Tensor) -> bool:
        if not self.cuda:
            return math.isfinite(float(loss_sum))
        finite = True
        if self.copied is not None:
            if not self.copied.query():  # the last copy has not arrived: look again next time
                return True
            finite = math.isfinite(float(self.host))
        self.host.copy_(loss_sum, non_blocking=True)
        self.copied = torch.cuda.Event()
        self.copied.record()
        return finite


def kept_checkpoint(tr: Training) -> str:
    """What a stop outside the training steps keeps, and how to go on from it."""
    if not tr.folder.has_checkpoint():
        return "no checkpoint was written before it, so there is nothing to continue from."
    return (f"{tr.folder.checkpoint_path} keeps the state it was last written with; continue with "
            f"trainer.resume={tr.folder.path}")


def check_finite(tr: Training, train_loss: float, eta: float, lam: float) -> None:
    """Raise ``Diverged`` if the epoch's loss or any weight is inf or nan."""
    if math.isfinite(train_loss) and all(bool(torch.isfinite(p).all()) for p in tr.model.parameters()):
        return
    raise diverged(tr, f"epoch {tr.loop.epoch + 1}", eta, lam)


def diverged(tr: Training, where: str, eta: float, lam: float) -> Diverged:
    kept = (f"the last good checkpoint, {tr.folder.checkpoint_path}, holds epoch {tr.loop.epoch}"
            if tr.folder.has_checkpoint() else "no checkpoint was written before it")
    # Loss scaling guards the gradient, not the forward pass: float16 logits overflow at 65504.
    bf16 = " (or use trainer.precision=bf16)" if tr.cfg.trainer.precision == "fp16" else ""
    return Diverged(
        f"the training loss or the weights became non-finite (inf/nan) in {where} "
        f"(eta {eta:g}, lam {lam:g}); {kept}. Lower sens.lam or optim.lr{bf16} and start again.")


def epoch_line(row: MetricsRow) -> str:
    """The one log line per epoch."""
    return (f"epoch {row.epoch:>3}  eta {row.eta:.3g}  lam {row.lam:.3g}  "
            f"train_loss {row.train_loss:.4f}  val_loss {row.val_loss:.4f}  "
            f"val_err {100 * row.val_error:.2f}%  remaining {row.remaining_pct:.2f}%  "
            f"T {row.threshold:.3g}  "
            + (f"insens {row.insens_mean:.3f} (<0.5: {100 * row.insens_below_half:.1f}%)  "
               if row.insens_mean is not None else "")
            + f"{row.seconds:.1f}s")


# Where the output is no terminal (a pipe, a log file, a batch job), a line this often during an
# epoch tells that the run is alive, as the progress bar does on a terminal.
PROGRESS_LINE_S = 60.0


def _progress(enabled: bool, description: str, total: int, completed: int = 0, lines: bool = False):
    """A rich progress bar (on a terminal only); yields a function that advances it by one.
    ``lines``: instead, a log line every PROGRESS_LINE_S seconds."""
    if lines:
        return nullcontext(_progress_lines(description, total, completed))
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


def _progress_lines(description: str, total: int, completed: int):
    """A function that counts a batch done and logs the count, and the time left at this pace,
    once PROGRESS_LINE_S seconds have passed since the last line (or the epoch's start)."""
    start = last = time.monotonic()
    done = completed

    def advance() -> None:
        nonlocal last, done
        done += 1
        now = time.monotonic()
        if now - last >= PROGRESS_LINE_S and done < total:
            left = (now - start) / (done - completed) * (total - done)
            log.info("%s: batch %d/%d, about %.0fs left in the epoch", description, done, total, left)
            last = now
    return advance
