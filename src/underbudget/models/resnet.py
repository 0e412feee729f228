"""ResNet-18/34/50 with torchvision's exact parameter and buffer names and shapes.

A torchvision checkpoint therefore loads with :func:`underbudget.models.load_weights` without
torchvision installed. ``stem='cifar'`` swaps the 7x7/2 conv and max-pool for one 3x3/1 conv
(the usual CIFAR variant); the names stay the same, only ``conv1.weight``'s shape changes.
"""

from __future__ import annotations

import torch
from torch import nn

from underbudget.models.registry import register_model
from underbudget.models.validate import check_bool, check_choice
from underbudget.models.weight_init import init_weights

STEMS = ("cifar", "imagenet")


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(in_planes, planes, stride)

    def last_norm(self) -> nn.BatchNorm2d:
        """The norm whose gamma zero-init turns this block into the identity."""
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 - 3x3 (strided, as torchvision's "ResNet v1.5") - 1x1 x4 (ResNet-50)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_planes, out_planes, stride)

    def last_norm(self) -> nn.BatchNorm2d:
        """The norm whose gamma zero-init turns this block into the identity."""
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _downsample(in_planes: int, out_planes: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class ResNet(nn.Module):
    """stem - layer1..layer4 (64, 128, 256, 512 planes) - global average pool - ``fc``."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        num_classes: int = 1000,
        in_channels: int = 3,
        stem: str = "imagenet",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.in_planes = 64
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(block, 64, layers[0], 1)
        self.layer2 = self._stage(block, 128, layers[1], 2)
        self.layer3 = self._stage(block, 256, layers[2], 2)
        self.layer4 = self._stage(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        init_weights(self, zero_init_residual=zero_init_residual)

    def _stage(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for index in range(blocks):
            layers.append(block(self.in_planes, planes, stride if index == 0 else 1))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def default_stem(image_size: int) -> str:
    """'cifar' for small images (<= 64 pixels), 'imagenet' for larger ones."""
    return "cifar" if image_size <= 64 else "imagenet"


def _build(name, block, layers, num_classes, in_channels, image_size, stem, zero_init_residual):
    stem = default_stem(image_size) if stem is None else check_choice(name, "stem", stem, STEMS)
    return ResNet(
        block,
        layers,
        num_classes=num_classes,
        in_channels=in_channels,
        stem=stem,
        zero_init_residual=check_bool(name, "zero_init_residual", zero_init_residual),
    )


@register_model("resnet18")
def resnet18(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    stem: str | None = None,
    zero_init_residual: bool = False,
) -> ResNet:
    """ResNet-18; ``stem`` 'cifar' or 'imagenet' (default: by image_size)."""
    return _build(
        "resnet18",
        BasicBlock,
        (2, 2, 2, 2),
        num_classes,
        in_channels,
        image_size,
        stem,
        zero_init_residual,
    )


@register_model("resnet34")
def resnet34(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    stem: str | None = None,
    zero_init_residual: bool = False,
) -> ResNet:
    """ResNet-34; ``stem`` 'cifar' or 'imagenet' (default: by image_size)."""
    return _build(
        "resnet34",
        BasicBlock,
        (3, 4, 6, 3),
        num_classes,
        in_channels,
        image_size,
        stem,
        zero_init_residual,
    )


@register_model("resnet50")
def resnet50(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    stem: str | None = None,
    zero_init_residual: bool = False,
) -> ResNet:
    """ResNet-50 (bottleneck blocks); ``stem`` 'cifar' or 'imagenet' (default: by image_size)."""
    return _build(
        "resnet50",
        Bottleneck,
        (3, 4, 6, 3),
        num_classes,
        in_channels,
        image_size,
        stem,
        zero_init_residual,
    )
