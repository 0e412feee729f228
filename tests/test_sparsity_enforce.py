"""Mask enforcement: pruned weights stay exactly 0 under SGD, Adam and AdamW."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from underbudget import sparsity
from underbudget.sparsity import MaskCallback, MaskedOptimizer, MaskSet


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2),
}


def batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        yield torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)


def check_invariant(model, masks, density):
    total_kept = 0
    for name, mask in masks.items():
        w = model.get_parameter(name)
        assert torch.all(w[~mask] == 0), f"{name}: a pruned weight moved"
        assert bool((w[mask] != 0).all()), f"{name}: a kept weight is exactly 0"
        total_kept += int(mask.count_nonzero())
    layers = len(masks)
    assert abs(total_kept - density * masks.numel()) <= layers


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_masked_optimizer_keeps_pruned_weights_at_zero(opt):
    model = TinyCNN()
    masks = sparsity.prune(model, density=0.3)
    before = masks.layer_densities()
    optimizer = MaskedOptimizer(OPTIMIZERS[opt](model.parameters()), masks)
    for x, y in batches(50):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        check_invariant(model, masks, 0.3)
    assert masks.layer_densities() == before
    for name, mask in masks.items():
        state = optimizer.state[model.get_parameter(name)]
        for key in ("momentum_buffer", "exp_avg", "exp_avg_sq"):
            if key in state:
                assert torch.all(state[key][~mask] == 0), key


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_unmasked_optimizer_would_revive_weights(opt):
    """The check above can fail: plain training moves pruned weights."""
    model = TinyCNN()
    masks = sparsity.prune(model, density=0.3)
    optimizer = OPTIMIZERS[opt](model.parameters())
    for x, y in batches(3):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    w = model.conv2.weight
    assert bool((w[~masks["conv2.weight"]] != 0).any())


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_mask_callback_in_a_hand_loop(opt):
    model = TinyCNN()
    masks = sparsity.prune(model, density=0.25, scope="layerwise")
    optimizer = OPTIMIZERS[opt](model.parameters())
    logs = []
    trainer = types.SimpleNamespace(
        model=model, optimizer=optimizer, step=0, log=lambda e, **v: logs.append((e, v))
    )
    cb = MaskCallback(masks)
    cb.before_run(trainer)
    for x, y in batches(50):
        cb.before_step(trainer, (x, y))
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        cb.before_optimizer_step(trainer)
        optimizer.step()
        cb.after_optimizer_step(trainer)
        trainer.step += 1
        check_invariant(model, masks, 0.25)
    # one change logged (the initial masks), with measured density and nonzero FLOPs
    assert [e for e, _ in logs] == ["mask_update"]
    report = logs[0][1]
    assert report["density"] == pytest.approx(masks.density())
    assert report["flops_nonzero"] < report["flops_dense"]


def test_state_is_reset_when_masks_change_mid_training():
    model = TinyCNN()
    masks = sparsity.prune(model, density=0.5)
    optimizer = MaskedOptimizer(torch.optim.Adam(model.parameters(), lr=1e-2), masks)
    data = list(batches(6))
    for x, y in data[:3]:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    old = masks.copy()
    sparsity.prune(model, density=0.25, masks=masks)  # nested, in place
    newly = {n: old[n] & ~masks[n] for n in masks}
    p = model.get_parameter("fc.weight")
    assert bool((optimizer.state[p]["exp_avg"][newly["fc.weight"]] != 0).any())
    x, y = data[3]
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    check_invariant(model, masks, 0.25)
    for name in masks:
        state = optimizer.state[model.get_parameter(name)]
        assert torch.all(state["exp_avg"][~masks[name]] == 0)
        assert torch.all(state["exp_avg_sq"][~masks[name]] == 0)


def test_reset_state_zeroes_every_per_weight_buffer():
    model = nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters(), lr=0.1, amsgrad=True)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    masks = MaskSet.from_model(model)
    wrapped = MaskedOptimizer(opt, masks)
    where = torch.zeros(3, 4, dtype=torch.bool)
    where[1, 2] = True
    assert wrapped.reset_state({"weight": where}) == 3
    state = opt.state[model.weight]
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        assert state[key][1, 2] == 0
        assert int((state[key] != 0).count_nonzero()) == 11


def test_masked_optimizer_works_with_lr_schedulers():
    model = TinyCNN()
    masks = sparsity.prune(model, density=0.5)
    opt = MaskedOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), masks)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = next(batches(1))
    F.cross_entropy(model(x), y).backward()
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    assert opt.optimizer.param_groups[0]["lr"] == pytest.approx(0.5)


def test_mask_callback_checkpoint_round_trip():
    model = TinyCNN()
    masks = sparsity.prune(model, density=0.3)
    cb = MaskCallback(masks)
    state = cb.state_dict()
    fresh_model = TinyCNN()
    fresh = MaskCallback()
    fresh.load_state_dict(state)
    trainer = types.SimpleNamespace(model=fresh_model, optimizer=None)
    fresh.before_run(trainer)
    for name in masks:
        assert torch.equal(fresh.masks[name], masks[name])
        assert torch.all(fresh_model.get_parameter(name)[~masks[name]] == 0)


def test_callback_logs_a_change_made_between_stages():
    model = TinyCNN()
    masks = sparsity.prune(model, density=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    logs = []
    trainer = types.SimpleNamespace(
        model=model, optimizer=optimizer, step=0, log=lambda e, **v: logs.append((e, v))
    )
    cb = MaskCallback(masks, input_shape=(3, 8, 8))
    cb.before_run(trainer)

    def one_step(x, y):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        cb.before_optimizer_step(trainer)
        optimizer.step()
        cb.after_optimizer_step(trainer)

    for x, y in batches(2):
        one_step(x, y)
    sparsity.prune(model, density=0.2, masks=masks)  # e.g. APP's next stage
    cb.before_stage(trainer, 1)
    for x, y in batches(2, seed=1):
        one_step(x, y)
        check_invariant(model, masks, 0.2)
    densities = [v["density"] for e, v in logs if e == "mask_update"]
    assert densities == pytest.approx([0.5, 0.2], abs=1e-3)
    for name in masks:
        buf = optimizer.state[model.get_parameter(name)]["momentum_buffer"]
        assert torch.all(buf[~masks[name]] == 0)
