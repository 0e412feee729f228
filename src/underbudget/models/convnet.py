"""A small conv-BN-ReLU network for fast CPU demos and tests."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from underbudget.models.registry import register_model
from underbudget.models.validate import check_float, check_ints, check_positive
from underbudget.models.weight_init import init_weights


class ConvNet(nn.Module):
    """Per width: 3x3 conv - BN - ReLU - 2x2 max-pool (while the map is >= 2x2); then
    global average pooling, optional dropout and a linear head ``fc``."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        widths: Sequence[int] = (32, 64, 128),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, side = in_channels, image_size
        for width in widths:
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            if side >= 2:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.pool(self.features(x)))
        return self.fc(self.dropout(x))


@register_model("convnet")
def convnet(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    widths: Sequence[int] = (32, 64, 128),
    width: float = 1.0,
    dropout: float = 0.0,
) -> ConvNet:
    """Small ConvNet; ``widths`` per stage, all scaled by the multiplier ``width``."""
    widths = check_ints("convnet", "widths", widths)
    scale = check_positive("convnet", "width", width)
    return ConvNet(
        num_classes,
        in_channels,
        image_size,
        widths=tuple(max(1, round(w * scale)) for w in widths),
        dropout=check_float("convnet", "dropout", dropout, 0.0, 0.99),
    )
