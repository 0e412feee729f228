"""CIFAR ResNets (He et al. 2016, section 4.2): 6n+2 layers, three stages of 16/32/64 maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from underbudget.errors import ConfigError
from underbudget.models.registry import register_model
from underbudget.models.validate import check_bool, check_choice, check_int
from underbudget.models.weight_init import init_weights

SHORTCUTS = ("A", "B")
DEPTHS = (20, 32, 44, 56, 110)


class PadShortcut(nn.Module):
    """Option A: parameter-free shortcut; subsample by ``stride`` and zero-pad new channels."""

    def __init__(self, extra_channels: int, stride: int) -> None:
        super().__init__()
        self.extra_channels = extra_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


class CifarBasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a shortcut; ReLU after the sum."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.downsample = PadShortcut(planes - in_planes, stride)
            else:
                self.downsample = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes),
                )

    def last_norm(self) -> nn.BatchNorm2d:
        """The norm whose gamma zero-init turns this block into the identity."""
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class CifarResNet(nn.Module):
    """conv 3x3 - three stages of n basic blocks (widths w, 2w, 4w) - global pool - ``fc``."""

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_channels: int = 3,
        shortcut: str = "A",
        width: int = 16,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, ...), got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        planes = width
        stages = []
        for index, out_planes in enumerate((width, 2 * width, 4 * width)):
            stride = 1 if index == 0 else 2
            layers = []
            for b in range(blocks):
                block_stride = stride if b == 0 else 1
                layers.append(CifarBasicBlock(planes, out_planes, block_stride, shortcut))
                planes = out_planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(planes, num_classes)
        init_weights(self, zero_init_residual=zero_init_residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


def _build(
    name: str,
    depth: int,
    num_classes: int,
    in_channels: int,
    shortcut: str,
    width: int,
    zero_init_residual: bool,
) -> CifarResNet:
    return CifarResNet(
        depth=check_int(name, "depth", depth, minimum=8),
        num_classes=num_classes,
        in_channels=in_channels,
        shortcut=check_choice(name, "shortcut", shortcut, SHORTCUTS),
        width=check_int(name, "width", width),
        zero_init_residual=check_bool(name, "zero_init_residual", zero_init_residual),
    )


@register_model("resnet_cifar")
def resnet_cifar(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    depth: int = 20,
    shortcut: str = "A",
    width: int = 16,
    zero_init_residual: bool = False,
) -> CifarResNet:
    """CIFAR ResNet of any depth 6n+2; ``shortcut`` 'A' (zero-pad) or 'B' (1x1 projection)."""
    return _build(
        "resnet_cifar", depth, num_classes, in_channels, shortcut, width, zero_init_residual
    )


def _register_depth(depth: int) -> None:
    name = f"resnet{depth}"

    def builder(
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        shortcut: str = "A",
        width: int = 16,
        zero_init_residual: bool = False,
    ) -> CifarResNet:
        return _build(name, depth, num_classes, in_channels, shortcut, width, zero_init_residual)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"ResNet-{depth} for CIFAR ({(depth - 2) // 6} blocks per stage)."
    globals()[name] = register_model(name)(builder)


for _depth in DEPTHS:
    _register_depth(_depth)
