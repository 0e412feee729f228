"""The prune() entry point: API, bad input and error messages."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from underbudget import sparsity
from underbudget.errors import ConfigError


def net():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


BATCH = [(torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))]


@pytest.mark.parametrize("density", [0, -0.1, 1.5, math.nan, "half", None])
def test_density_outside_unit_interval_is_refused(density):
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        sparsity.prune(net(), density)


def test_density_one_keeps_everything():
    model = net()
    masks = sparsity.prune(model, 1.0)
    assert masks.density() == 1.0


@pytest.mark.parametrize("criterion", ["snip", "grasp"])
def test_data_criteria_without_data_say_what_they_need(criterion):
    with pytest.raises(ConfigError, match=f"criterion '{criterion}' needs data"):
        sparsity.prune(net(), 0.5, criterion)


def test_taylor_and_synflow_without_inputs():
    with pytest.raises(ConfigError, match="'taylor' needs gradients"):
        sparsity.prune(net(), 0.5, "taylor")
    with pytest.raises(ConfigError, match="input_shape"):
        sparsity.prune(net(), 0.5, "synflow")
    masks = sparsity.prune(net(), 0.5, "synflow", input_shape=(1, 8, 8), iterations=2)
    assert masks.nonzeros() == round(0.5 * masks.numel())


def test_unknown_names_suggest_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'magnitude'"):
        sparsity.prune(net(), 0.5, "magnitud")
    with pytest.raises(ConfigError, match="did you mean 'global'"):
        sparsity.prune(net(), 0.5, scope="globl")
    with pytest.raises(ConfigError, match="no option 'temprature'"):
        sparsity.prune(net(), 0.5, "grasp", data=BATCH, temprature=2.0)


@pytest.mark.parametrize("criterion", ["magnitude", "random", "snip", "grasp", "taylor"])
@pytest.mark.parametrize("scope", ["global", "layerwise", "erk", "er"])
def test_every_criterion_and_scope_hits_the_count(criterion, scope):
    model = net()
    masks = sparsity.prune(model, 0.2, criterion, scope, data=BATCH)
    assert masks.nonzeros() == round(0.2 * masks.numel())
    for name, mask in masks.items():
        assert torch.all(model.get_parameter(name)[~mask] == 0)


def test_precomputed_scores_and_explicit_layer_densities():
    model = net()
    scores = {
        n: torch.arange(p.numel(), dtype=torch.float32).reshape(p.shape)
        for n, p in sparsity.prunable_parameters(model).items()
    }
    masks = sparsity.prune(model, 0.5, scores=scores)
    assert bool(masks["3.weight"].reshape(-1)[-1]) and not bool(masks["0.weight"].reshape(-1)[0])
    model = net()
    masks = sparsity.prune(model, 0.5, scope={"0.weight": 1.0, "3.weight": 0.25})
    assert masks.layer_densities() == {"0.weight": 1.0, "3.weight": 0.25}
