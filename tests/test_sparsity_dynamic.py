"""SET and RigL: drop/grow counts, growth rules, zero-initialised growth, fixed densities."""

from __future__ import annotations

import copy
import math
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from underbudget.sparsity import SET, RigL


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2),
}
STATE_KEYS = ("momentum_buffer", "exp_avg", "exp_avg_sq")


def make_trainer(model, optimizer, total_steps=50):
    logs = []
    trainer = types.SimpleNamespace(
        model=model,
        optimizer=optimizer,
        step=0,
        total_steps=total_steps,
        log=lambda event, **v: logs.append((event, v)),
    )
    return trainer, logs


def batch(step):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)


def cosine(alpha, t, t_end):
    return alpha / 2 * (1 + math.cos(math.pi * t / t_end))


def run(cb, model, optimizer, steps, trainer=None, on_update=None, after=None):
    trainer = trainer or make_trainer(model, optimizer)[0]
    if trainer.step == 0:
        cb.before_run(trainer)
    for _ in range(steps):
        x, y = batch(trainer.step)
        cb.before_step(trainer, (x, y))
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        snapshot = None
        if on_update is not None:
            snapshot = on_update(trainer)
        cb.before_optimizer_step(trainer)
        if after is not None:
            after(trainer, snapshot, "before_step")
        optimizer.step()
        cb.after_optimizer_step(trainer)
        trainer.step += 1
        if after is not None:
            after(trainer, snapshot, "after_step")
    return trainer


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_rigl_counts_growth_and_zero_init(opt):
    torch.manual_seed(0)
    model = TinyCNN()
    optimizer = OPTIMIZERS[opt](model.parameters())
    cb = RigL(density=0.2, update_interval=5, alpha=0.3, t_end=40)
    trainer, logs = make_trainer(model, optimizer)
    cb.before_run(trainer)
    counts = cb.masks.layer_nonzeros()
    initial = cb.masks.copy()
    updates = []

    def snapshot(tr):
        if cb.steps % 5 or cb.steps == 0 or cb.steps >= 40:
            return None
        return {
            "t": cb.steps,
            "masks": cb.masks.copy(),
            "w": {n: model.get_parameter(n).detach().clone() for n in cb.masks},
            "g": {n: model.get_parameter(n).grad.clone() for n in cb.masks},
        }

    def check(tr, snap, phase):
        for name, mask in cb.masks.items():
            w = model.get_parameter(name)
            assert torch.all(w[~mask] == 0), f"pruned weight moved in {name}"
            assert int(mask.count_nonzero()) == counts[name]
        if snap is None:
            return
        f = cosine(0.3, snap["t"], 40)
        for name, old in snap["masks"].items():
            new = cb.masks[name]
            alive = int(old.count_nonzero())
            k = min(round(f * alive), alive, old.numel() - alive)
            dropped, grown = old & ~new, new & ~old
            assert int(dropped.count_nonzero()) == k == int(grown.count_nonzero())
            if phase == "before_step":
                updates.append((snap["t"], name, k))
                w, g = snap["w"][name], snap["g"][name]
                # dropped: the k smallest magnitudes among the alive weights
                if k:
                    assert w[dropped].abs().max() <= w[old & new].abs().min()
                    # grown: the k largest dense-gradient magnitudes among inactive positions
                    assert g[grown].abs().min() >= g[~old & ~grown].abs().max()
            else:  # after the optimizer step: grown weights are exactly 0 with clean state
                p = model.get_parameter(name)
                assert torch.all(p[grown] == 0)
                state = optimizer.state[p]
                for key in STATE_KEYS:
                    if key in state:
                        assert torch.all(state[key][grown] == 0), key
                        assert torch.all(state[key][dropped] == 0), key

    trainer.step = 0
    for _ in range(50):
        x, y = batch(trainer.step)
        cb.before_step(trainer, (x, y))
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        snap = snapshot(trainer)
        cb.before_optimizer_step(trainer)
        check(trainer, snap, "before_step")
        optimizer.step()
        cb.after_optimizer_step(trainer)
        trainer.step += 1
        check(trainer, snap, "after_step")
    assert sorted({t for t, _, _ in updates}) == [5, 10, 15, 20, 25, 30, 35]
    events = [v for e, v in logs if e == "mask_update"]
    assert len(events) == 1 + 7
    ever = [e["ever_active"] for e in events[1:]]
    assert ever == sorted(ever) and ever[-1] > 0.2
    last = events[-1]
    assert last["iou_initial"] == pytest.approx(cb.masks.iou(initial))
    assert 0 < last["iou_previous"] < 1 and last["method"] == "rigl"
    assert last["layer_densities"] == pytest.approx(initial.layer_densities())


def test_set_grows_at_random_seeded():
    def final_masks(seed):
        torch.manual_seed(0)
        model = TinyCNN()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        cb = SET(density=0.3, update_interval=4, alpha=0.5, t_end=1.0, seed=seed)
        run(cb, model, optimizer, 9)
        return cb

    a, b, c = final_masks(1), final_masks(1), final_masks(2)
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
    assert not all(torch.equal(a.masks[n], c.masks[n]) for n in a.masks)
    assert a.masks.layer_nonzeros() == a.initial.layer_nonzeros()
    assert a.last_update["grown"] == a.last_update["dropped"] > 0


def test_set_growth_is_not_gradient_driven():
    torch.manual_seed(0)
    model = TinyCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    cb = SET(density=0.3, update_interval=3, alpha=0.3, t_end=10, seed=0)
    seen = {}

    def grab(tr):
        if cb.steps == 3:
            seen["g"] = model.fc.weight.grad.abs().clone()
            seen["m"] = cb.masks["fc.weight"].clone()

    run(cb, model, optimizer, 4, on_update=grab)
    grown = cb.masks["fc.weight"] & ~seen["m"]
    k = int(grown.count_nonzero())
    top = seen["g"].masked_fill(seen["m"], -1).reshape(-1).topk(k).indices
    assert not bool(grown.reshape(-1)[top].all())


def test_no_updates_after_t_end_and_fraction_of_total_steps():
    torch.manual_seed(0)
    model = TinyCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    cb = RigL(density=0.2, update_interval=2, t_end=0.5)
    trainer, logs = make_trainer(model, optimizer, total_steps=10)
    run(cb, model, optimizer, 10, trainer=trainer)
    assert cb.t_end_steps == 5
    events = [v for e, v in logs if e == "mask_update"]
    assert [e.get("update_step") for e in events] == [None, 2, 4]


def test_checkpoint_resume_continues_exactly():
    def fresh():
        torch.manual_seed(0)
        model = TinyCNN()
        return model, torch.optim.Adam(model.parameters(), lr=1e-2)

    model, opt = fresh()
    whole = RigL(density=0.25, update_interval=3, t_end=20, total_steps=20)
    run(whole, model, opt, 12)

    model_a, opt_a = fresh()
    part = RigL(density=0.25, update_interval=3, t_end=20, total_steps=20)
    trainer = run(part, model_a, opt_a, 7)
    saved = (
        copy.deepcopy(model_a.state_dict()),
        copy.deepcopy(opt_a.state_dict()),
        part.state_dict(),
    )

    model_b, opt_b = fresh()
    model_b.load_state_dict(saved[0])
    opt_b.load_state_dict(saved[1])
    resumed = RigL(density=0.25, update_interval=3, t_end=20, total_steps=20)
    resumed.load_state_dict(saved[2])
    trainer_b, _ = make_trainer(model_b, opt_b)
    trainer_b.step = trainer.step
    resumed.before_run(trainer_b)
    run(resumed, model_b, opt_b, 5, trainer=trainer_b)
    for n in whole.masks:
        assert torch.equal(resumed.masks[n], whole.masks[n])
        torch.testing.assert_close(model_b.get_parameter(n), model.get_parameter(n))
    assert resumed.ever_active.nonzeros() == whole.ever_active.nonzeros()


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_set_keeps_pruned_weights_at_zero_and_densities_fixed(opt):
    torch.manual_seed(0)
    model = TinyCNN()
    optimizer = OPTIMIZERS[opt](model.parameters())
    cb = SET(density=0.2, update_interval=5, alpha=0.3, t_end=45)
    trainer, logs = make_trainer(model, optimizer)
    cb.before_run(trainer)
    counts = cb.masks.layer_nonzeros()

    def check(tr, snap, phase):
        for name, mask in cb.masks.items():
            assert torch.all(model.get_parameter(name)[~mask] == 0), name
            assert int(mask.count_nonzero()) == counts[name]

    run(cb, model, optimizer, 50, trainer=trainer, after=check)
    assert cb.masks.iou(cb.initial) < 1.0
    assert len([e for e, _ in logs if e == "mask_update"]) == 1 + 8
