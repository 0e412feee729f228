"""Allocation and selection: global/layerwise vs torch.nn.utils.prune, nesting, ERK."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from underbudget import sparsity
from underbudget.errors import ConfigError
from underbudget.sparsity import MaskSet
from underbudget.sparsity.allocation import _kth_largest


def small_net():
    # every prunable layer has a multiple of 10 weights so torch's and our rounding agree
    return nn.Sequential(
        nn.Conv2d(3, 10, 3),  # 270
        nn.ReLU(),
        nn.Conv2d(10, 20, 3),  # 1800
        nn.Flatten(),
        nn.Linear(20, 30),  # 600
        nn.Linear(30, 10),  # 300
    )


PRUNABLE = ["0.weight", "2.weight", "4.weight", "5.weight"]


def test_global_magnitude_equals_torch_global_unstructured():
    model = small_net()
    ref = small_net()
    ref.load_state_dict(model.state_dict())
    masks = sparsity.prune(model, density=0.3, criterion="magnitude", scope="global")
    params = [(ref.get_submodule(n.split(".")[0]), "weight") for n in PRUNABLE]
    torch_prune.global_unstructured(params, torch_prune.L1Unstructured, amount=0.7)
    for name, (module, _) in zip(PRUNABLE, params):
        assert torch.equal(masks[name], module.weight_mask.bool()), name
    assert masks.nonzeros() == round(0.3 * masks.numel())


def test_layerwise_magnitude_equals_torch_l1_unstructured():
    model = small_net()
    ref = small_net()
    ref.load_state_dict(model.state_dict())
    masks = sparsity.prune(model, density=0.3, scope="layerwise")
    for name in PRUNABLE:
        module = ref.get_submodule(name.split(".")[0])
        torch_prune.l1_unstructured(module, "weight", amount=0.7)
        assert torch.equal(masks[name], module.weight_mask.bool()), name
        assert masks.layer_densities()[name] == pytest.approx(0.3)


@pytest.mark.parametrize("scope", ["global", "layerwise", "erk"])
def test_nested_pruning_never_revives_and_removes_the_lowest_alive(scope):
    model = small_net()
    masks = sparsity.prune(model, density=0.8, scope=scope)
    for density in (0.5, 0.3):
        before = masks.copy()
        weights = {n: model.get_parameter(n).detach().clone() for n in masks}
        sparsity.prune(model, density=density, scope=scope, masks=masks)
        assert masks.is_subset_of(before)
        assert abs(masks.nonzeros() - round(density * masks.numel())) <= (
            0 if scope == "global" else len(masks)
        )
        if scope == "global":
            removed = torch.cat([weights[n][before[n] & ~masks[n]].abs() for n in masks])
            kept = torch.cat([weights[n][masks[n]].abs() for n in masks])
            assert removed.max() < kept.min()
            assert removed.numel() == before.nonzeros() - masks.nonzeros()


def test_select_ignores_scores_of_pruned_weights():
    model = small_net()
    masks = sparsity.prune(model, density=0.5)
    # huge scores on pruned positions must not bring them back
    scores = {
        n: torch.where(m, torch.rand(m.shape), torch.full(m.shape, 1e9)) for n, m in masks.items()
    }
    new = MaskSet(sparsity.select(scores, masks, 0.25))
    assert new.is_subset_of(masks)
    assert new.nonzeros() == round(0.25 * masks.numel())
    # brute force: the kept ones are exactly the top alive scores
    alive = torch.cat([scores[n][masks[n]] for n in masks])
    top = alive.topk(new.nonzeros()).values.min()
    for n in masks:
        assert torch.equal(new[n], masks[n] & (scores[n] >= top))


def test_criterion_scores_are_minus_inf_at_pruned_positions():
    model = small_net()
    masks = sparsity.prune(model, density=0.4)
    for crit in ("magnitude", "random"):
        scores = sparsity.score(crit, model, masks)
        for n, m in masks.items():
            assert torch.all(scores[n][~m] == -math.inf)
            assert torch.all(torch.isfinite(scores[n][m]))


def test_pruning_above_the_current_density_is_refused():
    model = small_net()
    masks = sparsity.prune(model, density=0.3)
    with pytest.raises(ConfigError, match="never revives"):
        sparsity.prune(model, density=0.5, masks=masks)


def erk_reference(shapes: dict, density: float) -> dict:
    """ERK by bisection on eps: sum(min(1, eps raw) N) = d sum(N) (independent of the code)."""
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / math.prod(s) for n, s in shapes.items()}
    budget = density * sum(sizes.values())
    lo, hi = 0.0, 1e12
    for _ in range(400):
        eps = (lo + hi) / 2
        used = sum(min(1.0, eps * raw[n]) * sizes[n] for n in shapes)
        lo, hi = (eps, hi) if used < budget else (lo, eps)
    return {n: min(1.0, lo * raw[n]) for n in shapes}


def resnet20_shapes():
    shapes = {"conv1.weight": (16, 3, 3, 3)}
    cin = 16
    for stage, cout in enumerate((16, 32, 64)):
        for block in range(3):
            shapes[f"layer{stage}.{block}.conv1.weight"] = (cout, cin, 3, 3)
            shapes[f"layer{stage}.{block}.conv2.weight"] = (cout, cout, 3, 3)
            if cin != cout:
                shapes[f"layer{stage}.{block}.shortcut.weight"] = (cout, cin, 1, 1)
            cin = cout
    shapes["fc.weight"] = (10, 64)
    return shapes


def vgg16_shapes():
    cfg = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    shapes, cin = {}, 3
    for i, c in enumerate(cfg):
        shapes[f"features.{i}.weight"] = (c, cin, 3, 3)
        cin = c
    shapes["classifier.weight"] = (100, 512)
    return shapes


@pytest.mark.parametrize("shapes", [resnet20_shapes(), vgg16_shapes()], ids=["resnet20", "vgg16"])
@pytest.mark.parametrize("density", [0.05, 0.2, 0.5, 0.9])
def test_erk_matches_formula_and_budget(shapes, density):
    got = sparsity.erk_densities(shapes, density)
    ref = erk_reference(shapes, density)
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    assert sum(got[n] * sizes[n] for n in shapes) == pytest.approx(
        density * sum(sizes.values()), rel=1e-12
    )
    for n in shapes:
        assert got[n] == pytest.approx(ref[n], rel=1e-9, abs=1e-12)
        assert 0 < got[n] <= 1


def test_erk_dense_layers_clamp_and_rest_resolve():
    shapes = {"small": (4, 3, 3, 3), "mid": (64, 64, 3, 3), "big": (128, 64, 3, 3)}
    got = sparsity.erk_densities(shapes, 0.3)
    assert got["small"] == 1.0  # raw * eps > 1: made dense
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / math.prod(s) for n, s in shapes.items()}
    # the others share eps solved on the remaining budget
    eps = (0.3 * sum(sizes.values()) - sizes["small"]) / sum(
        raw[n] * sizes[n] for n in ("mid", "big")
    )
    for n in ("mid", "big"):
        assert got[n] == pytest.approx(min(1.0, eps * raw[n]), rel=1e-12)


def test_er_ignores_kernel_dims():
    shapes = {"a": (16, 8, 3, 3), "b": (32, 16, 3, 3)}
    got = sparsity.er_densities(shapes, 0.2)
    ratio = got["a"] / got["b"]
    assert ratio == pytest.approx(((16 + 8) / (16 * 8 * 9)) / ((32 + 16) / (32 * 16 * 9)))


def test_erk_scope_counts_follow_densities():
    model = small_net()
    masks = sparsity.prune(model, density=0.2, criterion="random", scope="erk")
    target = sparsity.erk_densities(model, 0.2)
    assert masks.nonzeros() == round(0.2 * masks.numel())
    for n, m in masks.items():
        assert abs(int(m.count_nonzero()) - target[n] * m.numel()) < 1.0


def test_round_counts_largest_remainder():
    assert sparsity.round_counts([1.5, 2.5, 3.0], [10, 10, 10], 7) == [2, 2, 3]  # tie: earlier
    assert sparsity.round_counts([2.6, 2.4], [2, 10], 5) == [2, 3]  # capped, moved on
    counts = sparsity.round_counts([0.3] * 10, [1] * 10, 3)
    assert counts == [1, 1, 1] + [0] * 7


def test_kth_largest_sampling_path_is_exact():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(700_000, generator=g)
    b = torch.randn(600_000, generator=g).round(decimals=1)  # many ties
    b[:400_000] = -math.inf
    ordered = torch.cat([a, b]).sort(descending=True).values
    for k in (1, 600_000, 1_100_000):
        assert _kth_largest([a, b], k, g) == ordered[k - 1], k
