"""LeNet-5 (LeCun et al. 1998), adapted to any input size >= 8 and any number of channels."""

from __future__ import annotations

import torch
from torch import nn

from underbudget.errors import ConfigError
from underbudget.models.registry import register_model
from underbudget.models.validate import check_choice

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}
POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}
MIN_IMAGE_SIZE = 8


def lenet_geometry(image_size: int) -> tuple[int, int, int]:
    """Paddings of conv1 and conv2 and the side of the final feature map.

    32x32 input is the classic network (no padding, 16x5x5 features); smaller input pads
    conv1 by 2 (28x28 gives the usual MNIST LeNet-5, again 16x5x5); conv2 is padded only when
    its input is smaller than 10, so that tiny images (8x8 digits) still end in 2x2 maps.
    """
    if image_size < MIN_IMAGE_SIZE:
        raise ConfigError(
            f"model 'lenet5' needs image_size >= {MIN_IMAGE_SIZE}, got {image_size}; "
            "resize the images or use 'mlp'"
        )
    pad1 = 0 if image_size >= 32 else 2
    side = (image_size + 2 * pad1 - 4) // 2
    pad2 = 0 if side >= 10 else 2
    side = (side + 2 * pad2 - 4) // 2
    return pad1, pad2, side


class LeNet5(nn.Module):
    """conv(6, 5x5) - pool - conv(16, 5x5) - pool - fc 120 - fc 84 - fc classes."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        activation: str = "relu",
        pool: str = "max",
    ) -> None:
        super().__init__()
        pad1, pad2, side = lenet_geometry(image_size)
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=pad1)
        self.pool1 = POOLS[pool](2)
        self.conv2 = nn.Conv2d(6, 16, 5, padding=pad2)
        self.pool2 = POOLS[pool](2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        self.act = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act(self.conv1(x)))
        x = self.pool2(self.act(self.conv2(x)))
        x = self.act(self.fc1(self.flatten(x)))
        x = self.act(self.fc2(x))
        return self.fc3(x)


@register_model("lenet5")
def lenet5(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    activation: str = "relu",
    pool: str = "max",
) -> LeNet5:
    """LeNet-5 with ReLU and max-pooling by default (``activation='tanh', pool='avg'``: 1998)."""
    return LeNet5(
        num_classes,
        in_channels,
        image_size,
        activation=check_choice("lenet5", "activation", activation, ACTIVATIONS),
        pool=check_choice("lenet5", "pool", pool, POOLS),
    )
