"""CIFAR-style VGG with batch norm (Simonyan & Zisserman 2015; conv-BN-ReLU stacks)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from underbudget.models.registry import register_model
from underbudget.models.validate import check_float, check_int
from underbudget.models.weight_init import init_weights

CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg11_bn": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13_bn": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16_bn": (
        64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
    ),
    "vgg19_bn": (
        64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
    ),
}  # fmt: skip


class VGG(nn.Module):
    """``features`` (3x3 conv-BN-ReLU, 'M' = 2x2 max-pool) - global average pool - ``classifier``.

    Pooling adapts to the input size: a max-pool is skipped once the map is 1x1, so 8x8 or
    16x16 inputs work. The global average pool makes the classifier the same for any input
    size: ``Linear(c, hidden) - ReLU - Dropout - Linear(hidden, classes)``, or one Linear
    when ``hidden`` is 0.
    """

    def __init__(
        self,
        config: Sequence[int | str],
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        hidden: int = 512,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, side = in_channels, image_size
        for item in config:
            if item == "M":
                if side >= 2:
                    layers.append(nn.MaxPool2d(2))
                    side //= 2
                continue
            layers += [
                nn.Conv2d(channels, int(item), 3, padding=1, bias=False),
                nn.BatchNorm2d(int(item)),
                nn.ReLU(inplace=True),
            ]
            channels = int(item)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        if hidden > 0:
            self.classifier = nn.Sequential(
                nn.Linear(channels, hidden),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(hidden, num_classes),
            )
        else:
            self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def _register(name: str) -> None:
    def builder(
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        hidden: int = 512,
        dropout: float = 0.0,
    ) -> VGG:
        return VGG(
            CONFIGS[name],
            num_classes,
            in_channels,
            image_size,
            hidden=check_int(name, "hidden", hidden, minimum=0),
            dropout=check_float(name, "dropout", dropout, 0.0, 0.99),
        )

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"{name.upper()} for small images; classifier hidden width ``hidden``."
    globals()[name] = register_model(name)(builder)


for _name in CONFIGS:
    _register(_name)
