"""Transfer wrappers: frozen linear probe, masked fine-tune, visual prompt with label mapping."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from underbudget.errors import ConfigError
from underbudget.transfer import (
    ExpansivePrompt,
    FineTune,
    LabelMapper,
    LinearProbe,
    PadPrompt,
    VisualPrompt,
)


class _Net(nn.Module):
    """Tiny CNN with BatchNorm and a final Linear classifier (10 source classes)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2)
        )
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.body(x), 1))


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _train(model: nn.Module, params, steps: int = 3, num_classes: int = 5, size: int = 8):
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-2)
    model.train()
    for _ in range(steps):
        x = torch.rand(6, 3, size, size)
        y = torch.randint(0, num_classes, (6,))
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_linear_probe_leaves_the_backbone_bit_identical():
    source = _Net()
    source(torch.rand(4, 3, 8, 8))  # non-trivial BN running stats
    source_state = _snapshot(source)
    probe = LinearProbe(source, 5, seed=0)
    before = _snapshot(probe.backbone)
    head_before = probe.head.weight.detach().clone()
    # even an optimizer over ALL parameters must not move the frozen backbone
    _train(probe, probe.parameters())
    _assert_identical(before, _snapshot(probe.backbone))
    _assert_identical(source_state, _snapshot(source))
    assert not torch.equal(head_before, probe.head.weight)
    assert probe.training and not probe.backbone.training
    assert all(not p.requires_grad for p in probe.backbone.parameters())
    assert probe.trainable_parameters() == list(probe.head.parameters())
    assert isinstance(source.fc, nn.Linear)  # the caller's model is untouched


def test_linear_probe_features_are_the_penultimate_activations():
    source = _Net().eval()
    probe = LinearProbe(source, 3)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        feats = torch.flatten(source.body(x), 1)
        assert torch.equal(probe.features(x), feats)
        assert torch.equal(probe(x), probe.head(feats))
    assert probe.head.in_features == 16 and probe.head.out_features == 3


def test_linear_probe_with_a_features_callable_and_errors():
    source = _Net()
    probe = LinearProbe(source, 4, features=lambda m, x: m.body(x).flatten(1), feature_dim=16)
    assert probe(torch.rand(2, 3, 8, 8)).shape == (2, 4)
    with pytest.raises(ConfigError, match="feature_dim"):
        LinearProbe(source, 4, features=lambda m, x: x)
    with pytest.raises(ConfigError, match="no nn.Linear"):
        LinearProbe(nn.Sequential(nn.Conv2d(3, 3, 1)), 4)


def test_seeded_heads_are_reproducible():
    a = LinearProbe(_Net(), 5, seed=7).head.weight
    torch.manual_seed(99)
    b = LinearProbe(_Net(), 5, seed=7).head.weight
    c = LinearProbe(_Net(), 5, seed=8).head.weight
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.abs().max() <= 1 / 16**0.5


def test_fine_tune_trains_everything_and_masked_zeros_stay_zero():
    source = _Net()
    conv = source.body[0]
    mask = torch.rand_like(conv.weight) > 0.6
    with torch.no_grad():
        conv.weight.mul_(mask)
    ft = FineTune(source, 5, seed=0)
    assert ft.head.out_features == 5 and ft.head_name == "fc"
    assert all(p.requires_grad for p in ft.parameters())
    names = {n.removeprefix("backbone.") for n, _ in ft.named_parameters()}
    assert names == {n for n, _ in source.named_parameters()}
    before = ft.backbone.body[0].weight.detach().clone()
    opt = torch.optim.SGD(ft.trainable_parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    for _ in range(4):
        loss = nn.functional.cross_entropy(ft(torch.rand(6, 3, 8, 8)), torch.randint(0, 5, (6,)))
        opt.zero_grad()
        loss.backward()
        ft.backbone.body[0].weight.grad.mul_(mask)  # what a mask callback does
        opt.step()
        with torch.no_grad():
            ft.backbone.body[0].weight.mul_(mask)
    w = ft.backbone.body[0].weight
    assert (w[~mask] == 0).all()
    assert not torch.equal(w[mask], before[mask])
    assert not torch.equal(ft.backbone.body[1].running_mean, source.body[1].running_mean)


def test_visual_prompt_trains_only_the_prompt_and_keeps_bn_stats():
    source = _Net()
    prompt = ExpansivePrompt(8, 5, 3)
    mapper = LabelMapper(10, 5, mode="rlm", seed=0)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    vp = VisualPrompt(source, prompt, mapper, mean, std)
    trainable = {n for n, p in vp.named_parameters() if p.requires_grad}
    assert trainable == {"prompt.theta"}
    assert vp.trainable_parameters() == [vp.prompt.theta]
    backbone_before = _snapshot(vp.backbone)
    theta_before = vp.prompt.theta.detach().clone()
    opt = torch.optim.Adam(vp.parameters(), lr=0.01)
    vp.train()
    for _ in range(3):
        x = torch.rand(6, 3, 6, 6)
        loss = nn.functional.cross_entropy(vp(x), torch.randint(0, 5, (6,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    _assert_identical(backbone_before, _snapshot(vp.backbone))
    assert not vp.backbone.training and vp.prompt.training
    assert not torch.equal(theta_before, vp.prompt.theta)


def test_visual_prompt_forward_is_the_documented_composition():
    source = _Net().eval()
    prompt = PadPrompt(8, 2, 3)
    with torch.no_grad():
        prompt.theta.normal_()
    mapper = LabelMapper(10, 4, mode="rlm", seed=2)
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    vp = VisualPrompt(source, prompt, mapper, mean, std)
    x = torch.rand(3, 3, 5, 5)
    with torch.no_grad():
        z = (prompt(x) - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        expected = source(z)[:, mapper.mapping]
        assert torch.allclose(vp(x), expected, atol=1e-6)
    with pytest.raises(ConfigError, match="one value per channel"):
        VisualPrompt(source, copy.deepcopy(prompt), mapper, [0.5, 0.5], std)
    with pytest.raises(ConfigError, match="positive"):
        VisualPrompt(source, copy.deepcopy(prompt), mapper, mean, [0.2, 0.0, 0.3])
