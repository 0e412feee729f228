"""One IMP level (sparsity.imp_step): prune the trained weights by magnitude, rewind the rest."""

from __future__ import annotations

import torch
from torch import nn

from underbudget.sparsity import imp_step


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def test_survivors_are_the_largest_trained_weights_rewound_to_the_saved_state():
    rewind = {k: v.clone() for k, v in _net(0).state_dict().items()}
    model = _net(1)  # the "trained" weights
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    masks = imp_step(model, 0.5, rewind)
    assert masks.names() == ["0.weight", "2.weight"]
    magnitudes = torch.cat([trained[k].abs().flatten() for k in masks.names()])
    cut = magnitudes.sort(descending=True).values[magnitudes.numel() // 2 - 1]
    state = model.state_dict()
    for key in masks.names():
        expected = trained[key].abs() >= cut  # global magnitude, independent of the library
        assert torch.equal(masks[key], expected)
        assert torch.equal(state[key], torch.where(expected, rewind[key], 0.0))
    for key in ("0.bias", "2.bias"):  # not pruned, rewound
        assert torch.equal(state[key], rewind[key])
    assert masks.density() == 0.5


def test_a_second_level_prunes_only_within_the_first_levels_masks():
    rewind = {k: v.clone() for k, v in _net(0).state_dict().items()}
    model = _net(1)
    first = imp_step(model, 0.5, rewind)
    before = first.copy()
    with torch.no_grad():  # "retrain" the survivors
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    first.apply(model)
    second = imp_step(model, 0.25, rewind, masks=first)
    assert second is first and second.density() == 0.25
    assert second.is_subset_of(before)
