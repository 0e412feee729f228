"""Extending underbudget from outside the package (docs/extending.md): a criterion, a schedule
shape and a model, each defined and registered here, then selected by name in a config."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from underbudget.config import load_config
from underbudget.errors import ConfigError
from underbudget.models import create_model, register_model
from underbudget.sparsity import (
    CRITERIA,
    MaskSet,
    progressive_densities,
    prune,
    register_criterion,
    register_shape,
)
from underbudget.sparsity.schedules import SHAPES


@register_criterion("last_inputs")
def last_inputs(model: nn.Module, masks: MaskSet) -> dict[str, torch.Tensor]:
    """Keep the weights reading the last input features (score = input index)."""
    out = {}
    for name in masks:
        w = model.get_parameter(name)
        cols = torch.arange(w.shape[-1], dtype=torch.float32)
        out[name] = cols.expand_as(w).clone()
    return out


@register_shape("halving")
def halving(d_start: float, d_final: float, frac: float) -> float:
    """Halve the way to d_final at each stage fraction (a made-up shape)."""
    return d_final + (d_start - d_final) * 0.5 ** (4 * frac)


@register_model("tiny_linear")
def tiny_linear(num_classes: int, in_channels: int, image_size: int, hidden: int = 4) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, hidden),
                         nn.ReLU(), nn.Linear(hidden, num_classes))


def test_a_registered_criterion_prunes_through_the_sparsity_section():
    cfg = load_config("tiny", ["sparsity.method=prune_at_init", "sparsity.criterion=last_inputs",
                               "sparsity.density=0.5", "sparsity.scope=layerwise"])
    assert CRITERIA[cfg.sparsity.criterion] is last_inputs
    model = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 2))
    masks = prune(model, cfg.sparsity.density, cfg.sparsity.criterion, cfg.sparsity.scope)
    for name, mask in masks.items():  # exactly the last half of the input columns survive
        cols = mask.shape[1]
        expected = torch.zeros_like(mask)
        expected[:, cols // 2:] = True
        assert torch.equal(mask, expected), name


def test_an_unknown_criterion_is_refused_with_the_closest_name():
    with pytest.raises(ConfigError, match="last_inputs"):
        load_config("tiny", ["sparsity.method=prune_at_init", "sparsity.criterion=last_input"])


def test_a_registered_shape_sets_the_anytime_densities():
    cfg = load_config("app-demo", ["method.shape=halving", "method.d_final=0.1"])
    assert SHAPES[cfg.method.shape] is halving
    T = 3
    a = cfg.method  # as the anytime method reads its section
    got = progressive_densities(T, d_start=a.d_start, d_final=a.d_final, shape=a.shape)
    d0 = cfg.method.d_start if cfg.method.d_start is not None else 0.8
    want = [0.1 + (d0 - 0.1) * 0.5 ** (4 * b / (T - 1)) for b in range(T)]
    want[-1] = 0.1
    assert got == pytest.approx(want, rel=1e-12)


def test_a_registered_model_is_built_from_the_model_section():
    cfg = load_config("tiny", ["model.name=tiny_linear", "model.kwargs={hidden: 3}"])
    model = create_model(cfg.model.name, num_classes=5, in_channels=1, image_size=4,
                         **cfg.model.kwargs)
    assert model[1].out_features == 3 and model[3].out_features == 5
    assert model(torch.zeros(2, 1, 4, 4)).shape == (2, 5)
    with pytest.raises(ConfigError, match="hidden"):
        create_model("tiny_linear", num_classes=5, in_channels=1, image_size=4, hiden=3)
