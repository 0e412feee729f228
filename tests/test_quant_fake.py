"""Post-training fake quantization: grids, error vs bits, zeros, activation calibration."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from underbudget.errors import ConfigError
from underbudget.quant import (
    ActivationQuantizer,
    activation_quantizers,
    attach_input_quantizer,
    calibrate,
    fake_quantize,
    insert_activation_quantizers,
    quantize_model,
    quantize_weights,
)


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 5),
    )


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_symmetric_per_channel_grid(bits):
    w = torch.randn(8, 3, 3, 3)
    q = fake_quantize(w, bits)
    qp = 2 ** (bits - 1) - 1
    scale = w.abs().amax(dim=(1, 2, 3)) / qp
    for c in range(w.shape[0]):
        codes = q[c] / scale[c]
        assert torch.allclose(codes, codes.round(), atol=1e-4)
        assert codes.round().abs().max() <= qp
        assert torch.unique(codes.round()).numel() <= 2**bits - 1
        # the largest magnitude is representable exactly (code ±Qp)
        i = w[c].abs().argmax()
        assert torch.isclose(q[c].flatten()[i].abs(), w[c].abs().max())
    # independent reference: PyTorch's own per-channel fake-quant op on the same grid
    ref = torch.fake_quantize_per_channel_affine(
        w, scale.float(), torch.zeros(8, dtype=torch.int32), 0, -qp, qp
    )
    torch.testing.assert_close(q, ref, rtol=0, atol=1e-6)


def test_asymmetric_matches_torch_affine_reference():
    w = torch.randn(4, 10) + 0.3
    q = fake_quantize(w, 4, axis=0, symmetric=False)
    lo = w.amin(dim=1).clamp(max=0)
    hi = w.amax(dim=1).clamp(min=0)
    scale = (hi - lo) / 15
    zp = torch.round(-lo / scale).int()
    ref = torch.fake_quantize_per_channel_affine(w, scale, zp, 0, 0, 15)
    torch.testing.assert_close(q, ref, rtol=0, atol=1e-5)
    for c in range(4):
        assert torch.unique(q[c]).numel() <= 16


def test_per_tensor_axis_none_uses_one_scale():
    w = torch.randn(5, 7)
    q = fake_quantize(w, 3, axis=None)
    scale = w.abs().max() / 3
    assert torch.allclose(q / scale, (q / scale).round(), atol=1e-4)
    assert torch.unique(q).numel() <= 7


def test_error_shrinks_with_bits():
    w = torch.randn(16, 32)
    mse = {b: float((fake_quantize(w, b) - w).pow(2).mean()) for b in (8, 4, 3, 2)}
    assert mse[8] < mse[4] < mse[3] < mse[2]
    assert mse[8] < 1e-4


@pytest.mark.parametrize("symmetric", [True, False])
def test_zeros_stay_zero(symmetric):
    w = torch.randn(6, 20)
    w[torch.rand_like(w) < 0.5] = 0
    w[2] = 0  # a fully pruned channel
    for bits in (2, 3, 4, 8):
        q = fake_quantize(w, bits, symmetric=symmetric)
        assert torch.isfinite(q).all()
        assert (q[w == 0] == 0).all()


def test_bad_bits_is_a_config_error():
    with pytest.raises(ConfigError, match="from 2 to 16"):
        fake_quantize(torch.randn(3, 3), 1)
    with pytest.raises(ConfigError):
        quantize_model(_net(), 32)


def test_quantize_weights_in_place_only_conv_linear_weights():
    model = _net()
    before = copy.deepcopy(model.state_dict())
    out = quantize_weights(model, 4)
    assert out is model
    after = model.state_dict()
    for name in ("0.weight", "4.weight"):
        assert torch.equal(after[name], fake_quantize(before[name], 4))
        assert not torch.equal(after[name], before[name])
    for name in ("0.bias", "1.weight", "1.bias", "1.running_mean", "4.bias"):
        assert torch.equal(after[name], before[name])


def test_quantize_model_copies_and_records():
    model = _net()
    original = copy.deepcopy(model.state_dict())
    qmodel, record = quantize_model(model, 3)
    for k, v in model.state_dict().items():
        assert torch.equal(v, original[k])
    assert record.bits == 3 and record.act_bits is None
    assert set(record.weights) == {"0.weight", "4.weight"}
    stats = record.weights["0.weight"]
    expected_scale = original["0.weight"].abs().amax(dim=(1, 2, 3)) / 3
    assert stats["scale_max"] == pytest.approx(float(expected_scale.max()), rel=1e-6)
    assert stats["levels_used"] <= 7
    assert stats["mse"] > 0
    assert record.to_dict()["bits"] == 3


def test_activations_need_calibration_data():
    with pytest.raises(ConfigError, match="calib_data"):
        quantize_model(_net(), 8, activations=True)


def test_calibration_sets_minmax_ranges_by_hand():
    torch.manual_seed(1)
    model = _net()
    batches = [torch.randn(4, 3, 4, 4) for _ in range(3)]
    qmodel, record = quantize_model(model, 4, activations=True, calib_data=batches)
    # first conv sees the signed input: symmetric range max|x| / 7
    x_all = torch.cat(batches)
    first = record.activations["0"]
    assert first["signed"] is True
    assert first["scale"] == pytest.approx(float(x_all.abs().max()) / 7, rel=1e-6)
    # the linear layer sees post-ReLU features of the weight-quantized conv: unsigned, max / 15
    wq = quantize_weights(copy.deepcopy(model), 4).eval()
    with torch.no_grad():
        feats = wq[:4](x_all)
    last = record.activations["4"]
    assert last["signed"] is False and last["lo"] >= 0
    assert last["scale"] == pytest.approx(float(feats.max()) / 15, rel=1e-5)
    qs = activation_quantizers(qmodel)
    assert qs["4.input_quantizer"].levels == 16 and qs["0.input_quantizer"].levels == 15


def test_quantized_activations_lie_on_grid_and_stay_close_at_8_bits():
    torch.manual_seed(2)
    model = _net().eval()
    batches = [torch.randn(8, 3, 4, 4) for _ in range(2)]
    qmodel, _ = quantize_model(model, 8, activations=True, calib_data=batches)
    seen = {}
    layer = qmodel[4]
    layer.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    x = batches[0]
    out = qmodel(x)
    scale = layer.input_quantizer.scale
    codes = seen["x"] / scale
    assert torch.allclose(codes, codes.round(), atol=1e-3)
    assert codes.min() >= 0 and codes.max() <= 255
    with torch.no_grad():
        ref = model(x)
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def test_percentile_calibration_ignores_outliers():
    q_min = ActivationQuantizer(8, method="minmax")
    q_pct = ActivationQuantizer(8, method="percentile", percentile=99.0)
    x = torch.rand(1000)
    x[0] = 1000.0
    for q in (q_min, q_pct):
        q.observe()
        q(x)
        q.freeze()
    assert float(q_min.scale) == pytest.approx(1000.0 / 255)
    ref_hi = float(torch.quantile(x, 0.99, interpolation="lower"))
    assert float(q_pct.scale) * 255 == pytest.approx(ref_hi, abs=2e-3)
    assert float(q_pct.scale) * 255 < 1.01


def test_uncalibrated_quantizer_passes_through_and_unknown_method():
    q = ActivationQuantizer(4)
    x = torch.randn(10)
    assert torch.equal(q(x), x)
    with pytest.raises(ConfigError, match="did you mean"):
        ActivationQuantizer(4, method="percentil")
    with pytest.raises(ConfigError, match="no data"):
        q.observe()
        q.freeze()


def test_calibrated_state_round_trips_through_state_dict():
    torch.manual_seed(3)
    batches = [torch.randn(4, 3, 4, 4)]
    qmodel, _ = quantize_model(_net(), 4, activations=True, calib_data=batches)
    fresh = copy.deepcopy(_net())
    insert_activation_quantizers(fresh, 4)
    fresh.load_state_dict(qmodel.state_dict())
    qmodel.eval()
    fresh.eval()
    x = torch.randn(3, 3, 4, 4)
    assert torch.equal(fresh(x), qmodel(x))
    deep = copy.deepcopy(qmodel)
    assert torch.equal(deep(x), qmodel(x))


def test_calibrate_restores_training_mode_and_accepts_tuples():
    model = _net()
    insert_activation_quantizers(model, 8, layers=["4"])
    model.train()
    ranges = calibrate(model, [(torch.randn(2, 3, 4, 4), torch.zeros(2))])
    assert model.training
    assert set(ranges) == {"4"}
    with pytest.raises(ConfigError, match="unknown layer"):
        insert_activation_quantizers(model, 8, layers=["5"])


def test_named_targets_include_one_dimensional_parameters():
    model = _net()
    before = copy.deepcopy(model.state_dict())
    qmodel, record = quantize_model(model, 3, targets=["4.bias"])
    bias = before["4.bias"]
    assert torch.equal(qmodel.state_dict()["4.bias"], fake_quantize(bias, 3, axis=None))
    assert torch.equal(qmodel.state_dict()["4.weight"], before["4.weight"])
    assert record.weights["4.bias"]["levels_used"] <= 7
    assert record.weights["4.bias"]["scale_max"] == pytest.approx(float(bias.abs().max()) / 3)
    with pytest.raises(ConfigError, match="did you mean '4.bias'"):
        quantize_weights(model, 3, targets=["4.bais"])


@pytest.mark.parametrize("signed", [True, False])
def test_activation_quantizer_passes_clipped_straight_through_gradients(signed):
    q = ActivationQuantizer(bits=3).set_range(0.25, signed=signed)
    # signed 3-bit grid: codes -3..3, range [-0.75, 0.75]; unsigned: codes 0..7, [0, 1.75]
    lo, hi = (-0.75, 0.75) if signed else (0.0, 1.75)
    x = torch.tensor([-2.0, -0.75, -0.3, 0.0, 0.1, 0.74, 0.75, 0.9, 1.75, 3.0], requires_grad=True)
    out = q(x)
    with torch.no_grad():
        expected = q(x.detach())  # the no-gradient path: round, clamp, rescale
    codes = torch.clamp(torch.round(x.detach() / 0.25), lo / 0.25, hi / 0.25)
    assert torch.equal(out.detach(), expected) and torch.equal(expected, codes * 0.25)
    weights = torch.arange(1.0, 11.0)
    (out * weights).sum().backward()
    inside = ((x.detach() >= lo) & (x.detach() <= hi)).float()
    assert torch.equal(x.grad, weights * inside)  # 1 inside the range, 0 where clamped


def test_quantized_layer_passes_gradients_to_its_input():
    layer = nn.Linear(4, 3)
    q = ActivationQuantizer(bits=4).set_range(0.1, signed=True)
    attach_input_quantizer(layer, q)
    x = torch.linspace(-1.2, 1.2, 8).repeat(4, 1).T.contiguous().requires_grad_(True)
    layer(x).sum().backward()
    # d/dx of sum(W q(x) + b) = column sums of W inside the range [-0.7, 0.7], 0 outside
    inside = (x.detach().abs() <= 7 * 0.1).float()
    assert torch.allclose(x.grad, inside * layer.weight.detach().sum(0))
    assert x.grad.abs().sum() > 0
