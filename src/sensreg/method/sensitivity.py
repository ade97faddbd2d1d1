"""Sensitivity of the network output to each parameter: tensors in, tensors out.

The sensitivity of parameter w is S(w) = sum_k alpha_k |d o_k / d w|, where o is the network
output chosen by ``output``: the logits z, or the probabilities y = softmax(z). On a minibatch
the ``batch`` reduction takes the derivative of the batch mean of the output (one backward pass
per output component, not one per sample) and applies the absolute value to that mean
derivative; the ``sample`` reduction (``per_sample``, ``per_sample.py``) takes the mean over the
samples of each sample's absolute derivative, in which samples cannot cancel each other.

Variants (``VARIANTS``):

- ``spec``: alpha = the one-hot target, so S = |d mean_n o_{n, t_n} / d w|. One extra backward.
- ``unspec``: alpha_k = 1/C, so S = (1/C) sum_k |d mean_n o_{n, k} / d w|. C vector-Jacobian
  products (in one batched autograd call, or in a loop where that is faster); or an unbiased
  estimate over K sampled classes.
- ``loss``: S = |dL/dw| (LOBSTER), read off the loss gradient: no extra backward.
- ``neuron``: S of a unit (SeReNe), mean_k mean_n |d o_{n,k} / d z_unit|, given to every
  parameter of the unit (``neuron.py``). C backward passes to the layers' outputs (or K sampled).
- ``l2``: no sensitivity; the regularizer treats every parameter as fully insensitive (plain
  decoupled weight decay).
- ``none``: no sensitivity and no regularization (the control).

Several processes (``distributed.py``): each holds part of the batch, takes its derivatives of
its part's share of the batch mean (``total``: the whole batch's size) and passes the signed
derivatives to ``reduce``, which sums them over the processes, before the absolute value: the
absolute value of a sum is not the sum of absolute values, so this order is what makes the
result that of a single process on the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sensreg.checks import Problems
from sensreg.errors import lookup
from sensreg.method.neuron import UnitTape
from sensreg.method.per_sample import LayerTape

OUTPUTS = ("logits", "probs")
REDUCTIONS = ("batch", "sample")  # |d mean_n o_n / dw|, or mean_n |d o_n / dw| (per_sample.py)
# Sums a list of tensors over the processes of a distributed run, in place.
Reduce = Callable[[list[Tensor]], None]


def output_of(logits: Tensor, output: str) -> Tensor:
    """The output o that sensitivities differentiate: the logits themselves or softmax(logits)."""
    if output == "logits":
        return logits
    if output == "probs":
        return logits.softmax(dim=1)
    raise ValueError(f"unknown sensitivity output {output!r}; known: {', '.join(OUTPUTS)}")


def batch_mean(values: Tensor, total: int | None = None) -> Tensor:
    """The mean of ``values`` over dimension 0, the batch; with ``total``, this part's share of
    the mean over a batch of ``total`` items (its sum divided by ``total``)."""
    return values.mean(dim=0) if total is None else values.sum(dim=0) / total


def specific_derivatives(logits: Tensor, targets: Tensor, params: list[Tensor], output: str = "logits",
                         retain_graph: bool = False, total: int | None = None) -> list[Tensor]:
    """d/dw mean_n o_{n, targets_n}, signed: the specific sensitivity before its absolute value."""
    o = batch_mean(output_of(logits, output).gather(1, targets[:, None]).squeeze(1), total)
    grads = torch.autograd.grad(o, params, retain_graph=retain_graph, allow_unused=True)
    return [_or_zero(g, p) for g, p in zip(grads, params)]


def unspecific(logits: Tensor, params: list[Tensor], output: str = "logits",
               classes: int | None = None, generator: torch.Generator | None = None,
               retain_graph: bool = False, batched: bool = True, total: int | None = None,
               reduce: Reduce | None = None) -> list[Tensor]:
    """S(w) = (1/C) sum_k |d/dw mean_n o_{n, k}| for every tensor in ``params``.

    ``classes=None`` is exact: all C vector-Jacobian products, whose cost grows like C backward
    passes. ``classes=K`` draws K distinct classes uniformly at random (from ``generator``) and
    averages over them: an unbiased estimate of the exact value at the cost of K backward
    passes. ``batched=True`` does the VJPs in one batched autograd call, ``False`` one after
    the other; same values, different speed (see ``batched_vjps_are_faster``). With
    ``reduce``, each class's signed derivative is summed over the processes before its
    absolute value is taken (K sums, one call for the batched VJPs).
    """
    o = batch_mean(output_of(logits, output), total)  # (C,)
    num_classes = o.shape[0]
    rows = class_rows(num_classes, classes, generator, o.device)
    if batched:
        basis = torch.zeros(len(rows), num_classes, dtype=o.dtype, device=o.device)
        basis[torch.arange(len(rows), device=o.device), rows] = 1.0
        grads = torch.autograd.grad(o, params, grad_outputs=basis, is_grads_batched=True,
                                    retain_graph=retain_graph, allow_unused=True)
        grads = [g if g is not None else torch.zeros((len(rows), *p.shape), dtype=p.dtype, device=p.device)
                 for g, p in zip(grads, params)]
        if reduce is not None:
            reduce(grads)
        return [g.abs().mean(dim=0) for g in grads]
    total_abs = [torch.zeros_like(p) for p in params]
    for i, k in enumerate(rows.tolist()):
        last = i == len(rows) - 1
        grads = torch.autograd.grad(o[k], params, retain_graph=retain_graph or not last, allow_unused=True)
        if reduce is not None:
            grads = [_or_zero(g, p) for g, p in zip(grads, params)]
            reduce(grads)
        for t, g in zip(total_abs, grads):
            if g is not None:
                t.add_(g.abs())
    return [t.div_(len(rows)) for t in total_abs]


def class_rows(num_classes: int, classes: int | None, generator: torch.Generator | None,
               device: torch.device) -> Tensor:
    """The classes the unspecific sensitivity averages over: all of them, or ``classes`` distinct
    ones drawn uniformly at random from ``generator``."""
    if classes is None or classes >= num_classes:
        return torch.arange(num_classes, device=device)
    if classes < 1:
        raise ValueError(f"classes must be >= 1, got {classes}")
    # Sampled on the CPU (``generator`` is a CPU generator) so runs agree across devices.
    return torch.randperm(num_classes, generator=generator)[:classes].to(device)


@dataclass
class Pass:
    """What a variant's sensitivity is computed from: one forward pass and its loss gradient.

    ``grads``: the loss gradient (scaled by ``loss_scale`` under fp16 loss scaling); ``tape``:
    the layers' inputs and output gradients (the ``sample`` reduction); ``total`` and ``reduce``:
    one of several processes (see the module's docstring); ``retain_graph``: keep the graph for
    a later backward pass."""

    logits: Tensor
    targets: Tensor
    params: list[Tensor]
    grads: list[Tensor]
    output: str = "logits"
    classes: int | None = None
    generator: torch.Generator | None = None
    batched: bool = True
    loss_scale: Tensor | float | None = None
    total: int | None = None
    reduce: Reduce | None = None
    tape: LayerTape | UnitTape | None = None
    retain_graph: bool = False


# --- the batch reduction: |d mean_n o_n / dw| -------------------------------------------------

def spec_of_batch(p: Pass) -> list[Tensor]:
    derivatives = specific_derivatives(p.logits, p.targets, p.params, p.output, p.retain_graph, p.total)
    if p.reduce is not None:  # the loss gradient and the derivatives in one call
        p.reduce(p.grads + derivatives)
    return [d.abs_() for d in derivatives]


def unspec_of_batch(p: Pass) -> list[Tensor]:
    if p.reduce is not None:
        p.reduce(p.grads)
    return unspecific(p.logits, p.params, p.output, p.classes, p.generator, p.retain_graph, p.batched,
                      p.total, p.reduce)


def loss_of_batch(p: Pass) -> list[Tensor]:
    if p.reduce is not None:
        p.reduce(p.grads)
    sens = loss_based(p.grads)
    if p.loss_scale is not None:
        torch._foreach_div_(sens, p.loss_scale)
    return sens


# --- the sample reduction: mean_n |d o_n / d w| (per_sample.py) ----------------------------------
# ``logits`` come from the forward pass the tape recorded. With ``total`` (one of several
# processes), each process's part of the sum over the samples of the batch divided by ``total``:
# summed over the processes, the whole batch's value (the absolute values are taken per sample,
# before that sum).

def spec_per_sample(p: Pass) -> list[Tensor]:
    """o_n = o_{n, t_n}."""
    o = output_of(p.logits, p.output)
    return p.tape.abs_grad_sums([batch_mean(o.gather(1, p.targets[:, None]).squeeze(1), p.total)], p.retain_graph)


def unspec_per_sample(p: Pass) -> list[Tensor]:
    """(1/C) sum_k over the (sampled) classes of mean_n |d o_{n,k} / dw|."""
    means = batch_mean(output_of(p.logits, p.output), p.total)  # (C,): each a sum of per-sample terms
    rows = class_rows(means.shape[0], p.classes, p.generator, means.device)
    sums = p.tape.abs_grad_sums([means[k] for k in rows.tolist()], p.retain_graph)
    return list(torch._foreach_div(sums, len(rows)))


def loss_per_sample(p: Pass) -> list[Tensor]:
    """mean_n |d L_n / dw|."""
    n = len(p.targets) if p.total is None else p.total
    return p.tape.abs_grad_sums([F.cross_entropy(p.logits, p.targets, reduction="sum") / n], p.retain_graph)


def neuron_of_units(p: Pass) -> list[Tensor]:
    """(1/C) sum_k over the (sampled) classes of mean_n mean_p |d o_{n,k} / d z_{n,unit,p}|, the
    unit's value for each of its parameters (``neuron.py``; ``p.tape`` a ``UnitTape``)."""
    means = batch_mean(output_of(p.logits, p.output), p.total)  # (C,): each a sum of per-sample terms
    rows = class_rows(means.shape[0], p.classes, p.generator, means.device)
    return p.tape.per_parameter(p.tape.unit_sensitivities(means[rows], p.retain_graph, p.batched))


@dataclass(frozen=True)
class Variant:
    """A sensitivity variant: whether it shrinks, and how its S is computed (None: no S, the
    shrink treats every parameter as fully insensitive)."""

    name: str
    regularizes: bool  # whether the insensitivity-weighted shrink runs at all
    description: str
    of_batch: Callable[[Pass], list[Tensor]] | None = None  # the batch reduction
    per_sample: Callable[[Pass], list[Tensor]] | None = None  # the sample reduction
    # S needs backward passes of the outputs of its own (spec: 1; unspec: C, or K, batched VJPs):
    # the loss gradient keeps the graph for them.
    output_backward: bool = False
    # S of whole units (neuron.py): the forward pass records the layers' outputs (a UnitTape),
    # and S is by definition a mean over the samples (the sample reduction only).
    units: bool = False

    @property
    def uses_sensitivity(self) -> bool:
        return self.of_batch is not None or self.per_sample is not None

    @property
    def reductions(self) -> tuple[str, ...]:
        """The reductions this variant's S is defined for (``REDUCTIONS``)."""
        return ("sample",) if self.units else REDUCTIONS

    @property
    def search(self) -> dict[str, str]:
        """What a Pareto sweep (``hydra/sweeper=pareto``) searches by default with it: λ, in the
        sweeper's syntax, where it shrinks at all."""
        return {"sens.lam": "tag(log, interval(1e-6, 1e-3))"} if self.regularizes else {}

    def check(self, sens, p: Problems) -> None:
        """Add to ``p`` the values of the sens.* settings (``sens``) this variant cannot run with."""
        if sens.reduction in REDUCTIONS and sens.reduction not in self.reductions:
            p.add("sens.reduction",
                  f"sens.reduction={sens.reduction} is not defined for sens={self.name}, whose "
                  f"sensitivity is by definition a mean over the samples of each one's: drop "
                  f"sens.reduction (its option sets {self.reductions[0]}).")


VARIANTS: dict[str, Variant] = {
    "spec": Variant("spec", True, "specific: |d o_target / d w|", spec_of_batch, spec_per_sample,
                    output_backward=True),
    "unspec": Variant("unspec", True, "unspecific: mean_k |d o_k / d w|", unspec_of_batch, unspec_per_sample,
                      output_backward=True),
    "loss": Variant("loss", True, "loss-based (LOBSTER): |dL/dw|", loss_of_batch, loss_per_sample),
    # neuron: C (or K) VJPs to the layer outputs (neuron.py)
    "neuron": Variant("neuron", True, "neuron-level (SeReNe): mean_k mean_n |d o_k / d z_unit|", None,
                      neuron_of_units, units=True),
    "l2": Variant("l2", True, "plain decoupled weight decay (insensitivity = 1)"),
    "none": Variant("none", False, "no regularization (control)"),
}


def get_variant(name: str) -> Variant:
    """The registered variant ``name``; an unknown name is an error listing the known ones."""
    return lookup(VARIANTS, name, "sensitivity variant")


# Modules whose backward has no batching rule in autograd's batched-gradient mode: PyTorch falls
# back to a slow loop over the cotangents with extra copies (aten::convolution_backward and
# max_pool2d_with_indices_backward). With them a plain loop over classes is faster: LeNet-5 on
# 2 CPU cores, 76 ms against 102 ms per exact unspecific step. Without them (LeNet-300-100) the
# batched call wins: 3.7 ms against 4.8 ms.
_NO_BATCH_RULE = (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd)


def tape_for(variant: Variant, model: nn.Module, params: list[Tensor], reduction: str) -> LayerTape | UnitTape | None:
    """What the forward pass must record for ``variant``'s S of ``params``: the layers' outputs
    (``neuron``), their inputs and outputs (the ``sample`` reduction), or nothing. Raises the
    tape's user error where the network has a layer it cannot record."""
    if variant.units:
        return UnitTape(model, params)
    if reduction == "sample" and variant.uses_sensitivity:
        return LayerTape(model, params)
    return None


def batched_vjps_are_faster(model: nn.Module) -> bool:
    """Whether ``unspecific(batched=True)`` is the faster way for ``model``."""
    return not any(isinstance(m, _NO_BATCH_RULE) for m in model.modules())


def loss_based(loss_grads: list[Tensor]) -> list[Tensor]:
    """S(w) = |dL/dw|, from the loss gradient the training step computes anyway."""
    return list(torch._foreach_abs(loss_grads))


# Why the output sensitivities' backward passes are not scaled under float16: the shrink
# uses the insensitivity max(0, 1 - S), so what matters is the error of S against 1, and
# underflow only touches components far below that. Their backward passes start from
# d mean_n o_{n,k} / d o, of order 1/N like the loss gradient's, but unlike the loss
# gradient they do not shrink as the loss falls, so they underflow less. Measured on
# LeNet-300-100 and LeNet-5 after 300 steps on MNIST (batches of 100 and 1,000, spec and
# unspec on logits): unscaled float16 is closer to float32 (0.07-0.6 % relative error in
# norm) than bfloat16 (0.2-1.4 %); at most 22 of LeNet-5's 431,080 entries underflowed to
# zero, each with a float32 sensitivity below 1e-5. A scale of 1024 left the relative error
# unchanged (to 1e-4) and would risk overflow (S above 64), which would need its own check.
def gradients_and_sensitivity(variant: Variant, logits: Tensor, loss: Tensor, targets: Tensor,
                              params: list[Tensor], output: str = "logits",
                              classes: int | None = None,
                              generator: torch.Generator | None = None,
                              batched: bool = True,
                              loss_scale: Tensor | float | None = None,
                              total: int | None = None, reduce: Reduce | None = None,
                              tape: LayerTape | None = None, sens_logits: Tensor | None = None,
                              ) -> tuple[list[Tensor], list[Tensor] | None]:
    """The loss gradient for ``params`` and, where the variant has one, their sensitivity.

    Both come from the same forward pass; the sensitivity is evaluated at the current weights,
    i.e. before the optimizer step that will use the gradient. Returns (grads, None) for
    variants without a sensitivity.

    ``loss_scale`` (float16 loss scaling): the gradients are taken of ``loss * loss_scale``, so
    that small ones do not underflow in a float16 backward pass, and are returned scaled, for a
    ``GradScaler`` to unscale and check for overflow. The sensitivities are always returned
    unscaled: the loss-based one is divided by the scale here, and the output sensitivities are
    not scaled at all (see the comment above).

    ``total`` and ``reduce`` (several processes, each with part of a batch of ``total`` items):
    ``loss`` must be this part's share of the batch mean, and the gradients and sensitivities
    returned are those of the whole batch, the same on every process. The loss gradient and
    the specific sensitivity's derivatives go through ``reduce`` together, in one call.

    ``tape`` (the ``sample`` reduction): the sensitivity is mean_n |d o_n / dw| (``per_sample``)
    instead of the absolute value of the batch-mean derivative, for spec, unspec and loss alike.
    ``sens_logits``: the logits of the forward pass the tape recorded, where that is not the
    pass of ``loss`` (a network with batch norm: ``per_sample.held_batch_statistics``).
    """
    if variant.units and tape is None:
        raise ValueError(f"variant {variant.name!r} needs the layers' outputs of the forward pass: record it "
                         f"with tape_for(...).record()")
    sample = tape is not None and variant.uses_sensitivity
    separate = sample and sens_logits is not None and sens_logits is not logits
    # The graph is kept for the sensitivity's own backward passes: the outputs' (batch
    # reduction), or the tape's, which runs back through the same forward pass unless the
    # sensitivity has a pass of its own (sens_logits).
    keep = (variant.output_backward and not sample) or (sample and not separate)
    scaled = loss if loss_scale is None else loss * loss_scale
    grads = [_or_zero(g, p) for g, p in zip(
        torch.autograd.grad(scaled, params, retain_graph=keep, allow_unused=True), params)]
    if not variant.uses_sensitivity:
        if reduce is not None:
            reduce(grads)
        return grads, None
    if sample:
        sens = variant.per_sample(Pass(logits if sens_logits is None else sens_logits, targets, params, grads,
                                       output, classes, generator, batched, total=total, tape=tape))
        if reduce is not None:  # per-sample absolute values add up over the processes' samples
            reduce(grads + sens)
        return grads, sens
    return grads, variant.of_batch(Pass(logits, targets, params, grads, output, classes, generator, batched,
                                        loss_scale, total, reduce))


def _or_zero(g: Tensor | None, p: Tensor) -> Tensor:
    # A parameter that does not reach the output (allow_unused) has zero derivative.
    return g if g is not None else torch.zeros_like(p)


