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


def build_model(name: str, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """The registered model ``name``; an unknown name is an error listing the known ones."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name](num_classes=num_classes, input_shape=tuple(input_shape))
