"""Wide ResNets (Zagoruyko & Komodakis 2016): pre-activation blocks, widths 16k/32k/64k."""

from __future__ import annotations

import torch
from torch import nn

from underbudget.errors import ConfigError
from underbudget.models.registry import register_model
from underbudget.models.validate import check_bool, check_float, check_int
from underbudget.models.weight_init import init_weights


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3 - BN-ReLU-dropout-conv3x3, plus a 1x1 conv shortcut when shapes change.

    As in the authors' code, the projection shortcut reads the pre-activated input.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def last_norm(self) -> nn.BatchNorm2d:
        """The norm whose gamma (and beta) zero-init turns this block into the identity."""
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return out + identity


class WideResNet(nn.Module):
    """WRN-depth-width: conv 3x3 (16) - 3 groups of (depth-4)/6 blocks - BN-ReLU - pool - ``fc``."""

    def __init__(
        self,
        depth: int = 28,
        width: int = 10,
        num_classes: int = 10,
        in_channels: int = 3,
        dropout: float = 0.0,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ConfigError(f"wide ResNet depth must be 6n+4 (10, 16, 22, 28, ...), got {depth}")
        blocks = (depth - 4) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        planes = 16
        groups = []
        for index, out_planes in enumerate((16 * width, 32 * width, 64 * width)):
            stride = 1 if index == 0 else 2
            layers = []
            for b in range(blocks):
                layers.append(PreActBlock(planes, out_planes, stride if b == 0 else 1, dropout))
                planes = out_planes
            groups.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = groups
        self.bn = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes, num_classes)
        init_weights(self, zero_init_residual=zero_init_residual)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = self.relu(self.bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _build(name, depth, width, num_classes, in_channels, dropout, zero_init_residual):
    return WideResNet(
        depth=check_int(name, "depth", depth, minimum=10),
        width=check_int(name, "width", width),
        num_classes=num_classes,
        in_channels=in_channels,
        dropout=check_float(name, "dropout", dropout, 0.0, 0.99),
        zero_init_residual=check_bool(name, "zero_init_residual", zero_init_residual),
    )


@register_model("wrn")
def wrn(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    depth: int = 28,
    width: int = 10,
    dropout: float = 0.0,
    zero_init_residual: bool = False,
) -> WideResNet:
    """WRN-``depth``-``width`` (depth 6n+4); ``dropout`` between a block's convs (paper: 0.3)."""
    return _build("wrn", depth, width, num_classes, in_channels, dropout, zero_init_residual)


@register_model("wrn28_10")
def wrn28_10(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    dropout: float = 0.0,
    zero_init_residual: bool = False,
) -> WideResNet:
    """WRN-28-10 (36.5 M parameters for 10 classes)."""
    return _build("wrn28_10", 28, 10, num_classes, in_channels, dropout, zero_init_residual)


@register_model("wrn16_8")
def wrn16_8(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    dropout: float = 0.0,
    zero_init_residual: bool = False,
) -> WideResNet:
    """WRN-16-8 (11.0 M parameters for 10 classes)."""
    return _build("wrn16_8", 16, 8, num_classes, in_channels, dropout, zero_init_residual)
