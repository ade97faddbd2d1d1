"""Mixed precision (``trainer.precision``): the forward pass under torch.autocast.

- ``fp32``: no autocast; everything in float32.
- ``bf16``: the forward pass under ``torch.autocast(dtype=torch.bfloat16)``, on the CPU or a GPU.
- ``fp16``: the same with float16, on CUDA only, with dynamic loss scaling (``torch.amp.GradScaler``)
  for the loss gradient: float16's narrow exponent range lets small gradients underflow.

In every mode the parameters stay float32 ("master weights"): autocast casts copies of them for
the matrix products and convolutions of the forward pass, and the backward pass returns float32
gradients for float32 leaves. So the loss gradient, the sensitivities, the shrink, the masks and
the optimizer state are all float32; only the precision of the arithmetic changes.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str) -> None:
    """Raise ValueError, listing the known choices, for an unknown ``precision``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")


def autocast(device: torch.device | str, precision: str):
    """The context for a forward pass in ``precision`` on ``device`` (nothing to do for fp32)."""
    check_precision(precision)
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_DTYPES[precision])


def grad_scaler(device: torch.device | str, precision: str) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 (dynamic loss scaling, torch's defaults), None otherwise.

    bfloat16 has float32's exponent range, so its gradients do not underflow and need no scaling.
    """
    check_precision(precision)
    return torch.amp.GradScaler(torch.device(device).type) if precision == "fp16" else None
