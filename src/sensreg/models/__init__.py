"""Model registry: a name maps to a factory ``(num_classes, input_shape) -> nn.Module``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .lenet import lenet5, lenet300

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet300": lenet300,
    "lenet5": lenet5,
}


def build_model(name: str, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """The registered model ``name``; an unknown name is an error listing the known ones."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name](num_classes=num_classes, input_shape=tuple(input_shape))
