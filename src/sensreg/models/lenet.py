"""LeNet-300-100 and the Caffe variant of LeNet-5, the networks of the paper's MNIST results.

Layers are named (fc1, conv1, ...) so that per-layer reports read naturally.
"""

from __future__ import annotations

from collections import OrderedDict
from math import prod

from torch import nn


def lenet300(num_classes: int = 10, input_shape: tuple[int, ...] = (1, 28, 28)) -> nn.Module:
    """784-300-100-10 fully connected with ReLU: 266,610 parameters for MNIST."""
    return nn.Sequential(OrderedDict([
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(prod(input_shape), 300)), ("relu1", nn.ReLU()),
        ("fc2", nn.Linear(300, 100)), ("relu2", nn.ReLU()),
        ("fc3", nn.Linear(100, num_classes)),
    ]))


def lenet5(num_classes: int = 10, input_shape: tuple[int, ...] = (1, 28, 28)) -> nn.Module:
    """Caffe LeNet-5: conv 20@5x5, max-pool 2, conv 50@5x5, max-pool 2, fc 800-500, ReLU,
    fc 500-C. As in Caffe's example there is no nonlinearity after the convolutions.
    431,080 parameters for MNIST."""
    channels, height, width = input_shape
    side = lambda n: ((n - 4) // 2 - 4) // 2  # noqa: E731  two (5x5 valid conv, 2x2 pool) stages
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(channels, 20, 5)), ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(20, 50, 5)), ("pool2", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(50 * side(height) * side(width), 500)), ("relu1", nn.ReLU()),
        ("fc2", nn.Linear(500, num_classes)),
    ]))
