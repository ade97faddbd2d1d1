"""Model registry: a name maps to a factory ``(num_classes, input_shape) -> nn.Module``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

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


# The learning rate an optimizer starts from when optim.lr is left at null: the optimizer's own
# default, unless the network needs another one (docs/tuning.md "Default learning rates").
OPTIMIZER_LR: dict[str, float] = {"sgd": 0.05, "adam": 1e-3}
NETWORK_LR: dict[tuple[str, str], float] = {
    # SGD at 0.05 (Nesterov, momentum 0.9, batch 100) took LeNet-5 without a regularizer to
    # inf within 50 steps for some seeds; 0.02 is what its presets train at.
    ("lenet5", "sgd"): 0.02,
    # VGG-16 without batch norm: 0.05 is five times the rate torchvision's recipe trains it at.
    ("vgg16", "sgd"): 0.01,
}


def default_lr(model: str, optimizer: str) -> float:
    """The learning rate of ``optimizer`` on the network ``model`` when optim.lr is not given."""
    return NETWORK_LR.get((model, optimizer), OPTIMIZER_LR[optimizer])


def build_model(name: str, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """The registered model ``name``; an unknown name is an error listing the known ones."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name](num_classes=num_classes, input_shape=tuple(input_shape))
