"""`sensreg eval`: a saved model.pt rebuilt and re-evaluated on its test split, on its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sensreg.run.checkpoint import CheckpointError, load_checkpoint
from sensreg.run.config import DataConfig
from sensreg.data import load_test_split
from sensreg.run.evaluate import evaluate
from sensreg.models import build_model, model_options
from sensreg.method.pruning import sparsity_stats


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
    data = DataConfig(**data_cfg)
    test, num_classes, input_shape = load_test_split(data.name, data.root, device, **data.loader_options())
    model = build_model(ckpt["model_name"], ckpt["num_classes"], tuple(ckpt["input_shape"]),
                        **model_options(ckpt["config"].get("model") or {}))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not fit model {ckpt['model_name']}: {err}") from None
    model.to(device)
    result = {"checkpoint": str(path), "data": data.name, "model": ckpt["model_name"],
              "num_classes": ckpt["num_classes"]}
    result.update({f"test_{k}": v for k, v in evaluate(model, test, data.eval_batch_size).items()})
    prunable = list(ckpt["masks"])
    result["sparsity"] = sparsity_stats(model, tuple(ckpt["input_shape"]), prunable)
    return result
