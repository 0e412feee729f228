"""Parameter, nonzero, FLOP and byte counts on a hand-computed toy network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from underbudget import sparsity


def toy():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),  # 72 weights, 4 biases; 5x5 output
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(100, 3),  # 300 weights, 3 biases
    )


def sparse_toy():
    model = toy()
    conv = torch.zeros(72, dtype=torch.bool)
    conv[:18] = True
    fc = torch.zeros(300, dtype=torch.bool)
    fc[::10] = True
    masks = sparsity.MaskSet({"0.weight": conv.reshape(4, 2, 3, 3), "3.weight": fc.reshape(3, 100)})
    masks.apply(model)
    return model, masks


def test_dense_counts_by_hand():
    c = sparsity.cost(toy(), (2, 5, 5))
    conv_macs = 4 * 2 * 9 * 25  # every output position uses all 18 weights of its filter
    fc_macs = 300
    assert c["macs_dense"] == conv_macs + fc_macs
    # 2 FLOPs per multiply-add, one add per bias and output, ReLU one per element
    assert c["flops_dense"] == 2 * (conv_macs + fc_macs) + 4 * 25 + 3 + 100
    assert c["params"] == 72 + 4 + 300 + 3
    assert c["bytes_dense"] == 4 * (72 + 4 + 300 + 3)


def test_nonzero_aware_counts_by_hand():
    model, masks = sparse_toy()
    c = sparsity.cost(model, (2, 5, 5), masks)
    assert c["macs_nonzero"] == 18 * 25 + 30
    assert c["flops_nonzero"] == 2 * (18 * 25 + 30) + 100 + 3 + 100
    assert c["prunable"] == 372 and c["prunable_nonzeros"] == 48
    assert c["nonzeros"] == 48 + 7
    assert c["layers"]["0.weight"]["flops_nonzero"] == 2 * 18 * 25
    bits = 32
    # bitmask: values + one bit per position; CSR: values + int32 index, int32 row pointers
    assert c["bytes_bitmask"] == 18 * 4 + 9 + 30 * 4 + 38 + 4 * 7
    assert c["bytes_csr"] == 18 * (bits + 32) / 8 + 5 * 4 + 30 * 8 + 4 * 4 + 4 * 7
    assert c["bytes_sparse"] == min(18 * 4 + 9, 18 * 8 + 20) + min(30 * 4 + 38, 30 * 8 + 16) + 28


def test_masks_count_even_before_they_are_applied():
    model, masks = sparse_toy()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    assert sparsity.cost(model, (2, 5, 5), masks)["macs_nonzero"] == 18 * 25 + 30


def test_dense_conv_linear_flops_agree_with_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
        nn.Conv2d(8, 8, 3, groups=4, padding=2, dilation=2, bias=False),
        nn.ConvTranspose2d(8, 4, 2, stride=2, bias=False),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 6, bias=False),
    )
    x = torch.randn(1, 3, 8, 8)
    with FlopCounterMode(display=False) as counter:
        model(x)
    assert sparsity.cost(model, (3, 8, 8))["flops_dense"] == counter.get_total_flops()


def test_uncounted_modules_are_listed_and_training_flops():
    class Odd(nn.Module):
        def forward(self, x):
            return x * 2

    model = nn.Sequential(nn.Linear(4, 4), Odd())
    c = sparsity.cost(model, (4,))
    assert c["uncounted_modules"] == ["1"]
    assert sparsity.training_flops(100, 10) == 3000
    assert sparsity.training_flops(100, 10, factor=2) == 2000


def test_mask_report_fields():
    model, masks = sparse_toy()
    report = sparsity.mask_report(masks, model, input_shape=(2, 5, 5))
    assert report["density"] == pytest.approx(48 / 372)
    assert report["layer_densities"] == {"0.weight": 0.25, "3.weight": 0.1}
    assert report["nonzeros"] == 48
    assert report["flops_nonzero"] == sparsity.cost(model, (2, 5, 5), masks)["flops_nonzero"]
    assert report["density_all"] == pytest.approx((379 - 324) / 379)
