"""Model registry: a name maps to a factory ``(num_classes, input_shape) -> nn.Module``; and
``model=torchvision``, ``timm`` or ``custom`` for any other classifier (``external.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from sensreg.errors import UnknownName

from .external import EXTERNAL, UnknownModel
from .lenet import lenet5, lenet300
from .resnet import resnet18, resnet20, resnet32, resnet50, resnet56, resnet101
from .vgg import vgg16, vgg16_cifar

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet300": lenet300,
    "lenet5": lenet5,
    # ImageNet (torchvision architectures)
    "vgg16": vgg16,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "resnet101": resnet101,
    # CIFAR (32x32 inputs)
    "vgg16_cifar": vgg16_cifar,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
}


# The learning rates that differ from an optimizer's own default on a network, where optim.lr is
# left at null (run/optimizers.py: Optimizer.default_lr; docs/tuning.md "Default learning rates").
NETWORK_LR: dict[tuple[str, str], float] = {
    # SGD at 0.05 (Nesterov, momentum 0.9, batch 100) took LeNet-5 without a regularizer to
    # inf within 50 steps for some seeds; 0.02 is what its presets train at.
    ("lenet5", "sgd"): 0.02,
    # VGG-16 without batch norm: 0.05 is five times the rate torchvision's recipe trains it at.
    ("vgg16", "sgd"): 0.01,
}


def build_model(name: str, num_classes: int, input_shape: tuple[int, ...], arch: str | None = None,
                factory: str | None = None, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """The registered model ``name``, or for ``torchvision``, ``timm`` and ``custom`` the network
    ``arch`` or ``factory`` names, built with ``kwargs``; an unknown name is an error listing
    the known ones (``UnknownModel`` for the outside ones)."""
    if name in EXTERNAL:
        builder, key = EXTERNAL[name]
        named = arch if key == "arch" else factory
        if not named:
            raise UnknownModel(f"model={name} needs model.{key} (e.g. {EXAMPLES[name]})")
        return builder(num_classes, tuple(input_shape), named, **(kwargs or {}))
    if name not in MODELS:
        raise UnknownName(f"unknown model {name!r}; known: {', '.join([*MODELS, *EXTERNAL])}")
    return MODELS[name](num_classes=num_classes, input_shape=tuple(input_shape))


EXAMPLES = {"torchvision": "model.arch=mobilenet_v3_small", "timm": "model.arch=resnet18",
            "custom": "model.factory=mypkg.nets:small_cnn"}


def model_options(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """build_model's keyword arguments from a saved config's ``model`` section (one written
    before model.arch existed has none of them)."""
    return {"arch": model_cfg.get("arch"), "factory": model_cfg.get("factory"),
            "kwargs": dict(model_cfg.get("kwargs") or {})}
