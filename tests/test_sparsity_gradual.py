"""Gradual magnitude pruning on the cubic schedule, through the callback hooks."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from underbudget import sparsity
from underbudget.errors import ConfigError


def test_gradual_follows_the_cubic_schedule_with_nested_masks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    logs = []
    trainer = types.SimpleNamespace(
        model=model, optimizer=opt, step=0, log=lambda e, **v: logs.append((e, v))
    )
    cb = sparsity.GradualMagnitude(d_final=0.1, t0=2, n=4, dt=3)
    cb.before_run(trainer)
    previous = cb.masks.copy()
    seen = {}
    for _ in range(20):
        x, y = torch.randn(16, 12), torch.randint(0, 4, (16,))
        cb.before_step(trainer, (x, y))
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        cb.before_optimizer_step(trainer)
        opt.step()
        cb.after_optimizer_step(trainer)
        trainer.step += 1
        assert cb.masks.is_subset_of(previous)
        previous = cb.masks.copy()
        seen[cb.steps] = cb.masks.nonzeros()
        for name, mask in cb.masks.items():
            assert torch.all(model.get_parameter(name)[~mask] == 0)
    total = cb.masks.numel()
    for t in (2, 5, 8, 11, 14):
        target = sparsity.cubic_density(t, 0.1, 1.0, t0=2, n=4, dt=3)
        assert seen[t] == sparsity.keep_count(target, total), t
    assert seen[13] == seen[11] and seen[20] == seen[14]
    events = [v for e, v in logs if e == "mask_update"]
    assert [v["pruning_step"] for v in events if "pruning_step" in v] == [5, 8, 11, 14]
    assert events[-1]["density"] == pytest.approx(0.1, abs=1 / total)


def test_gradual_rejects_bad_settings():
    with pytest.raises(ConfigError):
        sparsity.GradualMagnitude(d_final=0.5, d_initial=0.2)
    with pytest.raises(ConfigError, match="did you mean 'global'"):
        sparsity.GradualMagnitude(d_final=0.5, scope="globall")
