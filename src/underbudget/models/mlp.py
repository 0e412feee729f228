"""A multilayer perceptron on flattened images (e.g. LeNet-300-100 for MNIST-like data)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from underbudget.models.registry import register_model
from underbudget.models.validate import check_choice, check_float, check_ints

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


class MLP(nn.Module):
    """Flatten, then ``Linear -> activation [-> dropout]`` per hidden size, then ``fc``."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (300, 100),
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:].numel() != self.in_features:
            raise ValueError(
                f"MLP expects inputs of {self.in_features} values per example, got "
                f"{tuple(x.shape[1:])}; build it with the right in_channels and image_size"
            )
        return self.fc(self.features(x))


@register_model("mlp")
def mlp(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    hidden: Sequence[int] = (300, 100),
    activation: str = "relu",
    dropout: float = 0.0,
) -> MLP:
    """MLP with hidden sizes ``hidden`` (default 300-100, as LeNet-300-100)."""
    return MLP(
        in_channels * image_size * image_size,
        num_classes,
        hidden=check_ints("mlp", "hidden", hidden, allow_empty=True),
        activation=check_choice("mlp", "activation", activation, ACTIVATIONS),
        dropout=check_float("mlp", "dropout", dropout, 0.0, 0.99),
    )
