"""LSQ quantization-aware training: STE gradients, step init, training, conversion, masks."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from underbudget.errors import ConfigError
from underbudget.quant import (
    ActivationQuantizer,
    QuantConv2d,
    QuantLinear,
    convert,
    lsq_fake_quantize,
    prepare_qat,
)


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3)
    )


def test_lsq_gradients_match_hand_formula():
    x = torch.tensor([-2.0, -0.7, -0.1, 0.0, 0.25, 0.44, 0.8, 1.5], requires_grad=True)
    step = torch.tensor(0.3, requires_grad=True)
    g = torch.tensor(0.5)
    qn = qp = 3
    out = lsq_fake_quantize(x, step, g, qn, qp)
    c = torch.linspace(-1.0, 2.0, x.numel())
    (out * c).sum().backward()
    v = x.detach() / 0.3
    expected_out = torch.clamp(torch.round(v), -qn, qp) * 0.3
    torch.testing.assert_close(out.detach(), expected_out)
    inside = (v >= -qn) & (v <= qp)
    torch.testing.assert_close(x.grad, c * inside.float())
    ds = torch.where(v < -qn, -float(qn), torch.where(v > qp, float(qp), torch.round(v) - v))
    torch.testing.assert_close(step.grad, 0.5 * (c * ds).sum())


def test_step_init_and_gradient_scale_ignore_pruned_weights():
    lin = nn.Linear(20, 10)
    with torch.no_grad():
        lin.weight[:, ::2] = 0
    q = QuantLinear.from_float(lin, bits=4)
    qp = 7
    w = lin.weight.detach()
    nz = w[w != 0].abs()
    assert q.weight_quantizer.step.item() == pytest.approx(2 * float(nz.mean()) / math.sqrt(qp))
    assert float(q.weight_quantizer.grad_scale) == pytest.approx(1 / math.sqrt(nz.numel() * qp))
    pc = QuantLinear.from_float(lin, bits=4, per_channel=True)
    row = w[3][w[3] != 0].abs()
    assert pc.weight_quantizer.step[3].item() == pytest.approx(2 * float(row.mean()) / math.sqrt(7))
    assert float(pc.weight_quantizer.grad_scale[3]) == pytest.approx(1 / math.sqrt(10 * 7))


def test_prepare_keeps_parameter_names_and_objects():
    model = _net()
    conv_w, lin_b = model[0].weight, model[3].bias
    names = set(dict(model.named_parameters()))
    prepared = prepare_qat(model, 4, activations=True)
    assert prepared is model
    assert isinstance(model[0], QuantConv2d) and isinstance(model[3], QuantLinear)
    assert isinstance(model[0], nn.Conv2d)
    assert model[0].weight is conv_w and model[3].bias is lin_b
    new = set(dict(model.named_parameters())) - names
    assert names <= set(dict(model.named_parameters()))
    assert new == {
        "0.weight_quantizer.step",
        "0.input_quantizer.step",
        "3.weight_quantizer.step",
        "3.input_quantizer.step",
    }


def test_gradients_reach_weights_and_steps():
    model = prepare_qat(_net(), 3, activations=True)
    out = model(torch.randn(4, 2, 5, 5))
    out.pow(2).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_a_few_steps_reduce_loss_on_a_toy_problem():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(128, 8, generator=gen)
    teacher = torch.randn(8, 3, generator=gen)
    y = x @ teacher
    model = prepare_qat(nn.Linear(8, 3), 4, activations=True)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    losses = []
    for _ in range(40):
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


@pytest.mark.parametrize("activations,per_channel", [(False, False), (True, False), (True, True)])
def test_convert_reproduces_the_qat_forward(activations, per_channel):
    model = prepare_qat(_net(), 4, activations=activations, per_channel=per_channel)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):
        loss = model(torch.randn(8, 2, 5, 5)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x = torch.randn(6, 2, 5, 5)
    with torch.no_grad():
        ref = model(x)
        steps = [model[i].weight_quantizer.effective_step().clone() for i in (0, 3)]
    plain = convert(model)
    assert type(plain[0]) is nn.Conv2d and type(plain[3]) is nn.Linear
    assert isinstance(getattr(plain[3], "input_quantizer", None), ActivationQuantizer) == (
        activations
    )
    with torch.no_grad():
        assert torch.equal(plain(x), ref)
    for i, s in zip((0, 3), steps):
        w = plain[i].weight.detach()
        codes = w / s.view(-1, *([1] * (w.dim() - 1))) if per_channel else w / s
        assert torch.allclose(codes, codes.round(), atol=1e-4)
        assert codes.round().abs().max() <= 7


def test_pruned_weights_stay_zero_through_qat_and_convert():
    model = _net()
    masks = {}
    for name in ("0", "3"):
        layer = model.get_submodule(name)
        masks[name] = torch.rand_like(layer.weight) > 0.5
        with torch.no_grad():
            layer.weight.mul_(masks[name])
    model = prepare_qat(model, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(5):
        model(torch.randn(4, 2, 5, 5)).pow(2).mean().backward()
        for name, mask in masks.items():
            model.get_submodule(name).weight.grad.mul_(mask)
        opt.step()
        opt.zero_grad()
    for name, mask in masks.items():
        assert (model.get_submodule(name).quantized_weight()[~mask] == 0).all()
    convert(model)
    for name, mask in masks.items():
        w = model.get_submodule(name).weight
        assert (w[~mask] == 0).all() and (w[mask] != 0).any()


def test_convert_before_any_forward_is_a_clear_error():
    model = prepare_qat(_net(), 4, activations=True)
    with pytest.raises(ConfigError, match="forward pass"):
        convert(model)
    assert isinstance(convert(prepare_qat(_net(), 4)).get_submodule("0"), nn.Conv2d)


def test_state_dict_round_trip_restores_steps_and_signs():
    a = prepare_qat(_net(), 3, activations=True)
    a(torch.randn(4, 2, 5, 5))
    b = prepare_qat(copy.deepcopy(_net()), 3, activations=True)
    b.load_state_dict(a.state_dict())
    a.eval()
    b.eval()
    x = torch.randn(2, 2, 5, 5)
    assert torch.equal(a(x), b(x))
    assert b[3].input_quantizer.qn == 0  # post-ReLU input: unsigned grid restored


def test_root_layer_and_unknown_layer_names():
    root = prepare_qat(nn.Linear(3, 2), 8)
    assert isinstance(root, QuantLinear)
    assert type(convert(root)) is nn.Linear
    with pytest.raises(ConfigError, match="choose one of: 0, 3"):
        prepare_qat(_net(), 4, layers=["1"])
    with pytest.raises(ConfigError, match="from 2 to 16"):
        prepare_qat(_net(), 0)
