"""Standard initialisation (Kaiming for convs) and seeded construction of models."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from underbudget.utils.seeding import derive_seed

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)


def init_weights(model: nn.Module, zero_init_residual: bool = False) -> nn.Module:
    """Kaiming-normal (fan_out, ReLU) conv weights, unit/zero norms, zero conv biases.

    Linear layers keep PyTorch's default initialisation, as torchvision's ResNets do. With
    ``zero_init_residual`` every residual block zeroes the gamma of its last norm layer, so
    each block starts as the identity (Goyal et al. 2017).
    """
    for module in model.modules():
        if isinstance(module, _CONVS):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, _NORMS) and getattr(module, "weight", None) is not None:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    if zero_init_residual:
        for module in model.modules():
            last_norm = getattr(module, "last_norm", None)
            if callable(last_norm):
                nn.init.zeros_(last_norm().weight)
    return model


@contextlib.contextmanager
def seeded_init(seed: int | None, *keys: object) -> Iterator[None]:
    """Run the body with torch's RNG seeded from ``derive_seed(seed, *keys)``.

    The global RNG state is restored afterwards, so seeding a model's initialisation does not
    change any other random stream. With ``seed=None`` the body uses the global RNG as is.
    """
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, *keys))
        yield
