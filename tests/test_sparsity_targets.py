"""Which parameters are prunable."""

from __future__ import annotations

import pytest
from torch import nn

from underbudget import sparsity
from underbudget.errors import ConfigError


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.block = nn.Sequential(nn.Conv1d(4, 4, 1), nn.ConvTranspose2d(4, 4, 2))
        self.emb = nn.Embedding(5, 4)
        self.head = nn.Linear(4, 2)


def test_default_targets_are_conv_and_linear_weights():
    names = list(sparsity.prunable_parameters(Net()))
    assert names == ["stem.weight", "block.0.weight", "block.1.weight", "head.weight"]


def test_exclude_first_last_and_patterns():
    net = Net()
    assert list(sparsity.prunable_parameters(net, exclude_first=True, exclude_last=True)) == [
        "block.0.weight",
        "block.1.weight",
    ]
    assert list(sparsity.prunable_parameters(net, exclude="block.*")) == [
        "stem.weight",
        "head.weight",
    ]
    assert list(
        sparsity.prunable_parameters(net, include=["emb.weight", r"re:block\.\d\.weight"])
    ) == [
        "block.0.weight",
        "block.1.weight",
        "emb.weight",
    ]


def test_targets_forms_and_errors():
    net = Net()
    masks = sparsity.MaskSet.from_model(net, {"exclude_last": True})
    assert "head.weight" not in masks and "stem.weight" in masks
    masks = sparsity.MaskSet.from_model(net, ["head.*"])
    assert masks.names() == ["head.weight", "head.bias"]
    with pytest.raises(ConfigError, match="did you mean 'stem.weight'"):
        sparsity.prunable_parameters(net, include="stem.weigth")
    with pytest.raises(ConfigError, match="no prunable parameters"):
        sparsity.prunable_parameters(nn.Sequential(nn.BatchNorm1d(3)))
    with pytest.raises(ConfigError, match="exclude_frist"):
        sparsity.as_targets({"exclude_frist": True})


def test_prune_respects_targets():
    net = Net()
    masks = sparsity.prune(net, 0.5, targets={"exclude_first": True})
    assert "stem.weight" not in masks
    assert bool((net.stem.weight != 0).all())
