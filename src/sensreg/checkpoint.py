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


# Prefixes that wrapping a model adds to every key of its state dict, stripped from a trainer.init
# file whose keys all carry one: DistributedDataParallel and DataParallel (``module.``) and
# torch.compile (``_orig_mod.``).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Keys under which training scripts commonly nest the state dict in a larger checkpoint.
NESTED_STATE_KEYS = ("state_dict", "model")


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(torch.is_tensor(v) for v in value.values())


def load_init_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights to start training from, read from a local file only (nothing is ever downloaded):
    a sensreg model.pt, a plain state dict (as torchvision publishes its weights, and as
    ``torch.save(model.state_dict(), path)`` writes them), or a dict holding one under
    ``state_dict`` or ``model``; a ``module.`` (DistributedDataParallel) or ``_orig_mod.``
    (torch.compile) prefix on every key is removed."""
    payload = _load(path, "trainer.init")
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return _unpack(payload, path)["state_dict"]
    if isinstance(payload, dict) and not _is_state_dict(payload):
        payload = next((payload[k] for k in NESTED_STATE_KEYS if _is_state_dict(payload.get(k))), payload)
    if not _is_state_dict(payload):
        raise CheckpointError(f"trainer.init={path} is neither a sensreg model.pt nor a state dict (a dict of "
                              f"tensors, or a dict holding one under {' or '.join(NESTED_STATE_KEYS)}).")
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in payload):
            payload = {k.removeprefix(prefix): v for k, v in payload.items()}
    return payload


def init_model_(model: nn.Module, path: str | Path, model_name: str, num_classes: int, data_name: str) -> None:
    """Load the trainer.init weights at ``path`` into ``model`` in place; a file that does not fit
    is a CheckpointError that names the keys and says what to do."""
    from .data import NUM_CLASSES  # here: data is not needed for reading checkpoints otherwise

    state = load_init_state(path)
    own = model.state_dict()
    # A batch norm's step counter is absent from files saved before it existed (and unused with
    # the default momentum): the model keeps its own, as load_state_dict does for those files.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise CheckpointError(
            f"trainer.init={path} is not a checkpoint of model {model_name}: "
            + "; ".join(f"{what} {few_names(keys)}" for what, keys in
                        (("missing in the file:", missing), ("not in the model:", unexpected)) if keys)
            + f". Give trainer.init a state dict of the same network (for a torchvision architecture, "
              f"torchvision's {model_name} weights), or set model.name to the network the file was saved from.")
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
    if mismatched:
        shapes = few_names([f"{k}: {_shape(state[k])} in the file, {_shape(own[k])} in the model"
                            for k in mismatched], sep="; ")
        # Only the classifier's output layer differs, in its first dimension: another number of classes.
        file_classes = {int(state[k].shape[0]) for k in mismatched if state[k].dim() and own[k].dim()
                        and own[k].shape[0] == num_classes and state[k].shape[1:] == own[k].shape[1:]}
        if len(file_classes) == 1 and len(mismatched) <= 2:
            n = file_classes.pop()
            datasets = [f"data={d}" for d, c in NUM_CLASSES.items() if c == n]
            fix = (f"The file's classifier is for {n} classes, this run's data.name={data_name} has {num_classes}: "
                   f"start from it a run on a dataset with {n} classes"
                   + (f" ({' or '.join(datasets)})" if datasets else "")
                   + ", or give trainer.init a checkpoint trained for this dataset (trainer.init loads the whole "
                     "network: it cannot start the classifier afresh).")
        else:
            fix = (f"Give trainer.init a checkpoint of model.name={model_name} built for this dataset's inputs "
                   f"and classes.")
        raise CheckpointError(f"trainer.init={path} does not fit model {model_name} with {num_classes} classes: "
                              f"{shapes}. {fix}")
    model.load_state_dict(state, strict=False)  # strict but for the step counters (above)


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def few_names(keys: list[str], shown: int = 4, sep: str = ", ") -> str:
    """The first ``shown`` names and how many more, for messages."""
    return sep.join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


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
