"""Models from torchvision or timm by name ('torchvision:resnet18', 'timm:vit_tiny_patch16_224').

Both packages are optional and imported only here, when such a name is asked for.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from underbudget.errors import ConfigError, require, unknown
from underbudget.models.classifier import classifier_of, replace_classifier


def create_adapter_model(
    adapter: str,
    name: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    **kwargs: Any,
) -> nn.Module:
    """Build ``name`` from ``adapter`` ('torchvision' or 'timm') for num_classes/in_channels.

    Extra keyword arguments go to the library (e.g. ``weights='DEFAULT'`` for torchvision,
    ``pretrained=True`` for timm; those download only when asked).
    """
    if not name:
        raise ConfigError(
            f"model '{adapter}:' needs an architecture name, e.g. '{adapter}:resnet18'"
        )
    if adapter == "torchvision":
        model = _torchvision(name, **kwargs)
        adapt_input_channels(model, in_channels)
    else:
        model = _timm(name, num_classes, in_channels, **kwargs)
    _, head = classifier_of(model)
    if head.out_features != num_classes:
        replace_classifier(model, num_classes)
    return model


def _torchvision(name: str, **kwargs: Any) -> nn.Module:
    tv = require("torchvision", "vision", f"model 'torchvision:{name}'")
    choices = tv.models.list_models()
    if name not in choices:
        raise unknown("torchvision model", name, choices)
    try:
        return tv.models.get_model(name, **kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"model 'torchvision:{name}' rejected its options {kwargs}: {exc}"
        ) from None


def _timm(name: str, num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    timm = require("timm", "vision", f"model 'timm:{name}'")
    choices = timm.list_models()
    if name not in choices:
        raise unknown("timm model", name, choices)
    try:
        return timm.create_model(name, num_classes=num_classes, in_chans=in_channels, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"model 'timm:{name}' rejected its options {kwargs}: {exc}") from None


def adapt_input_channels(model: nn.Module, in_channels: int) -> None:
    """Rebuild the first Conv2d for ``in_channels`` inputs, if it has another number.

    Pretrained filters are averaged over their input channels and rescaled so that an image
    whose channels are all equal gets exactly the response it had before (a grey-scale image
    responds as its RGB copy did).
    """
    first = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is None or first[1].in_channels == in_channels:
        return
    name, old = first
    if old.groups != 1:
        raise ConfigError(
            f"cannot adapt grouped first conv {name!r} to {in_channels} input channels; "
            "convert the images to the model's channel count instead"
        )
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        mean = old.weight.mean(dim=1, keepdim=True) * (old.in_channels / in_channels)
        new.weight.copy_(mean.expand_as(new.weight))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)
