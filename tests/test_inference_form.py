"""The network evaluation runs on a CPU: pools by element-wise maxima, conv + BN folded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from underbudget import sparsity
from underbudget.deploy import native
from underbudget.deploy.layers import MaxPool2x2, SparseLinear
from underbudget.deploy.sparse_conv import SparseConv2d
from underbudget.models import create_model
from underbudget.train.evaluate import SPARSE_MIN_EXAMPLES, _inference_model, evaluate
from underbudget.train.inference_form import (
    fold_conv_bn,
    has_pruned_layers,
    inference_form,
    rewrites,
    sparse_kernels_help,
    sparse_wins,
)

needs_native = pytest.mark.skipif(not native.available(),
                                  reason=f"native kernels: {native.unavailable_reason()}")


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


class Batches(list):
    """A list of batches that says how many examples it holds, as the data loaders do."""

    num_examples: int


def _pruned_lenet(scope: str = "layerwise") -> nn.Module:
    model = create_model("lenet5", num_classes=10, in_channels=1, image_size=28, seed=0)
    sparsity.prune(model, 0.1, "magnitude", scope)
    return model


@needs_native
def test_sparse_form_runs_pruned_layers_on_sparse_kernels_with_the_same_logits():
    model = _pruned_lenet()
    form = inference_form(model, sparse=True, batch_size=256)
    assert isinstance(form.conv1, SparseConv2d) and form.fused_layers == ["conv1", "conv2"]
    assert isinstance(form.fc1, SparseLinear)
    assert type(model.conv1) is nn.Conv2d  # the model itself is untouched
    assert not any(p.requires_grad for p in form.parameters())
    x = torch.randn(40, 1, 28, 28)
    with torch.inference_mode():
        torch.testing.assert_close(form(x), model.eval()(x), rtol=1e-5, atol=1e-5)
    dense = create_model("lenet5", num_classes=10, in_channels=1, image_size=28, seed=0)
    assert not has_pruned_layers(dense) and has_pruned_layers(model)
    assert sparse_wins(model) and not sparse_wins(dense)
    small = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():
        small[0].weight[:, ::2] = 0  # pruned, but 2k weights: the rule keeps it dense
    assert has_pruned_layers(small) and not sparse_wins(small)
    assert not hasattr(inference_form(small, sparse=True), "sparse_choices")  # no conversion
    assert not any(isinstance(m, SparseConv2d)
                   for m in inference_form(dense, sparse=True).modules())


@needs_native
def test_evaluate_uses_the_sparse_form_on_cpu_and_reports_the_same_numbers():
    torch.manual_seed(2)
    x = torch.randn(300, 1, 28, 28)
    y = torch.randint(0, 10, (300,))
    model = _pruned_lenet("global")
    assert sparse_kernels_help(model, torch.device("cpu"))
    assert not sparse_kernels_help(model, torch.device("meta"))
    batches = Batches((x[i:i + 100], y[i:i + 100]) for i in range(0, 300, 100))
    batches.num_examples = 300
    cpu = torch.device("cpu")
    assert _inference_model(model, None, cpu, None, 100, batches) is not None
    assert not any(isinstance(m, SparseConv2d)
                   for m in _inference_model(model, None, cpu, None, 100, batches).modules())
    batches.num_examples = SPARSE_MIN_EXAMPLES  # (a count large enough to pay for the form)
    form = _inference_model(model, None, cpu, None, 100, batches)
    assert [c.name for c in form.sparse_choices if c.form != "dense"] == ["fc1"]  # 0.16 %
    plain = evaluate(model, batches, inference=False, return_logits=True)
    fast = evaluate(model, batches, return_logits=True)
    assert (plain["acc"], plain["errors"], plain["n"]) == (fast["acc"], fast["errors"], fast["n"])
    assert abs(plain["loss"] - fast["loss"]) < 1e-5
    torch.testing.assert_close(fast["logits"], plain["logits"], rtol=1e-5, atol=1e-5)


def test_a_hooked_pruned_layer_keeps_its_dense_form_and_its_hook():
    model = _pruned_lenet()
    calls = []
    model.fc1.register_forward_pre_hook(lambda module, args: calls.append(1))
    form = inference_form(model, sparse=True)
    assert type(form.fc1) is nn.Linear
    with torch.inference_mode():
        form(torch.randn(2, 1, 28, 28))
    assert calls == [1]


@needs_native
def test_a_folded_convnet_fuses_through_the_identity_its_batch_norm_leaves():
    model = create_model("convnet", num_classes=10, in_channels=1, image_size=28,
                         widths=[8, 16, 32], seed=0)
    x = torch.randn(64, 1, 28, 28)
    model = _trained_stats(model, x)
    sparsity.prune(model, 0.1, "magnitude", "layerwise")
    form = inference_form(model, sparse=True)
    assert len(form.fused_layers) >= 2
    with torch.inference_mode():
        torch.testing.assert_close(form(x), model.eval()(x), rtol=1e-4, atol=1e-4)
