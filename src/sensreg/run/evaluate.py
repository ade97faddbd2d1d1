"""Evaluation: loss and top-1/top-5 error of a model on a split."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sensreg.data import Split, batches
from sensreg.run.distributed import SINGLE, Dist
from sensreg.run.precision import autocast


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 1000,
             precision: str = "fp32", dist: Dist = SINGLE, stop=None) -> dict[str, float]:
    """Mean cross-entropy, top-1 error and (where there are more than 5 classes) top-5 error.

    Errors are counted exactly (integers), so the same model on the same data and device gives
    the same figures every time. ``precision``: the forward passes run under autocast in it
    (``precision.py``); the loss is computed in float32 and summed in float64 whatever it is.
    ``dist``: several processes each evaluate their part of every batch and add up the sums,
    so that all of them return the same figures. ``stop``: a run's ``StopSignals``, asked after
    every batch, so that a stop is honoured within one batch, not after the whole split.
    """
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=split.device)
    wrong1 = torch.zeros((), dtype=torch.long, device=split.device)
    wrong5 = torch.zeros((), dtype=torch.long, device=split.device)
    top5 = None
    for x, y in batches(split, batch_size, shard=dist.shard):
        with autocast(split.device, precision):
            logits = model(x)
        loss_sum += F.cross_entropy(logits if precision == "fp32" else logits.float(), y, reduction="sum").double()
        wrong1 += (logits.argmax(dim=1) != y).sum()
        if logits.shape[1] > 5:
            top5 = True
            wrong5 += (~(logits.topk(5, dim=1).indices == y[:, None]).any(dim=1)).sum()
        if stop is not None:
            stop.check(dist)
    model.train(was_training)
    dist.all_sum_([loss_sum, wrong1, wrong5])
    n = len(split)
    out = {"loss": float(loss_sum) / n, "error": int(wrong1) / n}
    if top5:
        out["top5_error"] = int(wrong5) / n
    return out
