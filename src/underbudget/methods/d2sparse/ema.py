"""S as an exponential moving average of F's weights under S's own mask (CLS-ER style).

After every optimizer step t (1-based), with probability ``rate`` (a seeded draw per step)::

    a = min(decay, 1 - 1 / (t + 1))   if warmup else decay
    theta_S <- (a * theta_S + (1 - a) * theta_F) * M_S

for every parameter and floating-point buffer (BatchNorm statistics); integer buffers are
copied. Pruned positions of S stay exactly zero; where S is alive but F is not, S decays
towards zero. S never receives a ``.grad``, so no optimizer moves it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...sparsity import MaskSet
from ...train.callbacks import Callback
from ...utils.seeding import generator


def ema_decay(step: int, decay: float, warmup: bool) -> float:
    """The decay used after optimizer step ``step`` (1-based)."""
    return min(decay, 1.0 - 1.0 / (step + 1)) if warmup else decay


def ema_draw(seed: int, step: int) -> float:
    """The seeded uniform draw deciding whether the EMA is updated after ``step``."""
    return float(torch.rand((), generator=generator(seed, "ema", step)))


class SlowEMA(Callback):
    """Updates S from F after each optimizer step (see the module docstring)."""

    name = "d2_ema"

    def __init__(
        self,
        fast: nn.Module,
        slow: nn.Module,
        slow_masks: MaskSet,
        prefix: str,
        decay: float = 0.999,
        rate: float = 1.0,
        warmup: bool = True,
        seed: int = 0,
    ):
        self.fast, self.slow = fast, slow
        self.slow_masks, self.prefix = slow_masks, prefix
        self.decay, self.rate, self.warmup, self.seed = decay, rate, warmup, int(seed)
        self.steps = 0
        self.updates = 0

    @torch.no_grad()
    def update(self, a: float) -> None:
        """One EMA step with decay ``a``, then S's mask applied."""
        fast_p = dict(self.fast.named_parameters())
        for name, p in self.slow.named_parameters():
            p.mul_(a).add_(fast_p[name], alpha=1.0 - a)
            if self.prefix + name in self.slow_masks:
                mask = self.slow_masks[self.prefix + name]
                p.mul_(mask.to(device=p.device, dtype=p.dtype))
        fast_b = dict(self.fast.named_buffers())
        for name, b in self.slow.named_buffers():
            if b.is_floating_point():
                b.mul_(a).add_(fast_b[name], alpha=1.0 - a)
            else:
                b.copy_(fast_b[name])

    def after_optimizer_step(self, trainer: Any) -> None:
        self.steps += 1
        if self.rate >= 1.0 or ema_draw(self.seed, self.steps) < self.rate:
            self.update(ema_decay(self.steps, self.decay, self.warmup))
            self.updates += 1

    def state_dict(self) -> dict:
        return {"steps": self.steps, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state.get("steps", 0))
        self.updates = int(state.get("updates", 0))
