"""Evaluation: loss and top-1/top-5 error of a model on a split; re-evaluation of a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CheckpointError, load_checkpoint
from .data import Split, batches, load_test_split
from .distributed import SINGLE, Dist
from .models import build_model
from .precision import autocast
from .pruning import sparsity_stats


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 1000,
             precision: str = "fp32", dist: Dist = SINGLE) -> dict[str, float]:
    """Mean cross-entropy, top-1 error and (where there are more than 5 classes) top-5 error.

    Errors are counted exactly (integers), so the same model on the same data and device gives
    the same figures every time. ``precision``: the forward passes run under autocast in it
    (``precision.py``); the loss is computed in float32 and summed in float64 whatever it is.
    ``dist``: several processes each evaluate their part of every batch and add up the sums,
    so that all of them return the same figures.
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
    model.train(was_training)
    dist.all_sum_([loss_sum, wrong1, wrong5])
    n = len(split)
    out = {"loss": float(loss_sum) / n, "error": int(wrong1) / n}
    if top5:
        out["top5_error"] = int(wrong5) / n
    return out


def evaluate_checkpoint(path: str | Path, overrides: dict[str, Any] | None = None,
                        device: str | torch.device = "cpu") -> dict[str, Any]:
    """Rebuild the model saved at ``path`` and recompute its test error and sparsity.

    ``overrides`` replace entries of the data config the checkpoint was trained with (e.g. a
    different ``root``). Uses nothing from the run folder but the checkpoint itself.
    """
    ckpt = load_checkpoint(path)
    data_cfg = dict(ckpt["config"]["data"])
    for key, value in (overrides or {}).items():
        if key not in data_cfg:
            raise CheckpointError(f"data.{key} is not a data setting of this checkpoint; "
                                  f"known: {', '.join(sorted(data_cfg))}.")
        data_cfg[key] = value
    from .config import DataConfig  # late import: config imports the registries

    data = DataConfig(**data_cfg)
    test, num_classes, input_shape = load_test_split(data.name, data.root, device, **data.loader_options())
    model = build_model(ckpt["model_name"], ckpt["num_classes"], tuple(ckpt["input_shape"]))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not fit model {ckpt['model_name']}: {err}") from None
    model.to(device)
    result = {"checkpoint": str(path), "data": data.name, "model": ckpt["model_name"]}
    result.update({f"test_{k}": v for k, v in evaluate(model, test, data.eval_batch_size).items()})
    prunable = list(ckpt["masks"])
    result["sparsity"] = sparsity_stats(model, tuple(ckpt["input_shape"]), prunable)
    return result
