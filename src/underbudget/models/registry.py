"""The model registry: build any architecture by name with ``create_model``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from underbudget.errors import ConfigError, closest, unknown
from underbudget.models.adapters import create_adapter_model
from underbudget.models.validate import check_int
from underbudget.models.weight_init import seeded_init

Builder = Callable[..., nn.Module]

_REGISTRY: dict[str, Builder] = {}
_BASE_ARGS = ("num_classes", "in_channels", "image_size")
ADAPTERS = ("timm", "torchvision")


def register_model(name: str, *, overwrite: bool = False) -> Callable[[Builder], Builder]:
    """Register a builder ``fn(num_classes, in_channels, image_size, **options) -> nn.Module``.

    The builder's keyword options (with their defaults) become the options users may pass to
    :func:`create_model`; anything else is refused with one clear error.
    """
    key = name.strip().lower()
    if not key or ":" in key:
        raise ConfigError(f"model name {name!r} must be non-empty and contain no ':'")

    def decorator(fn: Builder) -> Builder:
        if key in _REGISTRY and _REGISTRY[key] is not fn and not overwrite:
            raise ConfigError(
                f"model {key!r} is already registered; choose another name or pass overwrite=True"
            )
        _REGISTRY[key] = fn
        return fn

    return decorator


def list_models() -> list[str]:
    """Names of all registered architectures (adapters excluded), sorted."""
    return sorted(_REGISTRY)


def model_options(name: str) -> dict[str, Any]:
    """The options of a registered model and their defaults, e.g. for ``underbudget list``."""
    builder = _lookup(name)
    return {
        p.name: p.default for p in _options(builder) if p.default is not inspect.Parameter.empty
    }


def create_model(
    name: str,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    *,
    seed: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build model ``name`` for ``num_classes`` outputs on ``in_channels`` x ``image_size``² input.

    ``name`` is a registered architecture (see :func:`list_models`) or ``torchvision:NAME`` /
    ``timm:NAME`` when those packages are installed. ``seed`` makes the initialisation
    reproducible without touching the global RNG. Extra keyword arguments are the model's
    options (see :func:`model_options`).
    """
    if not isinstance(name, str):
        raise ConfigError(f"model name must be a string, got {name!r}")
    check_int(name, "num_classes", num_classes)
    check_int(name, "in_channels", in_channels)
    check_int(name, "image_size", image_size)
    prefix, sep, rest = name.strip().partition(":")
    if sep:
        adapter = prefix.strip().lower()
        if adapter not in ADAPTERS:
            raise unknown("model adapter", prefix, ADAPTERS)
        label = f"{adapter}:{rest.strip()}"
        with seeded_init(seed, "model-init", label):
            model = create_adapter_model(
                adapter, rest.strip(), num_classes, in_channels, image_size, **kwargs
            )
    else:
        label = name.strip().lower()
        builder = _lookup(label)
        _check_options(label, builder, kwargs)
        with seeded_init(seed, "model-init", label):
            model = builder(
                num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs
            )
    model.underbudget_name = label  # names the model in messages and saved metadata
    return model


def _lookup(name: str) -> Builder:
    key = name.strip().lower()
    if key not in _REGISTRY:
        err = unknown("model", name, list_models())
        raise ConfigError(f"{err} (or an adapter: 'torchvision:NAME', 'timm:NAME')")
    return _REGISTRY[key]


def _options(builder: Builder) -> list[inspect.Parameter]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = inspect.signature(builder).parameters.values()
    return [p for p in params if p.kind in kinds and p.name not in _BASE_ARGS]


def _check_options(name: str, builder: Builder, kwargs: dict[str, Any]) -> None:
    params = inspect.signature(builder).parameters.values()
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params):
        return
    valid = {p.name: p.default for p in _options(builder)}
    bad = [k for k in kwargs if k not in valid]
    if bad:
        listing = ", ".join(f"{k}={v!r}" for k, v in valid.items()) or "none"
        raise ConfigError(
            f"model {name!r} has no option {bad[0]!r}{closest(bad[0], valid)}; "
            f"valid options (with defaults): {listing}"
        )
