"""sensreg: sparse neural networks by sensitivity-driven regularization (Tartaglione et al.,
NeurIPS 2018), for any PyTorch model and training loop.

The method, for a loop of your own (``examples/own_loop.py`` is one, run by the tests)::

    import sensreg
    step = sensreg.SensitivityStep(model, optimizer, "spec")      # S of the target's logit
    prune = sensreg.prune_schedule("gmp", epochs, target="100x")   # or "search", "fixed"
    ctx = sensreg.PruneContext(model, step.masks, optimizer, validate, steps_per_epoch)
    for epoch in range(1, epochs + 1):
        for b, (x, y) in enumerate(train_loader):
            loss = step(x, y, lam=1e-3)       # forward, S, shrink, optimizer step, masks
            prune.after_step(epoch, b, ctx)   # gmp prunes between steps
        prune.after_epoch(epoch, validate(), ctx)   # the threshold search decides here

``validate()`` returns the model's ``loss`` and ``error`` on a validation split. The pieces, for
a loop that needs them apart:

- ``gradients_and_sensitivity``: the loss gradient and S of a variant (``VARIANTS``: spec,
  unspec, loss, l2, none) from one forward pass; ``rescale_`` brings S to the bound at 1.
- ``shrink_``: w <- w (1 - lam max(0, 1 - S)), in place.
- ``Masks``: pruned entries stay exactly zero (weights, gradients, momentum and Adam moments);
  ``prunable_names`` picks the parameters.
- ``search_and_prune`` and ``search_threshold``: the largest magnitude threshold that keeps the
  validation loss within a tolerance; ``prune_schedule`` builds the schedules the runner uses.

Importing sensreg loads torch and these modules only: no Hydra, no console, no files. The
command line (``sensreg train ...``) lives in ``sensreg.commands``, the training runner in
``sensreg.run``.
"""

from sensreg.method.pruning import Masks, prunable_names, search_threshold
from sensreg.method.prune_schedules import (PRUNE_SCHEDULES, PruneConfig, PruneContext, prune_schedule,
                                            search_and_prune)
from sensreg.method.regularizer import insensitivity, rescale_, shrink_
from sensreg.method.sensitivity import VARIANTS, Variant, gradients_and_sensitivity
from sensreg.method.step import SensitivityStep

__version__ = "0.1.0"

__all__ = [
    "SensitivityStep", "gradients_and_sensitivity", "VARIANTS", "Variant", "rescale_", "shrink_",
    "insensitivity", "Masks", "prunable_names", "search_threshold", "search_and_prune", "prune_schedule",
    "PRUNE_SCHEDULES", "PruneConfig", "PruneContext",
]
