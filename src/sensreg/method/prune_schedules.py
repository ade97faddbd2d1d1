"""Pruning schedules: when a run prunes, and how far.

A schedule is asked once after every epoch's validation pass (``after_epoch``), and where it
says so (``steps``) after every training step too (``after_step``), and may prune through the
run's masks; it keeps what it needs to decide (the best validation loss so far, the
epochs since) and what it decided (``thresholds``, as summary.json records them). Its
``state_dict`` is saved in last.pt, so a resumed run decides as the uninterrupted run would.
The registry ``PRUNE_SCHEDULES`` maps ``prune.name`` to a schedule class; the training loop
never looks at the name.

- ``search``: when the validation loss has not improved for ``patience`` epochs, bisect for the
  largest threshold whose pruning keeps it within ``1 + tolerance`` of its value (``search_and_prune``).
- ``fixed``: prune below ``threshold`` every ``every`` epochs.
- ``gmp``: gradual magnitude pruning (Zhu & Gupta 2017) to a ``target`` sparsity, on a cubic
  schedule over the window's steps, every ``every`` steps.
- ``none``: never prune.

Every schedule acts only from ``start_epoch`` to ``stop_epoch`` (1-based, inclusive; None: to
the last epoch; negative: counted back from the last, -4 of 20 is 16; a float in [0, 1]: a
fraction of the run, resolved in steps by ``gmp`` and to the nearest epoch by the others:
positions.py); the loop asks none of them during the dense warm-up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn

from sensreg.checks import Problems, field_types, is_int, is_number
from sensreg.errors import lookup
from sensreg.method.pruning import Masks, search_threshold
from sensreg.method.positions import epoch_at, first_epoch_at, is_fraction, step_at


@dataclass
class PruneConfig:
    """The prune.* settings and their defaults, those of the threshold search. Every schedule
    has every key; each reads its own (``PruneSchedule.READS``), and its option starts from its
    ``PruneSchedule.settings()``: these defaults, its own ``DEFAULTS``, and null for the keys
    it does not read."""

    name: str = "search"
    # which tensors may be pruned (all: weights and biases, or weights); `sensreg train` makes
    # it sens.params unless set, so that what is regularized is what may be pruned
    params: str = "all"
    # search: after `patience` epochs without a lower validation loss (0: after every epoch),
    # bisect for the largest threshold whose pruning keeps the validation loss within
    # (1 + tolerance) of its value before. Patience 0 prunes faster in short runs but ratchets
    # the loss up over long ones (docs/measurements.md).
    patience: int | None = 1
    tolerance: float | None = 0.1
    threshold: float | None = None  # fixed: prune every |w| below it
    # the window: epochs (1-based; negative: counted back from the last) or fractions of the
    # run (floats in [0, 1]), positions.py; the epochs after stop_epoch fine-tune with the
    # masks fixed
    start_epoch: int | float = 1
    stop_epoch: int | float | None = None
    every: int = 1  # fixed: epochs between prunings; gmp: steps between prunings
    # whether the affine parameters of batch-norm (and other normalization) layers are
    # regularized and pruned like the rest of `params`; false: they are trained, never shrunk
    # or pruned (why: NORM_LAYERS in pruning.py). One key for both sets, as it is about which
    # parameters the method touches at all.
    batchnorm: bool = False
    # global: one threshold on |w| for every prunable tensor; layer: the threshold (search:
    # the bisected value; fixed: prune.threshold) is τ, and tensor l prunes |w| < τ·σ_l, σ_l the
    # standard deviation of its kept entries (Han et al. 2015; pruning.Masks.scales)
    scope: str = "global"
    # gmp: the final sparsity (0.99) or compression ("100x"), the sparsity it starts from, and
    # the window in steps where it is not given in epochs (start_epoch, stop_epoch)
    target: float | str | None = None
    initial: float = 0.0
    start_step: int | None = None
    end_step: int | None = None


@dataclass
class PruneContext:
    """What a schedule may act on: the model, its masks and optimizer (whose momentum and Adam
    moments of pruned entries are cleared), and how to measure the model on the validation
    split: ``validate()`` returns at least its ``loss`` and ``error`` (the run evaluates in its
    precision and over all its processes; a plain loop passes a function of its own)."""

    model: nn.Module
    masks: Masks
    optimizer: torch.optim.Optimizer | None
    validate: Callable[[], dict[str, float]]
    steps_per_epoch: int = 0  # training steps (batches) of one epoch


class PruneSchedule:
    """The base: the decision window, the last threshold applied, the decisions made; and what
    the schedule's option is made of: the settings it reads, their defaults, their checks."""

    name: ClassVar[str]
    # The prune.* settings the schedule reads besides name, params and batchnorm, and the
    # smallest value each may take.
    READS: ClassVar[tuple[str, ...]] = ()
    MINIMUMS: ClassVar[dict[str, float]] = {}
    # What a Pareto sweep (`sensreg train -m hydra/sweeper=pareto`) searches by default with
    # it: the key that sets how far it prunes, and its range in the sweeper's syntax.
    SEARCH: ClassVar[dict[str, str]] = {}
    STATE: ClassVar[tuple[str, ...]] = ("threshold", "thresholds")  # what state_dict holds
    # Whether the loop calls after_step after every training step (not only after_epoch).
    steps: ClassVar[bool] = False

    @classmethod
    def settings(cls) -> PruneConfig:
        """The settings its option starts from (``configs/prune/NAME.yaml`` adds its presets):
        PruneConfig's defaults, with null for each key it does not read where the key may be
        null, so that a composed config shows which keys count."""
        unread = {f.name: None for f in fields(PruneConfig) if f.name not in cls.READS and field_types(PruneConfig)[f.name][1]}
        return PruneConfig(name=cls.name, **unread)

    @classmethod
    def check(cls, prune: PruneConfig, epochs: Any, p: Problems) -> None:
        """Add to ``p`` every value of ``prune`` this schedule cannot run with, in a run of
        ``epochs`` epochs (any value: its own check names a wrong one): the minimums, the
        window's start, the schedule's own checks (``check_own``), the window's end."""
        for key, low in cls.MINIMUMS.items():
            p.at_least(f"prune.{key}", getattr(prune, key), low)
        if is_fraction(prune.start_epoch):
            p.fraction("prune.start_epoch", prune.start_epoch)
        else:
            p.at_least("prune.start_epoch", prune.start_epoch, 1)
        cls.check_own(prune, epochs, p)
        if prune.stop_epoch is not None and isinstance(epochs, int) and not p.has("prune.start_epoch"):
            _check_window_end(prune, epochs, p)

    @classmethod
    def check_own(cls, prune: PruneConfig, epochs: Any, p: Problems) -> None:
        """The checks of the settings only this schedule reads."""

    @classmethod
    def check_run(cls, prune: PruneConfig, epochs: int, steps_per_epoch: int | None, p: Problems) -> None:
        """Once every value is valid: what the run's length makes impossible (``steps_per_epoch``:
        None where the data's size is known only once its folder is read)."""

    @classmethod
    def reads(cls, key: str) -> bool:
        """Whether ``prune.KEY`` counts in a run with this schedule."""
        return key in ("name", "params", "batchnorm", *cls.READS)

    def __init__(self, prune_cfg, epochs: int):
        self.cfg, self.epochs = prune_cfg, epochs
        self.threshold = 0.0  # the last one applied: metrics.csv's threshold column
        self.thresholds: list[dict[str, Any]] = []  # every decision, in order

    @property
    def start_epoch(self) -> int:
        """The first epoch of the window (prune.start_epoch)."""
        return first_epoch_at(self.cfg.start_epoch, self.epochs)

    @property
    def stop_epoch(self) -> int:
        """The last epoch of the window (prune.stop_epoch; None: the run's last)."""
        stop = self.cfg.stop_epoch
        return self.epochs if stop is None else epoch_at(stop, self.epochs)

    def active(self, epoch: int) -> bool:
        """Whether ``epoch`` (1-based) lies in the window from start_epoch to stop_epoch."""
        return self.start_epoch <= epoch <= self.stop_epoch

    def after_epoch(self, epoch: int, val: dict[str, float], ctx: PruneContext) -> dict[str, float]:
        """Decide after epoch ``epoch`` (1-based), whose validation figures are ``val``; return
        the validation figures of the model as it now is (re-evaluated if it was pruned)."""
        return val

    def after_step(self, epoch: int, batch: int, ctx: PruneContext) -> None:
        """After training batch ``batch`` (0-based) of epoch ``epoch`` (1-based); called only
        where ``steps`` is true. It may prune, but not evaluate: that is for after_epoch."""

    def state_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.STATE}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in self.STATE:
            if key in state:
                setattr(self, key, state[key])

    def record(self, decision: dict[str, Any]) -> None:
        self.thresholds.append(decision)
        self.threshold = decision["threshold"]


class NoPruning(PruneSchedule):
    name = "none"


class _EpochSchedule(PruneSchedule):
    """A schedule that decides after epochs: its window must begin within the run."""

    @classmethod
    def check_run(cls, prune, epochs, steps_per_epoch, p):
        if is_int(prune.start_epoch) and prune.start_epoch > epochs:
            p.add("prune.start_epoch", f"prune.start_epoch={prune.start_epoch} comes after the last epoch "
                  f"(trainer.epochs={epochs}): prune={cls.name} would never prune. Give an epoch of the run, "
                  f"or a fraction of it.")


class SearchSchedule(_EpochSchedule):
    name = "search"
    READS = ("patience", "tolerance", "start_epoch", "stop_epoch", "scope")
    MINIMUMS = {"tolerance": 0, "patience": 0}
    SEARCH = {"prune.tolerance": "interval(0.01, 0.3)"}
    STATE = PruneSchedule.STATE + ("best_val", "stale")

    def __init__(self, prune_cfg, epochs: int):
        super().__init__(prune_cfg, epochs)
        self.best_val = float("inf")  # the lowest validation loss since the last search
        self.stale = 0  # epochs since it last improved

    def after_epoch(self, epoch, val, ctx):
        if not self.active(epoch):
            return val
        if val["loss"] < self.best_val:
            self.best_val, self.stale = val["loss"], 0
        else:
            self.stale += 1
        if self.stale >= self.cfg.patience:
            found = search_and_prune(ctx.masks, ctx.optimizer, ctx.validate, val["loss"], self.cfg.tolerance,
                                     epoch, self.cfg.scope)
            if found is not None:
                self.record(found)
                val = ctx.validate()
            self.best_val, self.stale = val["loss"], 0
        return val


class FixedSchedule(_EpochSchedule):
    name = "fixed"
    READS = ("threshold", "start_epoch", "stop_epoch", "every", "scope")
    MINIMUMS = {"threshold": 0, "every": 1}
    SEARCH = {"prune.threshold": "tag(log, interval(1e-5, 1e-2))"}

    def after_epoch(self, epoch, val, ctx):
        cfg, masks = self.cfg, ctx.masks
        if not self.active(epoch) or (epoch - self.start_epoch) % cfg.every:
            return val
        before, l1_before = masks.remaining_pct(), masks.kept_l1()
        # scope=layer: prune.threshold is τ, each tensor's threshold τ·σ_l (Masks.scales)
        per_tensor = masks.scaled_thresholds(cfg.threshold, masks.scales(cfg.scope))
        pruned = masks.prune_below_(per_tensor, ctx.optimizer)
        if not pruned:
            return val
        val_after = ctx.validate()
        self.record({"epoch": epoch, "threshold": cfg.threshold, **scope_record(cfg.scope, masks, per_tensor),
                     "pruned": pruned, "remaining_pct_before": before,
                     "remaining_pct_after": masks.remaining_pct(), **l1_cut(masks, l1_before),
                     "val_loss_before": val["loss"], "val_loss_after": val_after["loss"]})
        return val_after


class GradualMagnitude(PruneSchedule):
    """Gradual magnitude pruning (Zhu & Gupta, *To prune, or not to prune*, 2017): after step t
    of the window [t0, t1], every ``every`` steps and at t1, the smallest |w| are pruned until
    the sparsity is s_t = s_f + (s_i - s_f)(1 - (t - t0)/(t1 - t0))^3, from ``initial`` s_i
    to ``target`` s_f; after t1 it stays at s_f. Steps are counted from the start of training;
    t0 is the end of epoch ``start_epoch - 1`` (or ``start_step``), t1 the end of epoch
    ``stop_epoch`` (or ``end_step``; the last epoch by default); a window given as fractions of
    the run is placed in steps, so that a one-epoch run prunes within its epoch. Scope ``global``: one ranking of
    |w| over every prunable tensor, each keeping at least its largest entry; ``layer``: every
    tensor pruned to the same sparsity s_t."""

    name = "gmp"
    steps = True
    READS = ("target", "initial", "every", "scope", "start_epoch", "stop_epoch", "start_step", "end_step")
    MINIMUMS = {"every": 1, "initial": 0}
    SEARCH = {"prune.target": "interval(0.8, 0.995)"}  # sparsity: 5x to 200x

    @classmethod
    def check_own(cls, prune, epochs, p):
        try:
            target = target_sparsity(prune.target)
        except (TypeError, ValueError) as err:
            p.add("prune.target", f"{err}; prune=gmp prunes to it.")
            return
        if isinstance(prune.initial, (int, float)) and not 0 <= prune.initial <= target:
            p.add("prune.initial", f"prune.initial={prune.initial!r} must lie between 0 and the target "
                  f"sparsity {target:g} (prune.target={prune.target}).")
        for key in ("start_step", "end_step"):
            if getattr(prune, key) is not None:
                p.at_least(f"prune.{key}", getattr(prune, key), 0)
        start, end = prune.start_step, prune.end_step
        if isinstance(end, int) and isinstance(start, int) and end <= start:
            p.add("prune.end_step", f"prune.end_step={end} must come after prune.start_step={start}.")
        if end is None and isinstance(prune.stop_epoch, int) and isinstance(epochs, int) and prune.stop_epoch > epochs:
            p.add("prune.stop_epoch", f"prune.stop_epoch={prune.stop_epoch} comes after the last epoch "
                  f"(trainer.epochs={epochs}): gmp would never reach prune.target={prune.target}. Set "
                  f"prune.stop_epoch to at most {epochs} (or count back from the end, e.g. -4).")

    @classmethod
    def check_run(cls, prune, epochs, steps_per_epoch, p):
        if steps_per_epoch is None:
            return
        steps = epochs * steps_per_epoch
        start, end = prune.start_step, prune.end_step
        length = f"the run's last step, {steps} ({epochs} epoch{'s' * (epochs > 1)} of {steps_per_epoch} steps)"
        if start is not None and start >= steps:
            p.add("prune.start_step", f"prune.start_step={start} comes at or after {length}: gmp would never "
                  f"prune. Give a step before it.")
        elif end is not None and end > steps:
            p.add("prune.end_step", f"prune.end_step={end} comes after {length}: gmp would never reach "
                  f"prune.target={prune.target}. Set prune.end_step to at most {steps}.")
        # (Here, once every value is valid, rather than beside the stop_epoch check: a problem
        # naming prune.start_epoch there hides the checks of the window's end.)
        if start is None and isinstance(prune.start_epoch, int) and prune.start_epoch > epochs:
            p.add("prune.start_epoch", f"prune.start_epoch={prune.start_epoch} comes after the last epoch "
                  f"(trainer.epochs={epochs}): gmp would never prune. Give an epoch of the run, or a "
                  f"fraction of it.")

    def window(self, steps_per_epoch: int) -> tuple[int, int]:
        """The window's first and last step, counted from the start of training."""
        cfg = self.cfg
        t0 = cfg.start_step if cfg.start_step is not None else \
            step_at(cfg.start_epoch, self.epochs, steps_per_epoch, first=True)
        if cfg.end_step is not None:
            t1 = cfg.end_step
        elif is_fraction(cfg.stop_epoch):
            t1 = step_at(cfg.stop_epoch, self.epochs, steps_per_epoch)
        else:
            t1 = self.stop_epoch * steps_per_epoch
        return t0, t1

    def sparsity_at(self, t: int, steps_per_epoch: int) -> float:
        t0, t1 = self.window(steps_per_epoch)
        s_i, s_f = self.cfg.initial, target_sparsity(self.cfg.target)
        progress = min(max((t - t0) / (t1 - t0), 0.0), 1.0) if t1 > t0 else 1.0
        return s_f + (s_i - s_f) * (1.0 - progress) ** 3

    def prune_to(self, masks: Masks, sparsity: float, optimizer) -> tuple[int, float]:
        """Prune the smallest |w| to ``sparsity``: over all tensors (scope global) or each alike."""
        if self.cfg.scope == "layer":
            kept = [m.numel() - round(sparsity * m.numel()) for m in masks.masks]
        else:
            kept = masks.total() - round(sparsity * masks.total())
        return masks.keep_largest_(kept, optimizer)

    def after_step(self, epoch, batch, ctx):
        if ctx.steps_per_epoch < 1:  # (its default, 0, serves the schedules that act per epoch)
            raise ValueError(f"PruneContext.steps_per_epoch={ctx.steps_per_epoch}: gmp counts training steps, so "
                             f"give it the number of batches of one epoch (at least 1), e.g. len(train_loader)")
        t = (epoch - 1) * ctx.steps_per_epoch + batch + 1  # steps done, this one included
        t0, t1 = self.window(ctx.steps_per_epoch)
        if not (t0 <= t <= t1 and ((t - t0) % self.cfg.every == 0 or t == t1)):
            return
        masks, sparsity = ctx.masks, self.sparsity_at(t, ctx.steps_per_epoch)
        before, l1_before = masks.remaining_pct(), masks.kept_l1()
        pruned, largest = self.prune_to(masks, sparsity, ctx.optimizer)
        if pruned:
            # No validation pass between steps: the decision records the step, not the loss.
            self.record({"epoch": epoch, "step": t, "threshold": largest, "scope": self.cfg.scope,
                         "sparsity": sparsity, "pruned": pruned, "remaining_pct_before": before,
                         "remaining_pct_after": masks.remaining_pct(), **l1_cut(masks, l1_before),
                         "val_loss_before": None, "val_loss_after": None})


class GradualUnits(GradualMagnitude):
    """The structured baseline: gradual magnitude pruning of whole units, neurons and conv
    filters (Li et al., *Pruning Filters for Efficient ConvNets*, ICLR 2017, ranked by weight
    magnitude), on gmp's schedule: at each pruning step the units whose mean |w| of incoming
    weights is smallest relative to their layer's mean (so that a filter and a neuron, and layers
    of different scale, compare) are pruned whole, weights and bias, until the sparsity of the
    prunable parameters reaches s_t. A unit is a slice along the
    first dimension of a weight of two or more dimensions; the last such weight (the output
    layer: its units are the classes) is never pruned, and every layer keeps at least one unit.
    The outgoing weights of a pruned unit stay and count as kept: the compacted network
    (``compaction.py``) removes them. Where only the output layer is left to prune, the target
    is not reached."""

    name = "gmp_units"
    READS = ("target", "initial", "every", "start_epoch", "stop_epoch", "start_step", "end_step")

    def prune_to(self, masks: Masks, sparsity: float, optimizer) -> tuple[int, float]:
        return keep_largest_units_(masks, masks.total() - round(sparsity * masks.total()), optimizer)


def keep_largest_units_(masks: Masks, kept: int, optimizer=None) -> tuple[int, float]:
    """Prune whole units, weakest first (mean |w| of the unit's entries, pruned ones counted as
    0, over the mean of its layer's units), until at most ``kept`` entries of ``masks`` are kept;
    returns what ``Masks.drop_`` does."""
    weights = [i for i, p in enumerate(masks.params) if p.dim() >= 2][:-1]  # not the output layer
    index = {name: i for i, name in enumerate(masks.names)}
    candidates, live = [], {}
    for i in weights:
        w, m = masks.params[i].detach().flatten(1), masks.masks[i].flatten(1)
        score = (w.abs() * m).sum(1) / w.shape[1]
        alive = m.any(1)
        live[i] = int(alive.sum())
        # Relative to the layer's mean: initial scales differ by layer (1/sqrt(fan-in)), and an
        # absolute ranking would empty the widest layer first whatever the units do.
        score = score / score[alive].mean().clamp_min(torch.finfo(score.dtype).tiny)
        candidates += [(float(score[u]), i, int(u)) for u in alive.nonzero().flatten()]
    drops = [torch.zeros_like(m) for m in masks.masks]
    remaining = masks.kept()
    for _, i, u in sorted(candidates):
        if remaining <= kept:
            break
        if live[i] <= 1:  # a layer keeps a unit (none would cut the network)
            continue
        bias = index.get(masks.names[i].removesuffix("weight") + "bias")
        for j in (i, bias) if bias is not None and masks.params[bias].shape[:1] == masks.params[i].shape[:1] else (i,):
            drops[j][u] = masks.masks[j][u]
            remaining -= int(masks.masks[j][u].sum())
        live[i] -= 1
    return masks.drop_(drops, optimizer)


def _check_window_end(prune: PruneConfig, epochs: int, p: Problems) -> None:
    """prune.stop_epoch must fall within the run, at or after the window's start."""
    stop, start = prune.stop_epoch, prune.start_epoch
    if is_fraction(stop):
        p.fraction("prune.stop_epoch", stop)
        if is_fraction(start) and is_number(stop) and stop < start:
            p.add("prune.stop_epoch", f"prune.stop_epoch={stop!r} comes before prune.start_epoch={start!r} (both "
                  f"fractions of the run), so nothing would be pruned; give a later stop.")
        return
    first = first_epoch_at(start, epochs) if is_number(start) else 1
    if is_int(stop) and stop < 0:
        if epoch_at(stop, epochs) < first:
            p.add("prune.stop_epoch", f"prune.stop_epoch={stop} counts back from the last epoch: of "
                  f"trainer.epochs={epochs} it is epoch {epoch_at(stop, epochs)}, before prune.start_epoch={start}, "
                  f"so nothing would be pruned. Train at least {first - stop} epochs, count back fewer, or give "
                  f"the window's end as a fraction of the run (prune.stop_epoch=0.8); ~experiment leaves the "
                  f"main job's schedule out altogether.")
    else:
        p.at_least("prune.stop_epoch", stop, first)


def is_gradual(name: str) -> bool:
    """Whether the schedule ``name`` prunes on gmp's step schedule (gmp and its unit-level form)."""
    schedule = PRUNE_SCHEDULES.get(name) if isinstance(name, str) else None  # (a config may hold anything)
    return schedule is not None and issubclass(schedule, GradualMagnitude)


def target_sparsity(target: float | str | None) -> float:
    """prune.target as a sparsity: a fraction in [0, 1) as it is (0.99), or a compression
    ``Nx`` (a number > 1 followed by x: 100x is 1 - 1/100). ValueError for anything else."""
    if isinstance(target, str) and target.strip().lower().endswith("x"):
        ratio = float(target.strip()[:-1])
        if ratio >= 1:
            return 1.0 - 1.0 / ratio
    elif isinstance(target, (int, float)) and not isinstance(target, bool) and 0 <= target < 1:
        return float(target)
    raise ValueError(f"prune.target={target!r} is neither a sparsity in [0, 1) (like 0.99) nor a "
                     f"compression of at least 1 (like 100x)")


PRUNE_SCHEDULES: dict[str, type[PruneSchedule]] = {
    s.name: s for s in (SearchSchedule, FixedSchedule, GradualMagnitude, GradualUnits, NoPruning)}


def build_prune_schedule(prune_cfg, epochs: int) -> PruneSchedule:
    return PRUNE_SCHEDULES[prune_cfg.name](prune_cfg, epochs)


def prune_schedule(name: str, epochs: int, **settings: Any) -> PruneSchedule:
    """The schedule ``name`` (search, fixed, gmp, none) of a run of ``epochs`` epochs, with the
    prune.* ``settings`` given and the defaults of ``PruneConfig`` for the rest:
    ``prune_schedule("gmp", 20, target="100x", stop_epoch=0.8)``. The loop calls its
    ``after_step`` after every training step (where ``steps`` is true) and its ``after_epoch``
    after every validation pass, with a ``PruneContext``."""
    return lookup(PRUNE_SCHEDULES, name, "pruning schedule")(PruneConfig(name=name, **settings), epochs)


def search_and_prune(masks: Masks, optimizer, validate: Callable[[], dict[str, float]],
                     val_loss: float, tolerance: float, epoch: int,
                     scope: str = "global") -> dict[str, Any] | None:
    """Find the largest threshold within tolerance on the validation loss and apply it: one
    global T on |w| (scope ``global``), or one τ pruning |w| < τ·σ_l in each tensor (``layer``).
    ``validate()`` measures the masked model on the validation split (its ``loss`` is read).

    σ_l is taken once, before the search, from the weights (the same on every process), and held
    for every τ tried and for the one applied: the pruning applied is the one evaluated."""
    saved = [p.detach().clone() for p in masks.params]
    scales = masks.scales(scope)  # 1.0 each for global
    normalized = scales if scope == "layer" else None  # global: the search on |w| as it always was

    @torch.no_grad()
    def loss_with(threshold: float) -> float:
        for p, s, m, t in zip(masks.params, saved, masks.masks, masks.scaled_thresholds(threshold, scales)):
            p.copy_(s * (m & (s.abs() >= t)))
        try:
            return validate()["loss"]
        finally:  # a stop in the middle of an evaluation leaves the weights as they were too
            for p, s in zip(masks.params, saved):
                p.copy_(s)

    before, l1_before = masks.remaining_pct(), masks.kept_l1()
    result = search_threshold(masks.kept_magnitudes(normalized), loss_with, val_loss, tolerance,
                              limit=masks.emptying_threshold(normalized))
    if result.threshold <= 0.0:
        return None
    per_tensor = masks.scaled_thresholds(result.threshold, scales)
    pruned = masks.prune_below_(per_tensor, optimizer)
    return {"epoch": epoch, "threshold": result.threshold, **scope_record(scope, masks, per_tensor),
            "pruned": pruned,
            "remaining_pct_before": before, "remaining_pct_after": masks.remaining_pct(),
            **l1_cut(masks, l1_before),
            "val_loss_before": result.loss_before, "val_loss_after": result.loss_after,
            "evaluations": result.evaluations}


def l1_cut(masks: Masks, l1_before: float) -> dict[str, float]:
    """How much of the kept weights' Σ|w| a pruning just removed, in percent. Set beside the share
    of the kept weights it removed, it says who did the pruning: near 0 % for a cut of many weights
    means the regularizer had already driven them to zero and the threshold only made it exact;
    plain magnitude pruning of a dense network removes a mass close to its share of the count."""
    return {"removed_l1_pct": 100.0 * (1.0 - masks.kept_l1() / l1_before) if l1_before > 0 else 0.0}


def l1_removed_in_all(decisions: list[dict[str, Any]]) -> float | None:
    """The share of Σ|w| that a run's prunings removed, compounded over its decisions, in percent:
    100 (1 - Π(1 - removed_l1_pct / 100)), what they would have removed together had training
    moved no weight between them. Beside the share of weights they cut (100 - remaining %), it
    says who did the pruning: near 0 % when the regularizer had driven the weights to zero, close
    to the share cut for magnitude pruning of a network no regularizer shaped. None when a
    decision predates the record (or there was none)."""
    shares = [d.get("removed_l1_pct") for d in decisions]
    if not shares or any(r is None for r in shares):
        return None
    kept = 1.0
    for r in shares:
        kept *= 1.0 - r / 100.0
    return 100.0 * (1.0 - kept)


def scope_record(scope: str, masks: Masks, per_tensor: list[float]) -> dict[str, Any]:
    """The scope of a threshold decision and, for ``layer``, each tensor's own threshold τ·σ_l
    (0.0 for a tensor the rule leaves alone: Masks.scales)."""
    if scope == "global":
        return {"scope": scope}
    return {"scope": scope, "layer_thresholds": dict(zip(masks.names, per_tensor))}
