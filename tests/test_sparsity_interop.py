"""Round trips with torch.nn.utils.prune's weight_orig / weight_mask form."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from underbudget import sparsity
from underbudget.errors import ConfigError


def net():
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))


def test_export_then_import_round_trip():
    model = net()
    keys = list(model.state_dict())
    masks = sparsity.prune(model, 0.3)
    x = torch.randn(3, 2, 6, 6)
    ref = model(x)
    sparsity.to_torch_prune(model, masks)
    assert "0.weight_orig" in model.state_dict() and "0.weight_mask" in model.state_dict()
    assert torch.equal(model[0].weight_mask.bool(), masks["0.weight"])
    torch.testing.assert_close(model(x), ref)
    back = sparsity.from_torch_prune(model)
    assert list(model.state_dict()) == keys
    for n in masks:
        assert torch.equal(back[n], masks[n])
    torch.testing.assert_close(model(x), ref)


def test_import_from_torch_global_pruning():
    model = net()
    params = [(model[0], "weight"), (model[3], "weight")]
    torch_prune.global_unstructured(params, torch_prune.L1Unstructured, amount=0.75)
    torch_prune.l1_unstructured(model[3], "weight", amount=0.5)  # a PruningContainer
    expected = {"0.weight": model[0].weight_mask.bool(), "3.weight": model[3].weight_mask.bool()}
    masks = sparsity.from_torch_prune(model)
    assert masks.names() == ["0.weight", "3.weight"]
    for n, m in expected.items():
        assert torch.equal(masks[n], m)
        assert torch.all(model.get_parameter(n)[~m] == 0)
    assert isinstance(model[0].weight, nn.Parameter)


def test_import_without_masks_is_an_error():
    with pytest.raises(ConfigError, match="no torch.nn.utils.prune masks"):
        sparsity.from_torch_prune(net())
