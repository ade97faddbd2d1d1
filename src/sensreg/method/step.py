"""One step of the method, for any training loop: the loss gradient and the sensitivity S from
one forward pass, then the insensitivity shrink, the masks and the optimizer's step.

    step = SensitivityStep(model, optimizer, "spec")     # shrinks (and masks) every parameter
    for x, y in loader:
        loss = step(x, y, lam=1e-3)    # forward, backward, shrink, optimizer.step(), masks

In this order: S is taken at the current weights w; each regularized weight is shrunk,
w <- w (1 - lam max(0, 1 - S)); the gradients of pruned entries are zeroed and the optimizer
steps with the loss gradient taken at w (so momentum never revives a pruned weight); the masks
are applied again. ``sensreg train`` runs this same code (``run/loop.py``'s ``TrainStep`` adds
precision, processes and ``torch.compile`` around it), so a loop that calls it as above trains
as the runner does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sensreg.method.per_sample import has_batch_statistics, held_batch_statistics
from sensreg.method.pruning import Masks, prunable_names
from sensreg.method.regularizer import insensitivity_stats, rescale_, shrink_
from sensreg.method.sensitivity import (Variant, batched_vjps_are_faster, get_variant, gradients_and_sensitivity,
                                        tape_for)


def _check_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """An optimizer that steps parameters of another model would leave this one untrained."""
    own = {id(p) for p in model.parameters()}
    stepped = [p for group in optimizer.param_groups for p in group["params"]]
    if not stepped or any(id(p) not in own for p in stepped):
        raise ValueError("optimizer: it does not step this model's parameters (it was built over another "
                         "model's, or a copy's); build it over model.parameters() of the model given")


def _check_masks(model: nn.Module, masks: Masks) -> None:
    """Masks built on another model (or a copy) would prune tensors this model never uses."""
    own = dict(model.named_parameters())
    foreign = [n for n, p in zip(masks.names, masks.params) if own.get(n) is not p]
    if foreign:
        raise ValueError(f"masks: {', '.join(foreign[:5])} are not this model's parameters (the masks were built "
                         f"on another model, or a copy); build them with Masks(model, prunable_names(model, ...)) "
                         f"on the model given")


@dataclass(frozen=True)
class StepSettings:
    """How the step computes S and shrinks: the keywords of ``SensitivityStep`` from ``variant``
    to ``scale_over`` (documented there), as one value. The runner builds it from the config's
    ``sens`` section and hands it on whole (``SensitivityStep.from_settings``)."""

    variant: str | Variant = "spec"
    regularize: Sequence[str] | None = None
    output: str = "logits"
    classes: int | None = None
    reduction: str | None = None
    scale: str = "none"
    gamma: float = 1.0
    scale_over: str = "tensor"


class SensitivityStep:
    """The method's training step around a model and its optimizer.

    ``variant``: ``spec`` (the paper's specific sensitivity), ``unspec``, ``loss``, ``l2`` (the
    same shrink with S = 0: decoupled weight decay) or ``none`` (no shrink), or a ``Variant``.
    ``masks``: the entries that may be pruned (``Masks``); by default every parameter but those
    of normalization layers (``prunable_names(model, "all")``, as ``sensreg train`` does), all
    kept. ``regularize``: the names of the parameters the shrink acts on (default: the masks'
    parameters). ``output``: S of the ``logits`` or of the softmax ``probs``; ``classes`` and
    ``generator``: the classes drawn per step by ``unspec`` and ``neuron`` (None: all).
    ``reduction``: ``batch`` (|d mean_n o_n / dw|) or ``sample`` (mean_n |d o_n / dw|, from the
    layers ``forward`` records: the logits must come from it, as they do when the step is
    called); None: the variant's own (``sample`` for ``neuron``, which has no other, else ``batch``);
    ``scale``, ``gamma``, ``scale_over``: how S is brought to the bound at 1 (``rescale_``).
    ``forward``: what computes the logits (default: the model; ``torch.compile(model)``, say).
    Frozen parameters (requires_grad False) are neither trained nor regularized.
    ``self.settings``: the keywords from ``variant`` to ``scale_over`` as given, one ``StepSettings``.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, variant: str | Variant = "spec", *,
                 masks: Masks | None = None, regularize: Sequence[str] | None = None, output: str = "logits",
                 classes: int | None = None, generator: torch.Generator | None = None,
                 reduction: str | None = None, scale: str = "none", gamma: float = 1.0, scale_over: str = "tensor",
                 batched: bool | None = None, forward: Callable[[Tensor], Tensor] | None = None):
        self.settings = StepSettings(variant, regularize, output, classes, reduction, scale, gamma, scale_over)
        self.model, self.optimizer = model, optimizer
        self.forward_fn = model if forward is None else forward
        self.variant = get_variant(variant) if isinstance(variant, str) else variant
        reduction = self.variant.reductions[0] if reduction is None else reduction
        if reduction not in self.variant.reductions:
            raise ValueError(f"reduction={reduction!r} is not one of {', '.join(self.variant.reductions)} "
                             f"(the reductions of variant {self.variant.name!r})")
        _check_optimizer(model, optimizer)
        self.masks = masks if masks is not None else Masks(model, prunable_names(model, "all"))
        _check_masks(model, self.masks)
        named = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.names, self.params = list(named), list(named.values())
        regularize = self.masks.names if regularize is None else list(regularize)
        not_trained = [n for n in regularize if n not in named]
        if not_trained:
            raise ValueError(f"regularize names {', '.join(not_trained[:5])}, which are not trainable parameters of "
                             f"the model (frozen, or no parameter of that name); name trainable ones, or leave "
                             f"regularize out (the masks' parameters)")
        self.reg_index = [self.names.index(n) for n in regularize]
        # (A frozen parameter in the masks keeps its mask but has no gradient to mask.)
        self.mask_index = [self.names.index(n) for n in self.masks.names if n in named]
        self.output, self.classes, self.generator = output, classes, generator
        self.scale, self.gamma, self.scale_over = scale, gamma, scale_over
        # One batched VJP for all of unspec's classes where the layers have a batching rule.
        self.batched = batched_vjps_are_faster(model) if batched is None else batched
        # The sample reduction records each layer's input and output in the forward pass; neuron
        # records the outputs.
        self.tape = tape_for(self.variant, model, self.params, reduction)
        self.held_statistics = self.tape is not None and has_batch_statistics(model)
        # Kept-entry masks of the regularized tensors (None: not prunable), for insensitivity_stats.
        self.reg_kept = [self.masks.factors[self.masks.names.index(n)] if n in self.masks.names else None
                         for n in regularize]
        self.insensitivity: dict[str, float] | None = None  # of the last update with measure=True

    @classmethod
    def from_settings(cls, model: nn.Module, optimizer: torch.optim.Optimizer, settings: StepSettings, *,
                      masks: Masks | None = None, generator: torch.Generator | None = None,
                      batched: bool | None = None, forward: Callable[[Tensor], Tensor] | None = None
                      ) -> "SensitivityStep":
        """The step with the given ``settings``; the other keywords as the constructor takes them."""
        # (vars, not dataclasses.asdict: that would turn a Variant, a dataclass, into a dict)
        return cls(model, optimizer, masks=masks, generator=generator, batched=batched, forward=forward,
                   **vars(settings))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """The logits of a batch and, where the sample reduction needs a pass of its own (a network
        with batch norm: its batch statistics held constant), that pass's logits (else None)."""
        if self.tape is None:
            return self.forward_fn(x), None
        if self.held_statistics:
            logits = self.forward_fn(x)
            with self.tape.record(), held_batch_statistics(self.model):
                return logits, self.forward_fn(x)
        with self.tape.record():
            return self.forward_fn(x), None

    def gradients(self, logits: Tensor, loss: Tensor, targets: Tensor,
                  **kwargs) -> tuple[list[Tensor], list[Tensor] | None]:
        """The loss gradient of every trainable parameter and, where the variant has one, their
        sensitivity (None otherwise); ``kwargs`` as ``gradients_and_sensitivity`` takes them."""
        return gradients_and_sensitivity(self.variant, logits, loss, targets, self.params, self.output,
                                         self.classes, self.generator, self.batched, tape=self.tape, **kwargs)

    def update(self, grads: list[Tensor], sens: list[Tensor] | None, lam: float, measure: bool = False,
               after_step=None) -> None:
        """Shrink, mask the gradients, step the optimizer with them, apply the masks.
        ``measure``: keep the insensitivity figures in ``self.insensitivity`` (a wait for the
        device). ``after_step``: called right after the optimizer's step (a GradScaler's update)."""
        reg_sens = None if sens is None else [sens[i] for i in self.reg_index]
        if reg_sens is not None:
            rescale_(reg_sens, self.scale, self.gamma, self.scale_over)
        if measure and self.variant.regularizes:
            self.insensitivity = insensitivity_stats(reg_sens, self.reg_kept)
        if self.variant.regularizes and lam > 0:
            shrink_([self.params[i] for i in self.reg_index], reg_sens, lam)
        self.masks.mask_([grads[i] for i in self.mask_index])
        for p, g in zip(self.params, grads):
            p.grad = g
        self.optimizer.step()
        if after_step is not None:
            after_step()
        self.masks.apply_()

    def __call__(self, x: Tensor, targets: Tensor, lam: float, measure: bool = False,
                 loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy) -> Tensor:
        """One step on the batch ``(x, targets)`` at shrink rate ``lam``; returns the loss, detached."""
        logits, sens_logits = self.forward(x)
        loss = loss_fn(logits, targets)
        grads, sens = self.gradients(logits, loss, targets, sens_logits=sens_logits)
        self.update(grads, sens, lam, measure)
        return loss.detach()
