"""VGG-16: torchvision's ImageNet network and the batch-norm variant used on CIFAR."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

# Output channels of the 13 conv layers of VGG-16 (configuration D), one list per stage;
# every stage ends in a 2x2 max-pool.
_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def _check_side(name: str, input_shape: tuple[int, ...], smallest: int) -> None:
    # Five 2x2 max-pools: anything smaller than 32x32 ends in an empty feature map, which
    # torch reports deep inside the forward pass; say it at construction instead.
    if len(input_shape) != 3 or min(input_shape[1:]) < smallest:
        raise ValueError(f"{name} needs (channels, height, width) inputs of at least "
                         f"{smallest}x{smallest}, got {tuple(input_shape)}")


def vgg16(num_classes: int = 1000, input_shape: tuple[int, ...] = (3, 224, 224)) -> nn.Module:
    """torchvision's VGG-16 (configuration D, no batch norm), randomly initialized.

    138,357,544 parameters with 1000 classes. torchvision's layer names are kept so that its
    state dicts load unchanged. The adaptive 7x7 average pool before the classifier accepts any
    input of at least 32x32; 3 input channels only.
    """
    _check_side("vgg16", input_shape, 32)
    if input_shape[0] != 3:
        raise ValueError(f"vgg16 takes 3-channel inputs, got {tuple(input_shape)}")
    import torchvision  # here, not at the top: importing it adds ~1.5 s to every command

    return torchvision.models.vgg16(weights=None, num_classes=num_classes)


def vgg16_cifar(num_classes: int = 10, input_shape: tuple[int, ...] = (3, 32, 32)) -> nn.Module:
    """VGG-16 for 32x32 inputs: the 13 conv layers of VGG-16 (3x3, padding 1, with bias), each
    followed by batch norm and ReLU, a 2x2 max-pool after each of the five stages, then a single
    linear classifier on the 512 features that remain (no hidden fully connected layers, no
    dropout). This is the common CIFAR variant with a one-layer classifier, as in the CIFAR
    experiments of the LOBSTER authors; 14,728,266 parameters for CIFAR-10.

    Larger inputs work too: the classifier then reads 512 * (H // 32) * (W // 32) features.
    Initialization follows torchvision's VGG (Kaiming-normal convs, unit batch norm, N(0, 0.01)
    classifier).
    """
    _check_side("vgg16_cifar", input_shape, 32)
    channels, height, width = input_shape
    layers: list[tuple[str, nn.Module]] = []
    for stage, widths in enumerate(_STAGES, start=1):
        for i, out in enumerate(widths, start=1):
            layers += [(f"conv{stage}_{i}", nn.Conv2d(channels, out, 3, padding=1)),
                       (f"bn{stage}_{i}", nn.BatchNorm2d(out)),
                       (f"relu{stage}_{i}", nn.ReLU(inplace=True))]
            channels = out
        layers.append((f"pool{stage}", nn.MaxPool2d(2)))
    model = nn.Sequential(OrderedDict([
        *layers,
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(channels * (height // 32) * (width // 32), num_classes)),
    ]))
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
    return model
