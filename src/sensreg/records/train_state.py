"""last.pt, the training state: everything a stopped run needs to carry on exactly as if it
had never stopped (model, masks, optimizer, generators, the loop's and the pruning schedule's
state), as plain tensors and values that load with weights_only=True."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sensreg.atomic import write_atomic
from sensreg.records.checkpoint import CheckpointError, load_file


TRAIN_STATE_FORMAT = "sensreg-train-state"
TRAIN_STATE_VERSION = 1


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``last.pt`` atomically: a kill during the write leaves the previous one intact."""
    payload = {"format": TRAIN_STATE_FORMAT, "format_version": TRAIN_STATE_VERSION, **state}
    write_atomic(path, lambda f: torch.save(payload, f), binary=True)


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Load ``last.pt`` safely (weights_only=True); refuse a corrupt or foreign file by path."""
    payload = load_file(path, "checkpoint", " It cannot be resumed; start the run again without "
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
