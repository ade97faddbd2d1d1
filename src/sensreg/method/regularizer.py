"""The insensitivity-weighted shrink step and the per-epoch schedules of eta and lambda.

Learning rule (decoupled from the optimizer, like AdamW's weight decay):

    w <- w - eta * dL/dw - lam * w * max(0, 1 - S(w))

with S evaluated at the weights before the step. The shrink is applied in place *before* the
optimizer step, which is the same thing: the optimizers used here do not read the weights
when they update (no optimizer weight decay), so the order only matters for which w the shrink
multiplies, and that is the pre-step w in both cases.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from sensreg.errors import lookup
from sensreg.method.positions import Position, epoch_at


def insensitivity(sens: Tensor) -> Tensor:
    """S-bar = max(0, 1 - S), elementwise."""
    return (1.0 - sens).clamp_(min=0.0)


# How S is brought to the scale of the bound at 1 before the insensitivity is taken
# (config key sens.scale), and what lambda then means:
# - none: S as computed. lambda is the per-step shrink rate of a weight with S = 0, and of every
#   weight within a factor 1 - S of it; where S << 1 for all weights, plain weight decay.
# - gamma: S times the constant sens.gamma. Weights with S >= 1/gamma are not shrunk at all;
#   lambda keeps its meaning for the insensitive ones, but fewer weights are shrunk at the full rate.
# - max: S divided by its largest value, per tensor or over all regularized tensors
#   (sens.scale_over; the LOBSTER code's "rescaled"). The most sensitive weight is never shrunk
#   and S is on [0, 1] whatever the network; lambda is the rate at S = 0, and the mean shrink of
#   a tensor depends on how its S is spread below the maximum.
SCALES = ("none", "gamma", "max")
SCALE_OVER = ("tensor", "all")


@torch.no_grad()
def rescale_(sens: list[Tensor], scale: str, gamma: float = 1.0, over: str = "tensor") -> None:
    """Bring the sensitivities ``sens`` (scratch tensors) to the scale of the bound at 1, in place."""
    if scale == "none" or not sens:
        return
    if scale == "gamma":
        torch._foreach_mul_(sens, gamma)
        return
    if scale != "max":
        raise ValueError(f"unknown sensitivity scale {scale!r}; known: {', '.join(SCALES)}")
    # The maxima stay on the device (no wait for it); an all-zero tensor keeps its zeros.
    maxima = [m.clamp_(min=torch.finfo(m.dtype).tiny) for m in torch._foreach_norm(sens, float("inf"))]
    if over == "all":
        top = torch.stack(maxima).max()
        torch._foreach_div_(sens, top)
    elif over == "tensor":
        torch._foreach_div_(sens, maxima)
    else:
        raise ValueError(f"unknown sens.scale_over {over!r}; known: {', '.join(SCALE_OVER)}")


@torch.no_grad()
def insensitivity_stats(sens: list[Tensor] | None, kept: list[Tensor | None]) -> dict[str, float]:
    """Mean insensitivity max(0, 1 - S) of the kept entries and the share of them below 0.5 (whose
    shrink the sensitivity cuts by more than half). ``sens`` None: no sensitivity (l2), every
    insensitivity 1. ``kept``: per tensor, the float mask of kept entries, or None (all kept)."""
    if sens is None:
        return {"insens_mean": 1.0, "insens_below_half": 0.0}
    count = total = below = 0.0
    for s, k in zip(sens, kept):
        bar = insensitivity(s.double())
        weight = torch.ones_like(bar) if k is None else k.double()
        count += float(weight.sum())
        total += float((bar * weight).sum())
        below += float(((bar < 0.5).double() * weight).sum())
    return {"insens_mean": total / max(count, 1.0), "insens_below_half": below / max(count, 1.0)}


@torch.no_grad()
def shrink_(params: Sequence[Tensor], sens: Sequence[Tensor] | None, lam: float) -> None:
    """w <- w * (1 - lam * max(0, 1 - S)) in place, for each parameter with its sensitivity.

    ``sens=None`` means no sensitivity: every parameter is fully insensitive, which makes the
    step plain decoupled weight decay w <- w * (1 - lam). The sensitivity tensors are scratch:
    they are overwritten (the hot path allocates nothing here).
    """
    if lam == 0.0 or not params:
        return
    if not 0.0 <= lam < 1.0:
        raise ValueError(f"lam must lie in [0, 1), got {lam}")
    if sens is None:
        torch._foreach_mul_(list(params), 1.0 - lam)
        return
    # w * (1 - lam * max(0, 1 - S)) = w' + lam / (1 - lam) * w' * min(S, 1) with w' = (1 - lam) * w:
    # three fused multi-tensor passes, the cheapest order found (the shrink is on the hot path).
    factors = list(sens)
    torch._foreach_clamp_max_(factors, 1.0)
    params = list(params)
    torch._foreach_mul_(params, 1.0 - lam)
    torch._foreach_addcmul_(params, params, factors, value=lam / (1.0 - lam))


# --- schedules: a factor per epoch that multiplies the base eta or lambda ---------------------

Schedule = Callable[[int, int], float]  # (epoch index from 0, number of epochs) -> factor


def constant() -> Schedule:
    """Factor 1 every epoch."""
    return lambda epoch, epochs: 1.0


def step(milestones: Sequence[Position] = (30, 60), gamma: float = 0.1) -> Schedule:
    """Factor gamma^m, m = how many milestones have passed: a milestone M (counted in epochs)
    takes effect from epoch M + 1 on (epoch index M), as in torch's MultiStepLR. A negative M
    counts back from the last epoch (-4 of 20 epochs is 16), a float in [0, 1] is a fraction of
    the run (0.8 of 20 epochs is 16), so that a preset's schedule stretches with trainer.epochs
    (positions.py)."""
    marks = list(milestones)
    return lambda epoch, epochs: gamma ** sum(1 for m in marks if epoch + 1 > epoch_at(m, epochs))


def cosine(min_factor: float = 0.0) -> Schedule:
    """Half a cosine period from 1 (first epoch) down to ``min_factor`` (after the last)."""
    def factor(epoch: int, epochs: int) -> float:
        progress = epoch / max(1, epochs)
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


SCHEDULES: dict[str, Callable[..., Schedule]] = {"constant": constant, "step": step, "cosine": cosine}
SCHEDULE_KEYS: dict[str, tuple[str, ...]] = {"constant": (), "step": ("milestones", "gamma"),
                                             "cosine": ("min_factor",)}


def build_schedule(name: str, **kwargs) -> Schedule:
    """The registered schedule ``name`` with its keyword arguments."""
    schedule = lookup(SCHEDULES, name, "schedule")
    return schedule(**{k: v for k, v in kwargs.items() if k in SCHEDULE_KEYS[name]})


FOLLOW_ETA = "follow_eta"  # lambda's schedule only: the eta schedule's factor, epoch by epoch


def lambda_schedule(lam: dict, eta: dict, epochs: int, warmup: int = 0) -> Callable[[int], float]:
    """lambda's factor for each epoch index (from 0) of a run of ``epochs`` epochs.

    ``lam`` and ``eta`` are the schedule configs (name and keyword arguments). Under
    ``FOLLOW_ETA`` it is eta's factor at the same epoch; otherwise lambda's own schedule, run over
    the epochs after the ``warmup`` dense ones. (The dense epochs themselves have lambda = 0.)
    """
    if lam["name"] == FOLLOW_ETA:
        eta_at = build_schedule(**eta)
        return lambda epoch: eta_at(epoch, epochs)
    own = build_schedule(**lam)
    return lambda epoch: own(epoch - warmup, max(1, epochs - warmup))
