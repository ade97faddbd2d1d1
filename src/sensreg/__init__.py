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
  unspec, loss, neuron, l2, none) from one forward pass (``tape_for``: what that pass records
  for neuron and the sample reduction); ``rescale_`` brings S to the bound at 1.
- ``shrink_``: w <- w (1 - lam max(0, 1 - S)), in place.
- ``Masks``: pruned entries stay exactly zero (weights, gradients, momentum and Adam moments);
  ``prunable_names`` picks the parameters.
- ``search_and_prune`` and ``search_threshold``: the largest magnitude threshold that keeps the
  validation loss within a tolerance; ``prune_schedule`` builds the schedules the runner uses.
- ``compact``: the pruned network rebuilt without the neurons, filters and inputs that cannot
  change its output, a smaller dense network (``Compaction``: it, and its parameters and
  multiply-adds against the dense network's); ``csr_linears``: a copy whose linear layers hold
  their weights as CSR sparse matrices (faster at large batches, slower at batch 1).

Importing sensreg loads nothing until a name is used, then torch and that name's module only:
no Hydra, no console, no files. The
command line (``sensreg train ...``) lives in ``sensreg.commands``, the training runner in
``sensreg.run``.
"""

from importlib import import_module

__version__ = "0.1.0"

# Each public name and the module that defines it. They are imported when first used, so that
# the command line starts (and answers Ctrl-C) before torch has loaded.
_PUBLIC = {
    "SensitivityStep": "sensreg.method.step",
    "gradients_and_sensitivity": "sensreg.method.sensitivity", "VARIANTS": "sensreg.method.sensitivity",
    "Variant": "sensreg.method.sensitivity", "tape_for": "sensreg.method.sensitivity",
    "rescale_": "sensreg.method.regularizer", "shrink_": "sensreg.method.regularizer",
    "insensitivity": "sensreg.method.regularizer",
    "Masks": "sensreg.method.pruning", "prunable_names": "sensreg.method.pruning",
    "search_threshold": "sensreg.method.pruning",
    "search_and_prune": "sensreg.method.prune_schedules", "prune_schedule": "sensreg.method.prune_schedules",
    "PRUNE_SCHEDULES": "sensreg.method.prune_schedules", "PruneConfig": "sensreg.method.prune_schedules",
    "PruneContext": "sensreg.method.prune_schedules",
    "compact": "sensreg.method.compaction", "Compaction": "sensreg.method.compaction",
    "csr_linears": "sensreg.method.csr",
}

__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'sensreg' has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC[name]), name)
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
