"""Classifiers from outside sensreg's registry: any torchvision or timm classification model by
its name in that library's own registry, and a user's own module by its factory function.

    model=torchvision model.arch=mobilenet_v3_small      # torchvision.models.get_model
    model=timm model.arch=resnet18                       # timm.create_model (the timm extra)
    model=custom model.factory=mypkg.nets:small_cnn      # a function of yours
    +model.kwargs.image_size=32                          # keyword arguments of any of them

Each is built untrained (no downloaded weights: pretrained weights come from ``trainer.init``)
with the dataset's number of classes. A name the library does not know, or a factory that
cannot be imported, is one message naming the closest names, before any training.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn


class UnknownModel(ValueError):
    """A model.arch or model.factory that names nothing; the message says what would."""


def _close(name: str, known: list[str], what: str) -> str:
    near = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    return f"closest: {', '.join(near)}" if near else f"{len(known)} {what} are known"


def torchvision_names() -> list[str]:
    """torchvision's classification models (the top-level registry: no detection or
    segmentation models, whose outputs are not class scores)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


class RepeatChannels(nn.Module):
    """A network made for colour images, given grayscale ones: the one channel repeated three
    times, as torchvision's ``Grayscale(num_output_channels=3)`` does. Its parameters are the
    network's, under ``net.``."""

    def __init__(self, net: nn.Module, channels: int = 3):
        super().__init__()
        self.net, self.channels = net, channels

    def forward(self, x):
        return self.net(x.expand(-1, self.channels, *x.shape[2:]))


def torchvision_model(num_classes: int, input_shape: tuple[int, ...], arch: str, **kwargs: Any) -> nn.Module:
    """torchvision's ``arch``; on one-channel images (MNIST) behind ``RepeatChannels``, as every
    torchvision classification model takes three."""
    import torchvision

    if arch not in torchvision_names():
        raise UnknownModel(f"model.arch={arch} is no torchvision classification model "
                           f"({_close(arch, torchvision_names(), 'models')}; "
                           f"torchvision.models.list_models() lists them)")
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    return RepeatChannels(model) if input_shape and input_shape[0] == 1 else model


def timm_names() -> list[str]:
    import timm

    return timm.list_models()


def timm_model(num_classes: int, input_shape: tuple[int, ...], arch: str, **kwargs: Any) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise UnknownModel("model=timm needs the timm package: pip install -e '.[timm]'") from None
    if arch not in timm_names():
        raise UnknownModel(f"model.arch={arch} is no timm model ({_close(arch, timm_names(), 'models')}; "
                           f"timm.list_models() lists them)")
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=input_shape[0], **kwargs)


def factory_of(path: str) -> Callable[..., nn.Module]:
    """The function named ``package.module:function``."""
    module_name, sep, function = path.partition(":")
    if not sep or not module_name or not function:
        raise UnknownModel(f"model.factory={path} is not of the form package.module:function")
    if os.getcwd() not in sys.path:  # a module beside the command, as `python -m` would find it
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UnknownModel(f"model.factory={path}: module {module_name} cannot be imported ({err}); "
                           f"install it, run from the folder that holds it, or put that folder on "
                           f"PYTHONPATH") from None
    found = getattr(module, function, None)
    if not callable(found):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise UnknownModel(f"model.factory={path}: module {module_name} has no function {function} "
                           f"({_close(function, names, 'functions')})")
    return found


def factory_root(path: str | None) -> str | None:
    """The folder on sys.path from which the module of ``model.factory`` was imported (the one
    holding user_nets.py, or the package mypkg/), None where it is not imported or has no file."""
    module_name = (path or "").partition(":")[0]
    file = getattr(sys.modules.get(module_name), "__file__", None)
    if not file:
        return None
    where = Path(file).resolve()
    depth = module_name.count(".") + (where.name == "__init__.py")
    return str(where.parents[depth])


def custom_model(num_classes: int, input_shape: tuple[int, ...], factory: str, **kwargs: Any) -> nn.Module:
    """``factory(**kwargs)``, given ``num_classes`` and ``input_shape`` too where it takes them."""
    build = factory_of(factory)
    try:
        accepted = inspect.signature(build).parameters
    except (TypeError, ValueError):  # a builtin or C function: give it the keyword arguments only
        accepted = {}
    given = {k: v for k, v in (("num_classes", num_classes), ("input_shape", tuple(input_shape)))
             if k in accepted and k not in kwargs}
    model = build(**given, **kwargs)
    if not isinstance(model, nn.Module):
        raise UnknownModel(f"model.factory={factory} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


# model.name -> (builder, the model.* key that names the network)
EXTERNAL: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "torchvision": (torchvision_model, "arch"),
    "timm": (timm_model, "arch"),
    "custom": (custom_model, "factory"),
}
