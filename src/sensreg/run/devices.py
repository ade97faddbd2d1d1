"""The device a run trains on: the check of trainer.device, and what auto resolves to."""

from __future__ import annotations

import torch


def check_device(device: str) -> str | None:
    """None if ``device`` can be used here, else a sentence saying why not and what to use."""
    if device in ("auto", "cpu"):
        return None
    if isinstance(device, str) and device.startswith("cuda"):
        if not torch.cuda.is_available():
            return f"trainer.device={device} but no CUDA GPU is available here; use trainer.device=cpu or auto."
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            return (f"trainer.device={device} names a GPU that is not present "
                    f"({torch.cuda.device_count()} visible); use cuda:0..{torch.cuda.device_count() - 1}.")
        return None
    return f"trainer.device={device!r} is not one of: auto, cpu, cuda, cuda:N."


def resolve_device(device: str) -> torch.device:
    """auto -> cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
