"""Criteria against brute-force computations on a 2-layer network."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from underbudget import sparsity
from underbudget.sparsity import MaskSet

NAMES = ["0.weight", "2.weight"]


def two_layer(act=nn.Tanh):
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 5), act(), nn.Linear(5, 3)).double()


def data(n_batches=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(6, 4, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (6,), generator=g),
        )
        for _ in range(n_batches)
    ]


def half_mask(model):
    masks = MaskSet.from_model(model)
    m = masks["0.weight"].clone()
    m[0, :2] = False
    m[3, 1] = False
    masks["0.weight"] = m
    masks.apply(model)
    return masks


def close(scores, ref, masks):
    for n in NAMES:
        alive = masks[n]
        torch.testing.assert_close(scores[n][alive], ref[n][alive].to(scores[n].dtype))
        assert torch.all(scores[n][~alive] == -math.inf)


@pytest.mark.parametrize("masked", [False, True])
def test_snip_is_gradient_with_respect_to_the_mask(masked):
    model = two_layer()
    masks = half_mask(model) if masked else MaskSet.from_model(model)
    batches = data()
    params = dict(model.named_parameters())
    c = {n: torch.ones_like(params[n], requires_grad=True) for n in NAMES}
    total = {n: torch.zeros_like(params[n]) for n in NAMES}
    for x, y in batches:
        p = dict(params)
        for n in NAMES:
            p[n] = params[n].detach() * masks[n] * c[n]
        loss = F.cross_entropy(functional_call(model, p, (x,)), y)
        for n, g in zip(NAMES, torch.autograd.grad(loss, [c[n] for n in NAMES])):
            total[n] += g
    ref = {n: total[n].abs() for n in NAMES}
    close(sparsity.score("snip", model, masks, data=batches), ref, masks)


@pytest.mark.parametrize("temperature", [1.0, 200.0])
@pytest.mark.parametrize("masked", [False, True])
def test_grasp_is_weight_times_hessian_gradient(temperature, masked):
    model = two_layer()
    masks = half_mask(model) if masked else MaskSet.from_model(model)
    batches = data()
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in NAMES]
    theta = torch.cat([params[n].detach().reshape(-1) for n in NAMES])
    keep = torch.cat([masks[n].reshape(-1) for n in NAMES]).double()

    def loss_of(vec, x, y):
        p = dict(params)
        off = 0
        for n, s in zip(NAMES, shapes):
            p[n] = vec[off : off + math.prod(s)].reshape(s)
            off += math.prod(s)
        return F.cross_entropy(functional_call(model, p, (x,)) / temperature, y)

    g = sum(torch.func.grad(loss_of)(theta, x, y) for x, y in batches) * keep
    hg = sum(torch.func.hessian(loss_of)(theta, x, y) @ g for x, y in batches)
    flat = theta * hg
    ref, off = {}, 0
    for n, s in zip(NAMES, shapes):
        ref[n] = flat[off : off + math.prod(s)].reshape(s)
        off += math.prod(s)
    got = sparsity.score("grasp", model, masks, data=batches, temperature=temperature)
    close(got, ref, masks)


def test_synflow_closed_form_needs_no_data():
    model = two_layer(nn.ReLU)  # inputs are all ones and weights abs: ReLU is the identity
    masks = half_mask(model)
    w1 = model[0].weight.detach().abs()
    b1 = model[0].bias.detach().abs()
    w2 = model[2].weight.detach().abs()
    h = w1 @ torch.ones(4, dtype=torch.float64) + b1
    ref = {
        "0.weight": w1 * w2.sum(0)[:, None],  # dR/d|W1|_ij = sum_k |W2|_ki
        "2.weight": w2 * h[None, :],  # dR/d|W2|_ki = h_i
    }
    got = sparsity.score("synflow", model, masks, input_shape=(4,))
    close(got, ref, masks)


def test_synflow_leaves_the_model_untouched_and_uses_eval_batchnorm():
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    model[1].running_mean.fill_(-0.5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    masks = MaskSet.from_model(model)
    got = sparsity.score("synflow", model, masks, input_shape=(4,))
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert model.training
    # eval-mode BN with abs statistics: a positive, finite affine map, so every score is > 0
    assert all(bool((s > 0).all()) for s in got.values())


def test_taylor_sums_per_batch_abs_products_and_callback_matches():
    model = two_layer()
    masks = MaskSet.from_model(model)
    batches = data(3)
    params = dict(model.named_parameters())
    ref = {n: torch.zeros_like(params[n]) for n in NAMES}
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        for n, g in zip(NAMES, torch.autograd.grad(loss, [params[n] for n in NAMES])):
            ref[n] += (params[n].detach() * g).abs()
    close(sparsity.score("taylor", model, masks, data=batches), ref, masks)

    # the training-time accumulator over the same gradients (weights held fixed: lr = 0)
    acc = sparsity.TaylorScore(masks)
    for x, y in batches:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        acc.accumulate(model)
    close(sparsity.score("taylor", model, masks, accumulated=acc), ref, masks)


def test_magnitude_and_seeded_random():
    model = two_layer()
    masks = half_mask(model)
    close(
        sparsity.score("magnitude", model, masks),
        {n: model.get_parameter(n).abs() for n in NAMES},
        masks,
    )
    a = sparsity.score("random", model, masks, seed=1)
    b = sparsity.score("random", model, masks, seed=1)
    c = sparsity.score("random", model, masks, seed=2)
    assert all(torch.equal(a[n], b[n]) for n in NAMES)
    assert not torch.equal(a["2.weight"], c["2.weight"])


def test_data_scoring_has_no_side_effects():
    model = nn.Sequential(
        nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)
    )
    model.eval()
    model(torch.randn(3, 4)).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    masks = MaskSet.from_model(model)
    batches = [(torch.randn(6, 4), torch.randint(0, 3, (6,)))]
    rng = torch.get_rng_state()
    first = sparsity.score("snip", model, masks, data=batches, seed=5)
    sparsity.score("grasp", model, masks, data=batches, seed=5)
    again = sparsity.score("snip", model, masks, data=batches, seed=5)
    assert not model.training
    assert torch.equal(torch.get_rng_state(), rng)
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, grads[n])
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n])
    assert all(torch.equal(first[n], again[n]) for n in masks)  # dropout is seeded


def test_iterated_synflow_follows_the_exponential_schedule():
    model = nn.Sequential(
        nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)
    )
    ref_model = nn.Sequential(
        nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)
    )
    ref_model.load_state_dict(model.state_dict())
    got = sparsity.prune(model, 0.1, "synflow", input_shape=(6,), iterations=4)
    ref = MaskSet.from_model(ref_model)
    for r in range(1, 5):
        scores = sparsity.score("synflow", ref_model, ref, input_shape=(6,))
        ref.update(sparsity.select(scores, ref, 0.1 ** (r / 4)))
        ref.apply(ref_model)
    for n in ref:
        assert torch.equal(got[n], ref[n])
    assert got.nonzeros() == round(0.1 * got.numel())
