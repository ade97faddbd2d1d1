"""ResNets: torchvision's ImageNet networks and the CIFAR ResNets of He et al. 2016 (sec. 4.2)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


# --- ImageNet (torchvision) -----------------------------------------------------------------------

def _torchvision_resnet(name: str, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    # The global average pool makes any spatial size work (32x32 ends in 1x1 feature maps);
    # only the stem fixes the number of input channels.
    if len(input_shape) != 3 or input_shape[0] != 3:
        raise ValueError(f"{name} takes (3, height, width) inputs, got {tuple(input_shape)}")
    import torchvision  # here, not at the top: importing it adds ~1.5 s to every command

    return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)


def resnet18(num_classes: int = 1000, input_shape: tuple[int, ...] = (3, 224, 224)) -> nn.Module:
    """torchvision's ResNet-18, randomly initialized: 11,689,512 parameters with 1000 classes."""
    return _torchvision_resnet("resnet18", num_classes, input_shape)


def resnet50(num_classes: int = 1000, input_shape: tuple[int, ...] = (3, 224, 224)) -> nn.Module:
    """torchvision's ResNet-50 (v1.5: stride in the 3x3 conv), randomly initialized:
    25,557,032 parameters with 1000 classes."""
    return _torchvision_resnet("resnet50", num_classes, input_shape)


def resnet101(num_classes: int = 1000, input_shape: tuple[int, ...] = (3, 224, 224)) -> nn.Module:
    """torchvision's ResNet-101 (v1.5), randomly initialized: 44,549,160 parameters with 1000
    classes."""
    return _torchvision_resnet("resnet101", num_classes, input_shape)


# --- CIFAR (He et al. 2016) -----------------------------------------------------------------------

class PadShortcut(nn.Module):
    """Option A shortcut: the identity, subsampled by ``stride`` and zero-padded with the new
    channels. It has no parameters, so it adds nothing to prune or to count."""

    def __init__(self, extra_channels: int, stride: int):
        super().__init__()
        self.extra_channels, self.stride = extra_channels, stride

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, 0, self.extra_channels))


class BasicBlock(nn.Module):
    """Two 3x3 conv + batch norm layers with a residual connection, ReLU after the sum."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = (PadShortcut(out_channels - in_channels, stride)
                         if stride != 1 or in_channels != out_channels else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """3x3 conv to 16 channels, three stages of ``blocks`` basic blocks with 16, 32 and 64
    channels (the second and third start with stride 2), global average pool, linear layer."""

    def __init__(self, blocks: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, channels = [], 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            stages.append(nn.Sequential(*[BasicBlock(channels if i == 0 else width, width,
                                                     stride if i == 0 else 1) for i in range(blocks)]))
            channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():  # He initialization, as in the paper (and torchvision)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(dim=(2, 3)))


def cifar_resnet(depth: int, num_classes: int = 10, input_shape: tuple[int, ...] = (3, 32, 32)) -> nn.Module:
    """The CIFAR ResNet of He et al. 2016 with ``depth`` = 6n + 2 layers (n blocks a stage).

    Shortcuts are option A of the paper, the one it uses on CIFAR: identity where the shape is
    unchanged, otherwise the identity subsampled by 2 and zero-padded to the new channel count,
    so all parameters are in the convolutions, batch norms and the final linear layer.
    Parameters for 10 classes: 269,722 (depth 20), 464,154 (32), 853,018 (56).
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"a CIFAR ResNet has depth 6n + 2 with n >= 1, got {depth}")
    if len(input_shape) != 3:
        raise ValueError(f"a CIFAR ResNet takes (channels, height, width) inputs, got {tuple(input_shape)}")
    return CifarResNet((depth - 2) // 6, num_classes, input_shape[0])


def resnet20(num_classes: int = 10, input_shape: tuple[int, ...] = (3, 32, 32)) -> nn.Module:
    """CIFAR ResNet-20 (3 blocks a stage, option A shortcuts): 269,722 parameters for 10 classes."""
    return cifar_resnet(20, num_classes, input_shape)


def resnet32(num_classes: int = 10, input_shape: tuple[int, ...] = (3, 32, 32)) -> nn.Module:
    """CIFAR ResNet-32 (5 blocks a stage, option A shortcuts): 464,154 parameters for 10 classes."""
    return cifar_resnet(32, num_classes, input_shape)


def resnet56(num_classes: int = 10, input_shape: tuple[int, ...] = (3, 32, 32)) -> nn.Module:
    """CIFAR ResNet-56 (9 blocks a stage, option A shortcuts): 853,018 parameters for 10 classes."""
    return cifar_resnet(56, num_classes, input_shape)
