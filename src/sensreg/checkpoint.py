"""Model checkpoints: plain dicts of tensors and plain values, loadable with weights_only=True.

A model checkpoint holds what is needed to rebuild and re-evaluate the network without the run
that made it: model name, number of classes, input shape, data config, state dict and masks.
Pruned tensors are stored sparsely (the flat positions their mask keeps, and the values there),
so that a checkpoint's size follows the number of remaining weights, not the network's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .report import write_atomic

FORMAT = "sensreg-model"
FORMAT_VERSION = 2  # 1: dense state dict and bool masks; 2: masked tensors stored sparsely


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the path."""


def save_model(path: Path, model: nn.Module, masks: dict[str, torch.Tensor], *, model_name: str,
               num_classes: int, input_shape: tuple[int, ...], config: dict[str, Any]) -> None:
    """Write ``model.pt``: masked tensors as their kept entries only, the others dense."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    sparse = {name: _to_sparse(state.pop(name), mask.detach().cpu()) for name, mask in masks.items()}
    payload = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "model_name": model_name, "num_classes": int(num_classes), "input_shape": list(input_shape),
        "dense": state, "sparse": sparse, "config": config,
    }
    write_atomic(path, lambda f: torch.save(payload, f), binary=True)


def _to_sparse(tensor: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
    # int32 positions: half the bytes of int64, enough for any tensor below 2**31 entries.
    kept = mask.reshape(-1).nonzero().squeeze(1)
    index_dtype = torch.int32 if tensor.numel() < 2**31 else torch.int64
    return {"shape": list(tensor.shape), "indices": kept.to(index_dtype),
            "values": tensor.reshape(-1)[kept].clone()}


def _from_sparse(entry: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The dense tensor (zeros where pruned) and its bool mask."""
    values, indices = entry["values"], entry["indices"].long()
    numel = math.prod(entry["shape"])
    tensor = torch.zeros(numel, dtype=values.dtype)
    mask = torch.zeros(numel, dtype=torch.bool)
    tensor[indices], mask[indices] = values, True
    return tensor.reshape(entry["shape"]), mask.reshape(entry["shape"])


def _load(path: str | Path, what: str, advice: str = "") -> Any:
    """torch.load with weights_only=True (never unpickles code); a missing or unreadable file is
    a CheckpointError that names ``what`` and the path."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{what} {path} cannot be read as a PyTorch file (truncated, corrupt or "
                              f"not a checkpoint): {type(err).__name__}.{advice}") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a sensreg model checkpoint safely (weights_only=True); refuse anything else.

    Returns the payload with a dense ``state_dict`` and bool ``masks``, whichever format
    version the file has.
    """
    payload = _load(path, "checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a sensreg model checkpoint (no format "
                              f"{FORMAT!r}); `sensreg eval` reads the model.pt of a sensreg run folder.")
    return _unpack(payload, path)


def _unpack(payload: dict[str, Any], path: str | Path) -> dict[str, Any]:
    version = payload.get("format_version")
    if version == 1:
        return payload
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version}; this sensreg reads "
                              f"versions 1 and {FORMAT_VERSION}. Upgrade sensreg to read it.")
    try:
        unpacked = {name: _from_sparse(entry) for name, entry in payload.pop("sparse").items()}
    except (KeyError, IndexError, RuntimeError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} is damaged: its sparse tensors do not unpack "
                              f"({type(err).__name__}: {err}).") from None
    payload["state_dict"] = {**payload.pop("dense"), **{n: t for n, (t, _) in unpacked.items()}}
    payload["masks"] = {n: m for n, (_, m) in unpacked.items()}
    return payload


def load_init_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights to start training from: a sensreg model.pt or a plain state dict file."""
    payload = _load(path, "trainer.init")
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return _unpack(payload, path)["state_dict"]
    if isinstance(payload, dict) and payload and all(torch.is_tensor(v) for v in payload.values()):
        return payload
    raise CheckpointError(f"trainer.init={path} is neither a sensreg model.pt nor a state dict.")


def few_names(keys: list[str], shown: int = 4) -> str:
    """The first ``shown`` names and how many more, for messages."""
    return ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


# --- training state: everything needed to continue a run exactly ------------------------------

TRAIN_STATE_FORMAT = "sensreg-train-state"
TRAIN_STATE_VERSION = 1


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``last.pt`` atomically: a kill during the write leaves the previous one intact."""
    payload = {"format": TRAIN_STATE_FORMAT, "format_version": TRAIN_STATE_VERSION, **state}
    write_atomic(path, lambda f: torch.save(payload, f), binary=True)


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Load ``last.pt`` safely (weights_only=True); refuse a corrupt or foreign file by path."""
    payload = _load(path, "checkpoint", " It cannot be resumed; start the run again without "
                                        "trainer.resume, in a new folder.")
    if not isinstance(payload, dict) or payload.get("format") != TRAIN_STATE_FORMAT:
        raise CheckpointError(f"{path} is not a sensreg training checkpoint (last.pt of a run folder).")
    if payload.get("format_version") != TRAIN_STATE_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {payload.get('format_version')}; "
                              f"this sensreg reads version {TRAIN_STATE_VERSION}.")
    return payload


def rng_states() -> dict[str, Any]:
    """The global random number generators (torch, CUDA, numpy, python), as plain tensors and
    lists, so that they load with weights_only=True."""
    import random

    states: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        states["numpy"] = [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]
    except ImportError:
        pass
    version, internal, gauss = random.getstate()
    states["python"] = [version, list(internal), gauss]
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    import random

    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if "numpy" in states:
        import numpy as np

        kind, keys, pos, has_gauss, gauss = states["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
