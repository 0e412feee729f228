"""Models from torchvision or timm by name ('torchvision:resnet18', 'timm:vit_tiny_patch16_224').

Both packages are optional (``pip install 'underbudget[vision]'``) and imported only here,
when such a name is asked for. torchvision's compiled operators only load beside the torch
release they were built for: torch 2.x pairs with torchvision 0.(x+15) (2.5 with 0.20, 2.13
with 0.28), and timm imports torchvision. A mismatch is reported at import with the fitting
release.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from typing import Any

import torch
from torch import nn

from underbudget.errors import ConfigError, MissingDependencyError, require, unknown
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


def _release(version: str) -> tuple[int, int] | None:
    """``'2.13.0+cpu'`` → ``(2, 13)``; None when the version does not parse."""
    parts = version.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def torchvision_for(torch_version: str | None = None) -> str | None:
    """The torchvision release series that fits a torch 2.x version (``'0.28'`` for 2.13)."""
    release = _release(torch_version or torch.__version__)
    if release is None or release[0] != 2:
        return None
    return f"0.{release[1] + 15}"


def vision_install_hint(torch_version: str | None = None) -> str:
    """How to install the torchvision that fits this torch without replacing torch."""
    version = torch_version or torch.__version__
    fit = torchvision_for(version)
    if fit is None:
        return "install the torchvision release built for your torch"
    base, _, local = version.partition("+")
    wheels = re.fullmatch(r"cpu|cu\d+|rocm[\d.]+|xpu", local)  # PyTorch's own wheel indexes
    index = f" --index-url https://download.pytorch.org/whl/{local}" if wheels else ""
    return (f"torch {base} needs torchvision {fit}.x: "
            f"pip install 'torchvision=={fit}.*' 'torch=={base}'{index}")


def check_torchvision_pairing(tv_version: str, torch_version: str | None = None,
                              purpose: str = "torchvision") -> None:
    """Refuse a torchvision built for another torch release, naming the one that fits."""
    fit = torchvision_for(torch_version)
    have = _release(tv_version)
    if fit is None or have is None or f"{have[0]}.{have[1]}" == fit:
        return
    built = f" (built for torch 2.{have[1] - 15})" if have[0] == 0 and have[1] >= 15 else ""
    raise MissingDependencyError(
        f"{purpose} needs torchvision {fit}.x, but torchvision {tv_version}{built} is "
        f"installed beside torch {torch_version or torch.__version__}; "
        f"{vision_install_hint(torch_version)}"
    )


def _installed_hint() -> str:
    """The install hint, told whether the torchvision on disk already has the right version."""
    try:
        have = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        return vision_install_hint()
    release, fit = _release(have), torchvision_for()
    if fit is None or release is None or f"{release[0]}.{release[1]}" != fit:
        return f"torchvision {have} is installed; {vision_install_hint()}"
    return (f"torchvision {have} fits torch {torch.__version__} by version, so its binary was "
            "built against another build of torch: install torchvision from the same index "
            "as torch, or build it from source against this torch")


def import_vision(package: str, purpose: str) -> Any:
    """Import torchvision or timm for ``purpose``, checking that torchvision fits torch."""
    module = require(package, "vision", purpose, hint=_installed_hint())
    tv = sys.modules.get("torchvision")  # timm imports it too
    if tv is not None and isinstance(getattr(tv, "__version__", None), str):
        check_torchvision_pairing(tv.__version__, purpose=purpose)
    return module


def _torchvision(name: str, **kwargs: Any) -> nn.Module:
    tv = import_vision("torchvision", f"model 'torchvision:{name}'")
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
    timm = import_vision("timm", f"model 'timm:{name}'")
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
