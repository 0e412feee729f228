"""Sparsity survives quantization-aware training: masks and LSQ QAT together, under SGD with
momentum and weight decay and under Adam, checked against the converted integer weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from underbudget.quant import convert
from underbudget.quant.in_training import prepare_for_training, weight_steps
from underbudget.quant.qat import QAT_LAYERS
from underbudget.sections import PrecisionConfig
from underbudget.sparsity import MaskedOptimizer, prune

BITS = 4
DENSITY = 0.3


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(6 * 8 * 8, 24), nn.ReLU(), nn.Linear(24, 3),
    )


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].sum(dim=(1, 2)) > 0).long() + (x[:, 0, 4:, :4].mean(dim=(1, 2)) > 0).long()
    return x, y


OPTIMIZERS = {
    "sgd-momentum-wd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=5e-3),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-3),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
}


def _train_sparse_qat(opt_name: str, keep_support: bool = True, steps: int = 25):
    net = _net()
    masks = prune(net, DENSITY, "magnitude", "global")
    before = {n: net.get_parameter(n).detach().clone() for n in masks}
    precision = PrecisionConfig(mode="qat", weight_bits=BITS, act_bits=BITS)
    net = prepare_for_training(net, precision, sparse=keep_support)
    opt = MaskedOptimizer(OPTIMIZERS[opt_name](net.parameters()), masks, net)
    x, y = _data()
    layers = {f"{n}.weight": m for n, m in net.named_modules() if isinstance(m, QAT_LAYERS)}
    for _ in range(steps):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        for name, mask in masks.items():  # after every step, in float and fake-quantized
            assert not net.get_parameter(name)[~mask].any()
            assert not layers[name].quantized_weight()[~mask].any()
            for state in opt.state[net.get_parameter(name)].values():
                if isinstance(state, torch.Tensor) and state.shape == mask.shape:
                    assert not state[~mask].any()  # momentum / Adam moments stay zero there
    return net, masks, before, opt


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_pruned_weights_stay_zero_and_density_survives_conversion(opt_name):
    net, masks, before, _ = _train_sparse_qat(opt_name)
    for name, mask in masks.items():  # training moved the kept weights
        assert not torch.equal(net.get_parameter(name).detach()[mask], before[name][mask])
    net.eval()
    x, _ = _data()
    qat_out = net(x).detach()
    steps = weight_steps(net)
    converted = convert(net)
    assert not any(isinstance(m, QAT_LAYERS) for m in converted.modules())
    torch.testing.assert_close(converted(x), qat_out, rtol=0, atol=0)
    total = kept = 0
    for name, mask in masks.items():
        w = converted.get_parameter(name).detach()
        step = steps[name].view(-1, *([1] * (w.dim() - 1)))
        codes = torch.round(w / step)  # the integer weights, counted directly
        torch.testing.assert_close(codes * step, w)
        qp = 2 ** (BITS - 1) - 1
        assert codes.abs().max() <= qp
        assert torch.equal(codes == 0, ~mask)  # zero code exactly where pruned
        for row in codes.reshape(codes.shape[0], -1):
            assert torch.unique(row).numel() <= 2**BITS
        total += codes.numel()
        kept += int((codes != 0).sum())
    assert kept / total == pytest.approx(masks.density(), abs=0)
    assert abs(kept / total - DENSITY) <= 1 / total


def test_without_keep_support_small_kept_weights_round_to_zero():
    """The control: plain LSQ rounding at 4 bits zeroes kept weights, so the converted density
    falls below the target; keep_support is what makes it equal."""
    net, masks, _, _ = _train_sparse_qat("sgd-momentum-wd", keep_support=False, steps=5)
    converted = convert(net)
    kept = sum(int(converted.get_parameter(n).count_nonzero()) for n in masks)
    assert kept < masks.nonzeros()
    for name, mask in masks.items():  # pruned weights are still exactly zero
        assert not converted.get_parameter(name)[~mask].any()


def test_adam_moves_zeroed_weights_without_the_masks():
    """Why the masks must be enforced: Adam with weight decay revives zeroed weights."""
    net = _net()
    masks = prune(net, DENSITY, "magnitude", "global")
    masks.apply(net)
    net = prepare_for_training(net, PrecisionConfig(mode="qat", weight_bits=BITS), sparse=True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, y = _data()
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    name = masks.names()[0]
    assert net.get_parameter(name)[~masks[name]].abs().sum() > 0
