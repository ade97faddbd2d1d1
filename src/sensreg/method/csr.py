"""Linear layers stored sparse: an option for a compacted network served in large batches.

Compaction (``compaction.py``) leaves plain dense layers, fastest for one image at a time; the
weights of the units it keeps are still mostly zero after pruning. ``csr_linears`` stores every
linear layer's weight as a CSR sparse matrix and multiplies with ``torch.sparse.mm``, which
skips the zeros: faster at large batches, slower at batch 1 (docs/results.md has the figures;
``scripts/bench_infer.py`` measures it). Convolutions stay dense. Models with CSR layers run in
torch eager only: torch.export and ONNX do not take sparse weights.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn


class CSRLinear(nn.Module):
    """``layer`` (an ``nn.Linear``) with its weight held as a CSR sparse matrix, for inference."""

    def __init__(self, layer: nn.Linear):
        super().__init__()
        with warnings.catch_warnings():  # "sparse CSR support is in beta": it is what is measured
            warnings.simplefilter("ignore")
            self.register_buffer("weight", layer.weight.detach().to_sparse_csr())
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())
        self.in_features, self.out_features = layer.in_features, layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        y = torch.sparse.mm(self.weight, flat.t()).t()  # (W x^T)^T = x W^T, the zeros of W skipped
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def csr_linears(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) with every ``nn.Linear`` replaced by a ``CSRLinear``."""
    out = copy.deepcopy(model).eval()
    for module in list(out.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, CSRLinear(child))
    return out
