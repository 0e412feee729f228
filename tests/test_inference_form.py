"""The network evaluation runs on a CPU: pools by element-wise maxima, conv + BN folded."""

from __future__ import annotations

import torch
from torch import nn

from underbudget.deploy.layers import MaxPool2x2
from underbudget.models import create_model
from underbudget.train.evaluate import evaluate
from underbudget.train.inference_form import fold_conv_bn, inference_form, rewrites


def _trained_stats(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Give every BatchNorm running statistics away from (0, 1)."""
    model.train()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
        for _ in range(3):
            model(x * 3 + 1)
    return model.eval()


def test_fold_matches_conv_then_batch_norm_by_hand():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=True)
    bn = nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
        conv.weight[0, 0] = 0.0  # a pruned kernel stays pruned
    fused = fold_conv_bn(conv, bn)
    x = torch.randn(5, 3, 8, 8)
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    by_hand = (torch.nn.functional.conv2d(x, conv.weight, None, padding=1)
               + (conv.bias - bn.running_mean)[None, :, None, None]) * s[None, :, None, None] \
        + bn.bias[None, :, None, None]
    torch.testing.assert_close(fused(x), bn(conv(x)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused(x), by_hand, rtol=1e-5, atol=1e-5)
    assert torch.equal(fused.weight[0, 0], torch.zeros(3, 3))


def test_convnet_form_folds_every_pair_and_swaps_every_pool_without_touching_the_model():
    torch.manual_seed(0)
    x = torch.randn(64, 1, 28, 28)
    model = _trained_stats(create_model("convnet", num_classes=10, in_channels=1,
                                        image_size=28), x)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    form = inference_form(model)
    assert model.training and not form.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in form.modules())
    assert sum(isinstance(m, MaxPool2x2) for m in form.modules()) == 3
    kinds = [type(m).__name__ for m in form.features]
    assert kinds[:4] == ["Conv2d", "Identity", "MaxPool2x2", "ReLU"]  # pooled, then rectified
    model.eval()
    with torch.no_grad():
        a, b = model(x), form(x)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert torch.equal(a.argmax(1), b.argmax(1))


def test_lenet_pools_are_exact_and_a_hooked_conv_is_left_alone():
    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=10, in_channels=1, image_size=28).eval()
    x = torch.randn(32, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(inference_form(model)(x), model(x))  # max is exact
    seq = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).eval()
    seq[0].register_forward_pre_hook(lambda mod, args: None)
    assert not rewrites(seq)
    assert isinstance(inference_form(seq)[1], nn.BatchNorm2d)
    assert not rewrites(nn.Sequential(nn.Linear(3, 3), nn.ReLU()))


def test_evaluate_reports_the_same_numbers_in_either_form():
    torch.manual_seed(1)
    x = torch.randn(300, 1, 28, 28)
    y = torch.randint(0, 10, (300,))
    model = _trained_stats(create_model("convnet", num_classes=10, in_channels=1,
                                        image_size=28), x)
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 300, 64)]
    plain = evaluate(model, batches, inference=False, return_logits=True)
    fast = evaluate(model, batches, return_logits=True)
    assert (plain["acc"], plain["errors"], plain["n"]) == (fast["acc"], fast["errors"], fast["n"])
    assert abs(plain["loss"] - fast["loss"]) < 1e-5
    torch.testing.assert_close(fast["logits"], plain["logits"], rtol=1e-5, atol=1e-5)
