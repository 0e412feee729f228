"""Transfer wrappers around a source model: linear probe, full fine-tune, visual prompt.

Each wrapper works on a deep copy of the backbone by default (``copy=True``), so one source
variant can be transferred several times. The classifier of a backbone is found generically
as its LAST ``nn.Linear`` in module order. Build the optimizer from
``wrapper.trainable_parameters()``.
"""

from __future__ import annotations

import copy as copying
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from underbudget.errors import ConfigError
from underbudget.models.classifier import classifier_of
from underbudget.transfer.label_mapping import LabelMapper
from underbudget.utils.seeding import generator


def _replace(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``name`` inside ``model``; returns the (possibly new) root."""
    if not name:
        return new
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
    return model


def _freeze(model: nn.Module) -> nn.Module:
    model.requires_grad_(False)
    return model.eval()


def _like(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def new_head(
    in_features: int,
    num_classes: int,
    seed: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Linear:
    """A fresh ``nn.Linear`` head; ``seed`` draws its init (PyTorch's default bounds
    ``U(-1/sqrt(in), 1/sqrt(in))``) from a derived generator instead of the global RNG."""
    if num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes}")
    head = nn.Linear(in_features, num_classes)
    if seed is not None:
        gen = generator(seed, "head")
        bound = 1.0 / math.sqrt(in_features)
        with torch.no_grad():
            head.weight.uniform_(-bound, bound, generator=gen)
            head.bias.uniform_(-bound, bound, generator=gen)
    return head.to(device=device, dtype=dtype)


class LinearProbe(nn.Module):
    """Frozen backbone (always in eval mode) + a new trainable linear head on its features.

    Features are the input of the backbone's last ``nn.Linear`` (that layer is replaced by
    ``nn.Identity`` in the copy), or ``features(backbone, x)`` when given (with
    ``feature_dim``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        features: Callable[[nn.Module, Tensor], Tensor] | None = None,
        feature_dim: int | None = None,
        seed: int | None = None,
        copy: bool = True,
    ):
        super().__init__()
        if copy:
            backbone = copying.deepcopy(backbone)
        device, dtype = _like(backbone)
        if features is None:
            name, fc = classifier_of(backbone)
            feature_dim = fc.in_features
            backbone = _replace(backbone, name, nn.Identity())
        elif feature_dim is None:
            raise ConfigError("LinearProbe with a features callable needs feature_dim=<size>")
        self.backbone = _freeze(backbone)
        self._features = features
        self.head = new_head(feature_dim, num_classes, seed, device, dtype)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features of the frozen backbone."""
        if self._features is not None:
            return self._features(self.backbone, x)
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.flatten(self.features(x), 1))

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        self.backbone.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The head's parameters."""
        return list(self.head.parameters())


class FineTune(nn.Module):
    """Backbone copy whose last ``nn.Linear`` is replaced by a new head; all weights train.

    ``self.backbone`` keeps the source model's parameter names (so masks keyed by those names
    apply to it directly); the head lives at ``self.head_name`` inside it. Pruned weights stay
    zero only if masks are enforced during training (a mask callback).
    """

    def __init__(
        self, backbone: nn.Module, num_classes: int, seed: int | None = None, copy: bool = True
    ):
        super().__init__()
        if copy:
            backbone = copying.deepcopy(backbone)
        device, dtype = _like(backbone)
        name, fc = classifier_of(backbone)
        head = new_head(fc.in_features, num_classes, seed, device, dtype)
        self.backbone = _replace(backbone, name, head).requires_grad_(True)
        self.head_name = name

    @property
    def head(self) -> nn.Linear:
        """The new classifier (inside the backbone)."""
        return self.backbone.get_submodule(self.head_name) if self.head_name else self.backbone

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter."""
        return list(self.parameters())


def _channel_stats(values: Sequence[float] | Tensor, channels: int, what: str) -> Tensor:
    t = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
    if t.numel() not in (1, channels):
        raise ConfigError(
            f"{what} has {t.numel()} values but the prompt has {channels} channels; "
            f"give one value per channel"
        )
    return t.expand(channels).clone().view(1, channels, 1, 1)


class VisualPrompt(nn.Module):
    """Input reprogramming: ``mapper.map_logits(backbone(normalize(prompt(x))))``.

    ``x`` is the target image in [0, 1]; ``mean``/``std`` are the SOURCE normalization. The
    backbone (with its head) is frozen in eval mode; only the prompt's parameters train.
    """

    def __init__(
        self,
        backbone: nn.Module,
        prompt: nn.Module,
        mapper: LabelMapper,
        mean: Sequence[float] | Tensor,
        std: Sequence[float] | Tensor,
        copy: bool = True,
    ):
        super().__init__()
        if copy:
            backbone = copying.deepcopy(backbone)
        channels = int(getattr(prompt, "channels", len(torch.as_tensor(mean).reshape(-1))))
        std_t = _channel_stats(std, channels, "std")
        if (std_t <= 0).any():
            raise ConfigError("std values must be positive")
        device, _ = _like(backbone)
        self.backbone = _freeze(backbone)
        self.prompt = prompt.to(device)
        self.mapper = mapper.to(device)
        self.register_buffer("mean", _channel_stats(mean, channels, "mean").to(device))
        self.register_buffer("std", std_t.to(device))

    def normalize(self, z: Tensor) -> Tensor:
        """Source normalization ``(z - mean) / std``."""
        return (z - self.mean) / self.std

    def source_logits(self, x: Tensor) -> Tensor:
        """The frozen source model's logits on the prompted image."""
        return self.backbone(self.normalize(self.prompt(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.mapper.map_logits(self.source_logits(x))

    def train(self, mode: bool = True) -> VisualPrompt:
        super().train(mode)
        self.backbone.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The prompt's parameters."""
        return [p for p in self.prompt.parameters() if p.requires_grad]
