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

from sensreg.method.per_sample import LayerTape

OUTPUTS = ("logits", "probs")
REDUCTIONS = ("batch", "sample")  # |d mean_n o_n / dw|, or mean_n |d o_n / dw| (per_sample.py)
# Sums a list of tensors over the processes of a distributed run, in place.
Reduce = Callable[[list[Tensor]], None]


@dataclass(frozen=True)
class Variant:
    """What a sensitivity variant needs from the training step."""

    name: str
    regularizes: bool  # whether the insensitivity-weighted shrink runs at all
    uses_sensitivity: bool  # False: the shrink treats every parameter as insensitive (S = 0)
    extra_backward: str  # what it costs beyond the loss gradient, for the docs and --help
    description: str


VARIANTS: dict[str, Variant] = {
    "spec": Variant("spec", True, True, "1 backward", "specific: |d o_target / d w|"),
    "unspec": Variant("unspec", True, True, "C (or K) batched VJPs", "unspecific: mean_k |d o_k / d w|"),
    "loss": Variant("loss", True, True, "none", "loss-based (LOBSTER): |dL/dw|"),
    "l2": Variant("l2", True, False, "none", "plain decoupled weight decay (insensitivity = 1)"),
    "none": Variant("none", False, False, "none", "no regularization (control)"),
}


def get_variant(name: str) -> Variant:
    """The registered variant ``name``; an unknown name is an error listing the known ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise KeyError(f"unknown sensitivity variant {name!r}; known: {', '.join(VARIANTS)}") from None


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


def specific(logits: Tensor, targets: Tensor, params: list[Tensor], output: str = "logits",
             retain_graph: bool = False, total: int | None = None,
             reduce: Reduce | None = None) -> list[Tensor]:
    """S(w) = |d/dw mean_n o_{n, targets_n}| for every tensor in ``params``."""
    derivatives = specific_derivatives(logits, targets, params, output, retain_graph, total)
    if reduce is not None:
        reduce(derivatives)
    return [d.abs_() for d in derivatives]


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


def per_sample(variant: Variant, tape: LayerTape, logits: Tensor, targets: Tensor, output: str = "logits",
               classes: int | None = None, generator: torch.Generator | None = None,
               total: int | None = None, retain_graph: bool = False) -> list[Tensor]:
    """The ``sample`` reduction: S(w) = mean_n |d o_n / d w| (``per_sample.py``).

    ``logits`` must come from the forward pass that ``tape`` recorded. spec: o_n = o_{n, t_n};
    unspec: (1/C) sum_k over the (sampled) classes of mean_n |d o_{n,k} / dw|; loss:
    mean_n |d L_n / dw|. With ``total`` (one of several processes), each process's part of the
    sum over the samples of the batch divided by ``total``: summed over the processes, the
    whole batch's value. (The absolute values are taken per sample, before that sum.)
    """
    if variant.name == "loss":
        n = len(targets) if total is None else total
        return tape.abs_grad_sums([F.cross_entropy(logits, targets, reduction="sum") / n], retain_graph)
    o = output_of(logits, output)
    if variant.name == "spec":
        return tape.abs_grad_sums([batch_mean(o.gather(1, targets[:, None]).squeeze(1), total)], retain_graph)
    if variant.name != "unspec":
        raise ValueError(f"variant {variant.name!r} has no sensitivity to reduce per sample")
    means = batch_mean(o, total)  # (C,): each a sum of per-sample terms
    rows = class_rows(means.shape[0], classes, generator, means.device)
    sums = tape.abs_grad_sums([means[k] for k in rows.tolist()], retain_graph)
    return list(torch._foreach_div(sums, len(rows)))


# Modules whose backward has no batching rule in autograd's batched-gradient mode: PyTorch falls
# back to a slow loop over the cotangents with extra copies (aten::convolution_backward and
# max_pool2d_with_indices_backward). With them a plain loop over classes is faster: LeNet-5 on
# 2 CPU cores, 76 ms against 102 ms per exact unspecific step. Without them (LeNet-300-100) the
# batched call wins: 3.7 ms against 4.8 ms.
_NO_BATCH_RULE = (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd)


def batched_vjps_are_faster(model: nn.Module) -> bool:
    """Whether ``unspecific(batched=True)`` is the faster way for ``model``."""
    return not any(isinstance(m, _NO_BATCH_RULE) for m in model.modules())


def loss_based(loss_grads: list[Tensor]) -> list[Tensor]:
    """S(w) = |dL/dw|, from the loss gradient the training step computes anyway."""
    return list(torch._foreach_abs(loss_grads))


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
    not scaled at all (see below).

    ``total`` and ``reduce`` (several processes, each with part of a batch of ``total`` items):
    ``loss`` must be this part's share of the batch mean, and the gradients and sensitivities
    returned are those of the whole batch, the same on every process. The loss gradient and
    the specific sensitivity's derivatives go through ``reduce`` together, in one call.

    ``tape`` (the ``sample`` reduction): the sensitivity is mean_n |d o_n / dw| (``per_sample``)
    instead of the absolute value of the batch-mean derivative, for spec, unspec and loss alike.
    ``sens_logits``: the logits of the forward pass the tape recorded, where that is not the
    pass of ``loss`` (a network with batch norm: ``per_sample.held_batch_statistics``).
    """
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
    if tape is not None and variant.uses_sensitivity:
        scaled = loss if loss_scale is None else loss * loss_scale
        separate = sens_logits is not None and sens_logits is not logits
        grads = [_or_zero(g, p) for g, p in zip(
            torch.autograd.grad(scaled, params, retain_graph=not separate, allow_unused=True), params)]
        sens = per_sample(variant, tape, logits if sens_logits is None else sens_logits, targets, output,
                          classes, generator, total)
        if reduce is not None:  # per-sample absolute values add up over the processes' samples
            reduce(grads + sens)
        return grads, sens
    needs_extra_backward = variant.name in ("spec", "unspec")
    scaled = loss if loss_scale is None else loss * loss_scale
    grads = [_or_zero(g, p) for g, p in zip(
        torch.autograd.grad(scaled, params, retain_graph=needs_extra_backward, allow_unused=True), params)]
    if variant.name == "spec":
        derivatives = specific_derivatives(logits, targets, params, output, total=total)
        if reduce is not None:
            reduce(grads + derivatives)
        return grads, [d.abs_() for d in derivatives]
    if reduce is not None:
        reduce(grads)
    if variant.name == "unspec":
        return grads, unspecific(logits, params, output, classes, generator, batched=batched,
                                 total=total, reduce=reduce)
    if variant.name == "loss":
        sens = loss_based(grads)
        if loss_scale is not None:
            torch._foreach_div_(sens, loss_scale)
        return grads, sens
    return grads, None


def _or_zero(g: Tensor | None, p: Tensor) -> Tensor:
    # A parameter that does not reach the output (allow_unused) has zero derivative.
    return g if g is not None else torch.zeros_like(p)


