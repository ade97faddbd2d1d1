"""model.pt, a run's final model: plain dicts of tensors and plain values, loadable with
weights_only=True (as every file sensreg reads with torch.load: ``load_file``).

A model checkpoint holds what is needed to rebuild and re-evaluate the network without the run
that made it: model name, number of classes, input shape, data config, state dict and masks.
Pruned tensors are stored sparsely: the values their mask keeps, and where they are (the flat
positions, or the mask itself where most entries are kept and its one byte per entry costs less
than four per position), so that a checkpoint's size follows the number of remaining weights and
never exceeds the dense tensor's by more than one byte per entry (a quarter, for float32).
"""

from __future__ import annotations

import math
import pickle
import re
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sensreg.atomic import write_atomic
from sensreg.errors import CheckpointError  # noqa: F401  (raised here; defined with the other errors)
from sensreg.models import build_model, model_options
from sensreg.models.external import factory_root
from sensreg.records.config_keys import upgrade_config

FORMAT = "sensreg-model"
FORMAT_VERSION = 3  # 1: dense state dict and bool masks; 2: masked tensors as positions and values;
#                      3: as 2, or as bool mask and values where that is smaller


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
    root = factory_root((config.get("model") or {}).get("factory")) if model_name == "custom" else None
    if root is not None:  # where the factory's module was imported from, to find it again from elsewhere
        payload["factory_root"] = root
    write_atomic(path, lambda f: torch.save(payload, f), binary=True)


def _to_sparse(tensor: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
    flat_mask = mask.reshape(-1).bool()
    kept = flat_mask.nonzero().squeeze(1)
    entry = {"shape": list(tensor.shape), "values": tensor.reshape(-1)[kept].clone()}
    # int32 positions: half the bytes of int64, enough for any tensor below 2**31 entries.
    index_dtype = torch.int32 if tensor.numel() < 2**31 else torch.int64
    index_bytes = kept.numel() * index_dtype.itemsize
    if index_bytes <= flat_mask.numel():
        entry["indices"] = kept.to(index_dtype)
    else:  # most entries kept: the mask's one byte per entry is the smaller record of where
        entry["mask"] = flat_mask.clone()
    return entry


def _from_sparse(entry: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The dense tensor (zeros where pruned) and its bool mask."""
    values = entry["values"]
    numel = math.prod(entry["shape"])
    tensor = torch.zeros(numel, dtype=values.dtype)
    if "mask" in entry:
        mask = entry["mask"].reshape(-1).bool()
        tensor[mask] = values  # a mask of another size, or of more or fewer entries: an error
    else:
        mask = torch.zeros(numel, dtype=torch.bool)
        indices = entry["indices"].long()
        tensor[indices], mask[indices] = values, True
    return tensor.reshape(entry["shape"]), mask.reshape(entry["shape"])


def load_file(path: str | Path, what: str, advice: str = "") -> Any:
    """torch.load with weights_only=True (never unpickles code); a missing or unreadable file is
    a CheckpointError that names ``what`` and the path."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{what} {path} is a folder, not a file; give the path of the file itself.{advice}")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist." if not path.exists() else
                              f"{what} {path} is not a regular file (a FIFO, device or socket).")
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as err:
        raise CheckpointError(f"{what} {path} cannot be read ({err.strerror or err}); check its permissions."
                              f"{advice}") from None
    if head.lstrip()[:1] in (b"{", b"[") or head.lstrip()[:3] == b"---":
        raise CheckpointError(f"{what} {path} is a text file (JSON or YAML, by its first bytes), not a PyTorch "
                              f"file written by torch.save.{advice}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if isinstance(err, pickle.UnpicklingError) and found:
            raise CheckpointError(
                f"{what} {path} is a whole PyTorch file but holds more than weights: a pickled Python "
                f"object ({found.group(1)}) that loading "
                f"would have to run as code, which sensreg never does. Save the weights alone "
                f"(torch.save(model.state_dict(), PATH)) and give that file.{advice}") from None
        raise CheckpointError(f"{what} {path} cannot be read as a PyTorch file (truncated, corrupt or "
                              f"not a checkpoint): {type(err).__name__}.{advice}") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a sensreg model checkpoint safely (weights_only=True); refuse anything else.

    Returns the payload with a dense ``state_dict`` and bool ``masks``, whichever format
    version the file has.
    """
    payload = load_file(path, "checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a sensreg model checkpoint (no format "
                              f"{FORMAT!r}); `sensreg eval` reads the model.pt of a sensreg run folder.")
    ckpt = unpack(payload, path)
    if isinstance(ckpt.get("config"), dict):
        ckpt["config"] = upgrade_config(ckpt["config"])
    return ckpt


def saved_network(ckpt: dict[str, Any]) -> nn.Module:
    """The network a loaded checkpoint (``load_checkpoint``) was saved from, untrained: its
    registered name, classes and input shape, and for an outside model its model.* settings."""
    root = ckpt.get("factory_root")
    if isinstance(root, str) and root not in sys.path and Path(root).is_dir():
        sys.path.append(root)  # (after the working folder: a module of the same name there wins)
    return build_model(ckpt["model_name"], ckpt["num_classes"], tuple(ckpt["input_shape"]),
                       **model_options(ckpt["config"]["model"]))


def unpack(payload: dict[str, Any], path: str | Path) -> dict[str, Any]:
    version = payload.get("format_version")
    if version == 1:
        return payload
    if version not in (2, FORMAT_VERSION):
        raise CheckpointError(f"checkpoint {path} has format version {version}; this sensreg reads "
                              f"versions 1 to {FORMAT_VERSION}. Upgrade sensreg to read it.")
    try:
        unpacked = {name: _from_sparse(entry) for name, entry in payload.pop("sparse").items()}
    except (KeyError, IndexError, RuntimeError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} is damaged: its sparse tensors do not unpack "
                              f"({type(err).__name__}: {err}).") from None
    payload["state_dict"] = {**payload.pop("dense"), **{n: t for n, (t, _) in unpacked.items()}}
    payload["masks"] = {n: m for n, (_, m) in unpacked.items()}
    return payload
