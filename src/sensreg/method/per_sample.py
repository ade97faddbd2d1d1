"""Per-sample sensitivities: sum_n |d s_n / d w| for a scalar s = sum_n s_n of per-sample terms.

The ``batch`` reduction of ``sensitivity.py`` takes the absolute value of the batch-mean
derivative, |d/dw mean_n o_n|, in which the derivatives of different samples can cancel. The
``sample`` reduction takes the mean over the samples of each sample's absolute derivative,
mean_n |d o_n / d w|: the learning rule is stated per input pattern, and averaged over a
minibatch its insensitivity is mean_n max(0, 1 - S_n), which equals max(0, 1 - mean_n S_n)
whenever every S_n <= 1.

No per-sample backward pass is needed. One backward pass of s, taken with respect to the
*outputs* of the network's layers (recorded by a ``LayerTape`` during the forward pass), gives
each sample's output gradient delta_n at every layer; each layer's per-sample parameter gradient
follows from delta_n and the layer's input x_n:

- ``nn.Linear`` (y = x W^T + b): d s_n / dW = delta_n x_n^T, so sum_n |d s_n / dW| = |delta|^T |x|,
  one matmul; the bias: sum_n |delta_n|.
- ``nn.Conv2d``: d s_n / dW = sum over output positions of delta_n times the input patch
  (``F.unfold``); the absolute value comes after that sum, so the per-sample gradients are formed
  explicitly, a chunk of samples at a time so that memory stays bounded (``CHUNK_ELEMENTS``).
- batch norm (``_BatchNorm``): a training-mode batch norm normalizes each sample with the
  statistics of the whole batch, so every output depends on every sample. "Per sample" is then
  defined with those statistics held constant: each sample's own path through the network, as in
  evaluation mode but with the batch's mean and (biased) variance. ``held_batch_statistics``
  switches the model's batch norms to that form for the sensitivity's forward pass; the weight
  gradient is sum over positions of delta_n times the normalized input, the bias that of delta_n.

Several scalars (the classes of the unspecific sensitivity) add their absolute values up:
the result is sum_k sum_n |d s_{k,n} / dw|. Each costs one backward pass to the layer outputs.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from sensreg.errors import UserError

SUPPORTED = (nn.Linear, nn.Conv2d, _BatchNorm)
# Per-sample conv gradients and input patches of one chunk of samples, in elements (128 MiB in
# float32): the chunk is as many samples as fit, at least one.
CHUNK_ELEMENTS = 2**25


class PerSampleError(UserError, ValueError):
    """The network has a layer whose per-sample gradients are not implemented."""


@dataclass
class _Call:
    input: Tensor
    output: Tensor


def parameter_owners(model: nn.Module) -> dict[int, tuple[str, nn.Module, str]]:
    """id of each parameter -> (its module's name, the module, the parameter's own name)."""
    return {id(p): (name, module, pname) for name, module in model.named_modules()
            for pname, p in module.named_parameters(recurse=False)}


@contextmanager
def forward_hooks(modules: list[nn.Module], hook):
    """Within: ``hook(module, inputs, output)`` runs after each forward call of ``modules``."""
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@dataclass
class LayerTape:
    """Records the input and output of each layer that owns one of ``params`` during a forward.

    ``params`` are the tensors whose sensitivity is wanted; each must be the ``weight`` or the
    ``bias`` of a layer of a ``SUPPORTED`` type, called once per forward pass.
    """

    model: nn.Module
    params: list[Tensor]
    calls: dict[nn.Module, _Call] = field(default_factory=dict)

    def __post_init__(self) -> None:
        owners = parameter_owners(self.model)
        self.slots: list[tuple[nn.Module, str]] = []
        for p in self.params:
            name, module, pname = owners[id(p)]
            if not isinstance(module, SUPPORTED) or pname not in ("weight", "bias"):
                raise PerSampleError(
                    f"sens.reduction=sample needs per-sample gradients of {name}.{pname}, a parameter of "
                    f"a {type(module).__name__} layer; they are implemented for Linear, Conv2d and batch-norm "
                    f"layers only. Use sens.reduction=batch for this network.")
            if isinstance(module, nn.Conv2d) and (module.padding_mode != "zeros" or isinstance(module.padding, str)):
                raise PerSampleError(
                    f"sens.reduction=sample: the convolution {name} pads with padding={module.padding!r}, "
                    f"padding_mode={module.padding_mode!r}; per-sample gradients are implemented for zero "
                    f"padding given in pixels. Use sens.reduction=batch for this network.")
            self.slots.append((module, pname))
        self.modules = list(dict.fromkeys(m for m, _ in self.slots))

    @contextmanager
    def record(self):
        """Within: one forward pass of the model, whose layers' inputs and outputs are kept."""
        self.calls = {}

        def hook(module, inputs, output):
            if module in self.calls:
                raise PerSampleError(
                    f"sens.reduction=sample: the layer {type(module).__name__} is called more than once "
                    f"in one forward pass (shared weights), so its per-sample gradients are not the sum "
                    f"this module computes. Use sens.reduction=batch for this network.")
            self.calls[module] = _Call(inputs[0], output)

        with forward_hooks(self.modules, hook):
            yield self

    def abs_grad_sums(self, scalars: list[Tensor], retain_graph: bool = False) -> list[Tensor]:
        """sum_k sum_n |d scalars[k]_n / dw| for each of ``params``, from the recorded pass.

        Each scalar must be a sum of per-sample terms of the recorded forward pass (e.g. the
        batch mean of an output component: the 1/N is then inside every term).
        """
        called = [m for m in self.modules if m in self.calls]  # a layer off the path has S = 0
        outputs = [self.calls[m].output for m in called]
        # Linear layers on (N, features) inputs: sum_k |delta_k| first, then one matmul with |x|.
        flat = {m for m in called if isinstance(m, nn.Linear) and self.calls[m].input.dim() == 2}
        abs_deltas: dict[nn.Module, Tensor] = {}
        sums: dict[tuple[nn.Module, str], Tensor] = {}
        for k, s in enumerate(scalars):
            last = k == len(scalars) - 1
            deltas = torch.autograd.grad(s, outputs, retain_graph=retain_graph or not last, allow_unused=True)
            for m, d in zip(called, deltas):
                if d is None:
                    continue
                if m in flat:
                    a = d.abs()
                    abs_deltas[m] = abs_deltas[m].add_(a) if m in abs_deltas else a
                    continue
                for pname, value in _layer_abs(m, self.calls[m].input, d).items():
                    key = (m, pname)
                    sums[key] = sums[key].add_(value) if key in sums else value
        for m, a in abs_deltas.items():
            a = a.to(m.weight.dtype)
            sums[(m, "weight")] = a.t().mm(self.calls[m].input.detach().to(a.dtype).abs())
            if m.bias is not None:
                sums[(m, "bias")] = a.sum(0)
        return [sums[(m, pname)].reshape(p.shape).to(p.dtype) if (m, pname) in sums else torch.zeros_like(p)
                for (m, pname), p in zip(self.slots, self.params)]


def _layer_abs(module: nn.Module, x: Tensor, delta: Tensor) -> dict[str, Tensor]:
    """sum_n |d s_n / dw| for one scalar's output gradient ``delta`` at ``module``: conv, batch
    norm, or a linear layer on inputs with more than one dimension per sample."""
    dtype = (module.weight if module.weight is not None else module.bias).dtype
    x, delta = x.detach().to(dtype), delta.to(dtype)
    if isinstance(module, _BatchNorm):
        return _norm_abs(module, x, delta)
    if isinstance(module, nn.Linear):  # (N, ..., in): sum over the positions inside |.|
        n = x.shape[0]
        per_sample = torch.einsum("npo,npi->noi", delta.reshape(n, -1, delta.shape[-1]), x.reshape(n, -1, x.shape[-1]))
        out = {"weight": per_sample.abs_().sum(0)}
        if module.bias is not None:
            out["bias"] = delta.reshape(n, -1, delta.shape[-1]).sum(1).abs_().sum(0)
        return out
    return _conv_abs(module, x, delta)


def _conv_abs(conv: nn.Conv2d, x: Tensor, delta: Tensor) -> dict[str, Tensor]:
    n, groups = x.shape[0], conv.groups
    c_out = conv.out_channels
    patch = conv.in_channels // groups * conv.kernel_size[0] * conv.kernel_size[1]
    positions = delta.shape[2] * delta.shape[3]
    per_sample = c_out * patch + groups * patch * positions + c_out * positions
    chunk = max(1, CHUNK_ELEMENTS // per_sample)
    weight = torch.zeros(groups, c_out // groups, patch, dtype=x.dtype, device=x.device)
    for start in range(0, n, chunk):
        xs, ds = x[start:start + chunk], delta[start:start + chunk]
        m = xs.shape[0]
        cols = F.unfold(xs, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # (m, Cin*k*k, P)
        cols = cols.view(m, groups, patch, positions)
        d = ds.reshape(m, groups, c_out // groups, positions)
        weight += torch.einsum("ngop,ngip->ngoi", d, cols).abs_().sum(0)
    out = {"weight": weight.reshape(conv.weight.shape)}
    if conv.bias is not None:
        out["bias"] = delta.sum(dim=(2, 3)).abs_().sum(0)
    return out


def _norm_abs(bn: _BatchNorm, x: Tensor, delta: Tensor) -> dict[str, Tensor]:
    dims = [0] + list(range(2, x.dim()))
    if bn.training or bn.running_mean is None:
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
    else:
        mean, var = bn.running_mean.to(x.dtype), bn.running_var.to(x.dtype)
    shape = [1, -1] + [1] * (x.dim() - 2)
    normalized = (x - mean.view(shape)) * (var.view(shape) + bn.eps).rsqrt()
    # (N, C, ...) -> (N, C, positions): the sum over the positions of a sample comes before |.|
    per_position = lambda t: t.reshape(t.shape[0], t.shape[1], -1)  # noqa: E731
    out = {}
    if bn.weight is not None:
        out["weight"] = per_position(delta * normalized).sum(2).abs_().sum(0)
    if bn.bias is not None:
        out["bias"] = per_position(delta).sum(2).abs_().sum(0)
    return out


def has_batch_statistics(model: nn.Module) -> bool:
    """Whether a forward pass of ``model`` couples the samples of a batch (training batch norm)."""
    return any(isinstance(m, _BatchNorm) and m.training for m in model.modules())


@contextmanager
def held_batch_statistics(model: nn.Module):
    """Within: each training-mode batch norm normalizes with its batch's mean and biased variance
    taken as constants (no gradient through them) and leaves its running averages alone."""
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.training]
    for bn in norms:
        bn.forward = _held_forward.__get__(bn)
    try:
        yield
    finally:
        for bn in norms:
            del bn.forward


def _held_forward(bn: _BatchNorm, x: Tensor) -> Tensor:
    dims = [0] + list(range(2, x.dim()))
    held = x.detach()
    mean, var = held.mean(dims), held.var(dims, unbiased=False)
    return F.batch_norm(x, mean, var, bn.weight, bn.bias, training=False, momentum=0.0, eps=bn.eps)
