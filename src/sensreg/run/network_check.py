"""The check that the configured network can train on the configured data: built on the meta
device (shapes only, no memory), it must accept the inputs, return one row of logits per
sample, fit in memory, and have what the sensitivity variant and the pruning schedule need."""

from __future__ import annotations

import torch

from sensreg.checks import memory_bytes
from sensreg.data import DATASETS, input_shape
from sensreg.errors import first_line
from sensreg.method.neuron import UnitError
from sensreg.method.per_sample import PerSampleError
from sensreg.method.prune_schedules import is_gradual, target_sparsity
from sensreg.method.pruning import prunable_names
from sensreg.method.sensitivity import VARIANTS, tape_for
from sensreg.models import EXTERNAL, UnknownModel, build_model


def network_problems(cfg) -> list[str]:
    """Why ``cfg``'s network cannot train on its data, as one sentence (an empty list where it can).

    The model must accept the dataset's inputs (VGG-16 needs at least 32x32, say). It is
    built on the meta device: shapes only, no memory, no initialization cost."""
    shape = input_shape(cfg.data.name, cfg.data.image_size, cfg.data.shape)
    # (A folder dataset's classes are known once its folder is read; the count only sizes the
    # last layer, which any count fits.)
    classes = getattr(DATASETS.get(cfg.data.name), "num_classes", None) or cfg.data.num_classes
    external = cfg.model.name in EXTERNAL
    name = f"model.name={cfg.model.name}" + (f" ({cfg.model.arch or cfg.model.factory})" if external else "")
    inputs = "x".join(map(str, shape))
    output = None
    try:
        with torch.device("meta"):
            model = build_model(cfg.model.name, classes, shape, **cfg.model.options())
    except UnknownModel as err:
        return [f"{err}."]
    except Exception as err:  # noqa: BLE001 - a factory's own failure, whatever it raises
        if not external and isinstance(err, (ValueError, RuntimeError, TypeError)):
            return [_cannot_train(cfg, name, inputs, err, shape, external)]  # (own networks check inputs as built)
        why = first_line(err)
        return [f"{name} could not be built with its settings ({classes} classes, inputs {inputs}): "
                f"{type(err).__name__}: {why}. Fix the model's factory or its settings (model.*)."]
    if external:
        try:
            with torch.device("meta"):
                output = model(torch.empty((2, *shape)))
        except Exception as err:  # noqa: BLE001 - whatever its forward raises on these inputs
            return [_cannot_train(cfg, name, inputs, err, shape, external)]
    problem = _network_problem(name, model, output, classes)
    if problem:
        return [problem]
    # Weights, gradients, the optimizer's state and the sensitivity: four copies at least.
    need = 4 * 4 * sum(param.numel() for param in model.parameters())
    have = memory_bytes()
    if have and need > have:
        return [f"model.name={cfg.model.name} with {classes} classes (data.num_classes) has "
                f"{need // 16:,} parameters, which need {need / 2**30:.3g} GiB to train, more than this "
                f"machine's {have / 2**30:.3g} GiB; use fewer classes or a smaller model."]
    if cfg.prune.name != "none" and not prunable_names(model, cfg.prune.params, cfg.prune.batchnorm):
        return [f"{name} has no parameter that prune.params={cfg.prune.params} may prune (all frozen, or "
                f"none of two or more dimensions), so prune={cfg.prune.name} would prune nothing. Set "
                f"prune.params=all, or prune=none."]
    if is_gradual(cfg.prune.name):
        names = prunable_names(model, cfg.prune.params, cfg.prune.batchnorm)
        params = dict(model.named_parameters())
        total = sum(params[n].numel() for n in names)
        kept = total - round(target_sparsity(cfg.prune.target) * total)
        if kept < len(names):  # every pruned tensor keeps at least its largest entry
            return [f"prune.target={cfg.prune.target} would keep {kept} of the network's {total:,} prunable "
                    f"parameters, fewer than one for each of its {len(names)} tensors: a target beyond "
                    f"the network. Give at most {total // len(names):,}x."]
    try:
        tape_for(VARIANTS[cfg.sens.name], model, [p for p in model.parameters() if p.requires_grad],
                 cfg.sens.reduction)
    except (PerSampleError, UnitError) as err:
        return [f"model.name={cfg.model.name}: {err}"]
    return []

def _cannot_train(cfg, name: str, inputs: str, err: BaseException, shape, external: bool) -> str:
    why = first_line(err, empty=type(err).__name__)
    hint = ""
    if cfg.model.name == "torchvision" and shape[0] not in (1, 3):
        hint = " (torchvision's classification models take 3-channel images, or 1-channel ones repeated)"
    elif external:
        hint = " (or set its inputs with +model.kwargs.KEY=VALUE)"
    return (f"{name} cannot train on data.name={cfg.data.name} (inputs {inputs}): {why}. Choose a model made "
            f"for this dataset{hint}.")


def _network_problem(name: str, model, output, classes: int | None) -> str | None:
    """What makes a built network untrainable: no trainable parameter, a layer of size zero, or
    an output (``output``, for a batch of 2; None where not run) that is not one row of
    float logits per sample and class."""
    params = dict(model.named_parameters())
    if not any(p.requires_grad for p in params.values()):
        return (f"{name} has no trainable parameter ({'all are frozen' if params else 'it has none'}): "
                f"there is nothing to train. Give a model with parameters that require gradients.")
    empty = [n for n, p in params.items() if p.numel() == 0]
    if empty:
        return (f"{name} has a layer of size zero ({', '.join(empty[:3])}: no entries), which cannot be trained "
                f"or pruned; check the widths the model is built with.")
    if output is None:
        return None
    expect = f"a tensor of shape (batch, {classes}) of float logits"
    if not isinstance(output, torch.Tensor):
        kind = type(output).__name__
        hint = (" (torchvision's googlenet and inception_v3 return one in training: build them with "
                "+model.kwargs.aux_logits=false)" if isinstance(output, tuple) else "")
        return (f"{name} returns a {kind}, not {expect}{hint}. Wrap the model so that its forward returns the "
                f"logits alone.")
    if not output.dtype.is_floating_point:
        return f"{name} returns {output.dtype} values, not {expect}; its forward must return the logits."
    if output.dim() != 2 or output.shape[0] != 2 or (classes is not None and output.shape[1] != classes):
        return (f"{name} returns shape {tuple(output.shape)} for a batch of 2, not (2, {classes}): the logits, "
                f"one row per sample and one column per class. Give the model num_classes={classes} "
                f"(a factory takes it as its first argument) or flatten its output.")
    return None
