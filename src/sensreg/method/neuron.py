"""The neuron-level sensitivity (SeReNe): how much the network output depends on each unit.

SeReNe (Tartaglione et al., TNNLS 2021) regularizes a whole unit (a neuron of a linear layer, a
channel of a convolution or a batch norm) by the sensitivity of the output to the unit's output
z_j, taken before its activation function:

    S_j = (1/C) sum_k mean_n mean_p |d o_{n,k} / d z_{n,j,p}|

over the classes k, the samples n of the batch and the positions p of a channel (one position
for a linear layer's neuron). This is SeReNe's ``full`` form, the definition itself: C backward
passes, each to the layers' outputs only (no parameter gradient is formed); ``classes=K``
averages over K classes drawn at random instead, an unbiased estimate at the cost of K passes.
Its other two forms are approximations of it, left out: ``lower-bound`` swaps the sum over the
classes and the absolute value (one backward pass of sum_k o_k), which on logits lets the
classes cancel (softmax is blind to a shift of all logits, so sum_k o_k is nearly constant
in a unit that only moves the decision between classes); ``local`` keeps only whether the unit's
pre-activation is positive, which does not measure the output at all.

The unit's S becomes the sensitivity of each of its incoming parameters (its row of the weight,
its bias), so that the insensitivity shrink w <- w (1 - lam max(0, 1 - S_j)) acts on all of them
together, by the same factor: the unit shrinks as a whole.

Batch norm in training mode couples the samples of a batch; as for the ``sample`` reduction, the
derivative is then taken with the batch statistics held constant (``per_sample.held_batch_statistics``).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from sensreg.errors import UserError
from sensreg.method.per_sample import forward_hooks, parameter_owners

# Layers whose parameters belong to units: the unit is the last dimension of a linear layer's
# output, the channel (dimension 1) of a convolution's or a batch norm's.
UNIT_LAYERS = (nn.Linear, _ConvNd, _BatchNorm)


class UnitError(UserError, ValueError):
    """A trainable parameter that belongs to no unit the neuron sensitivity knows."""


def _unit_dim(module: nn.Module) -> int:
    return -1 if isinstance(module, nn.Linear) else 1


@dataclass
class UnitTape:
    """Records the output of each layer that owns one of ``params`` during a forward pass, and
    turns the output gradients into per-unit sensitivities (the module's docstring).

    Each of ``params`` must be the weight or the bias of a ``UNIT_LAYERS`` layer called once per
    forward pass (a transposed convolution's weight has its output channels second: it is refused)."""

    model: nn.Module
    params: list[Tensor]
    outputs: dict[nn.Module, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        owners = parameter_owners(self.model)
        self.slots: list[nn.Module] = []
        for p in self.params:
            name, module, pname = owners[id(p)]
            transposed = isinstance(module, _ConvNd) and module.transposed
            if not isinstance(module, UNIT_LAYERS) or transposed or pname not in ("weight", "bias"):
                raise UnitError(
                    f"sens=neuron regularizes units (the neurons of linear layers, the channels of convolutions "
                    f"and batch norms), and {name}.{pname} belongs to a {type(module).__name__} layer, which "
                    f"has none it knows. Freeze that parameter (requires_grad=False), or use a variant that "
                    f"works weight by weight (sens=spec).")
            self.slots.append(module)
        self.modules = list(dict.fromkeys(self.slots))

    @contextmanager
    def record(self):
        """Within: one forward pass of the model, whose layers' outputs are kept."""
        self.outputs = {}

        def hook(module, inputs, output):
            if module in self.outputs:
                raise UnitError(
                    f"sens=neuron: the layer {type(module).__name__} is called more than once in one forward "
                    f"pass (shared weights), so it has no one output per unit. Use sens=spec for this network.")
            self.outputs[module] = output

        with forward_hooks(self.modules, hook):
            yield self

    def unit_sensitivities(self, scalars: Tensor, retain_graph: bool = False, batched: bool = True) -> dict[nn.Module, Tensor]:
        """mean_k mean_n mean_p |d scalars[k] / d z_{n,j,p}| for every unit j of every recorded layer.

        ``scalars``: a (K,) tensor, each a sum of per-sample terms with the 1/N of the batch mean
        inside (``batch_mean`` of an output column): the sum over the samples of the absolute
        derivatives is then their mean. ``batched``: the K backward passes in one batched call."""
        called = [m for m in self.modules if m in self.outputs]  # a layer off the path has S = 0
        outputs = [self.outputs[m] for m in called]
        totals: dict[nn.Module, Tensor] = {}

        def add(m: nn.Module, d: Tensor, leading: int) -> None:
            # d: (K, N, ...) with leading=1 (the classes of a batched call), else (N, ...).
            unit = d.dim() - 1 if _unit_dim(m) < 0 else leading + 1
            positions = d.numel() // d.shape[unit] // d.shape[:leading + 1].numel()
            value = d.abs().sum(dim=[i for i in range(d.dim()) if i != unit]).div_(positions)
            totals[m] = totals[m].add_(value) if m in totals else value

        if batched:
            basis = torch.eye(scalars.shape[0], dtype=scalars.dtype, device=scalars.device)
            deltas = torch.autograd.grad(scalars, outputs, grad_outputs=basis, is_grads_batched=True,
                                         retain_graph=retain_graph, allow_unused=True)
            for m, d in zip(called, deltas):
                if d is not None:
                    add(m, d, 1)
        else:
            for k in range(scalars.shape[0]):
                last = k == scalars.shape[0] - 1
                deltas = torch.autograd.grad(scalars[k], outputs, retain_graph=retain_graph or not last,
                                             allow_unused=True)
                for m, d in zip(called, deltas):
                    if d is not None:
                        add(m, d, 0)
        return {m: t.div_(scalars.shape[0]) for m, t in totals.items()}

    def per_parameter(self, units: dict[nn.Module, Tensor]) -> list[Tensor]:
        """Each parameter's sensitivity: its unit's, along the parameter's first dimension (the
        output units of a weight, the units of a bias)."""
        out = []
        for m, p in zip(self.slots, self.params):
            if m not in units:
                out.append(torch.zeros_like(p))
                continue
            s = units[m].to(p.dtype)
            out.append(s.reshape(-1, *([1] * (p.dim() - 1))).expand_as(p).clone())
        return out
