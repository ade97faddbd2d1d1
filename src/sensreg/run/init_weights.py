"""trainer.init: the weights a run starts from, read from a local file (never downloaded)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sensreg.records.checkpoint import FORMAT, CheckpointError, load_file, unpack
from sensreg.data import DATASETS
from sensreg.errors import few_names


# Prefixes that wrapping a model adds to every key of its state dict, stripped from a trainer.init
# file whose keys all carry one: DistributedDataParallel and DataParallel (``module.``) and
# torch.compile (``_orig_mod.``).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Keys under which training scripts commonly nest the state dict in a larger checkpoint.
NESTED_STATE_KEYS = ("state_dict", "model")

log = logging.getLogger("sensreg")


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(torch.is_tensor(v) for v in value.values())


def load_init_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights to start training from, read from a local file only (nothing is ever downloaded):
    a sensreg model.pt, a plain state dict (as torchvision publishes its weights, and as
    ``torch.save(model.state_dict(), path)`` writes them), or a dict holding one under
    ``state_dict`` or ``model``; a ``module.`` (DistributedDataParallel) or ``_orig_mod.``
    (torch.compile) prefix on every key is removed."""
    payload = load_file(path, "trainer.init")
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return unpack(payload, path)["state_dict"]
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
            datasets = [f"data={d}" for d, spec in DATASETS.items() if spec.num_classes == n]
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
    # Integer weights would be cast silently and train as a dead network (load_state_dict copies
    # into the model's dtype); a nan or inf would be the first loss's.
    wrong = [f"{k} holds {str(state[k].dtype).removeprefix('torch.')} values" for k in own
             if k in state and own[k].is_floating_point() and not state[k].is_floating_point()]
    wrong += [f"{k} holds nan or inf" for k in own if k in state and state[k].is_floating_point()
              and not bool(torch.isfinite(state[k]).all())]
    if wrong:
        raise CheckpointError(f"trainer.init={path} holds weights no trained network has: {few_names(wrong)}. "
                              f"Give trainer.init the float weights of a trained {model_name} "
                              f"(torch.save(model.state_dict(), PATH)).")
    model.load_state_dict(state, strict=False)  # strict but for the step counters (above)
    log.info("trainer.init: loaded %d tensors (%s values) from %s", len(state),
             f"{sum(t.numel() for t in state.values()):,}", path)


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"
