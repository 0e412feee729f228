"""D2-Sparse as a strategy of the ``anytime`` method (``method.strategy=d2sparse``).

The pair is trained across the stream of megabatches at the final density from the start
(like the RigL strategy). F updates every ``method.interval`` steps with its own drop
fraction, S every five intervals; both freeze after ``method.t_end`` of the whole stream.
Intervals are never shorter than one pass over the first megabatch's training data. Other
D2-Sparse settings take their defaults, or the values of a ``d2sparse`` mapping in the
anytime config when it has one. S is what is evaluated, measured and deployed; training
FLOPs count both networks.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from ...config import _build
from ...errors import ConfigError
from ...models import init_weights, seeded_init
from ...sparsity import MaskSet
from ...train.callbacks import Callback
from ..anytime.strategies import StrategySetup, StreamContext, register_strategy
from .build import build_dual
from .config import D2SparseConfig

SLOW_FACTOR = 5  # S's interval in units of F's


class PlainMasks(Callback):
    """Keeps a copy of S's masks under the deployed network's own parameter names in step
    with the pair's masks (what the anytime loop measures)."""

    name = "d2_plain_masks"

    def __init__(self, source: MaskSet, prefix: str, plain: MaskSet):
        self.source, self.prefix, self.plain = source, prefix, plain
        self._seen = source.version

    def sync(self) -> None:
        if self.source.version != self._seen:
            self.plain.update({n[len(self.prefix) :]: m.clone() for n, m in self.source.items()})
            self._seen = self.source.version

    def before_stage(self, trainer: Any, stage: int) -> None:
        self._seen = -1  # after a resume the pair's masks were just restored
        self.sync()

    def after_optimizer_step(self, trainer: Any) -> None:
        self.sync()


def _fresh(model: nn.Module, seed: int, key: str) -> nn.Module:
    """A new network of ``model``'s architecture, re-initialised from (seed, key)."""
    net = copy.deepcopy(model)
    with seeded_init(seed, key):
        for module in net.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        init_weights(net)
    return net


def settings(ctx: StreamContext) -> D2SparseConfig:
    """The D2-Sparse settings of an anytime run (see the module docstring)."""
    a = ctx.acfg
    values = {
        "density": ctx.densities[-1],
        "exclude_first": a.exclude_first,
        "exclude_last": a.exclude_last,
        "fast_interval": a.interval,
        "slow_interval": SLOW_FACTOR * a.interval,
        "fast_t_end": a.t_end,
        "slow_t_end": a.t_end,
    }
    if not a.warm_start:
        raise ConfigError(
            "the anytime d2sparse strategy carries both networks and their masks "
            "across megabatches: set method.warm_start=true"
        )
    values.update(getattr(a, "d2sparse", None) or {})
    mcfg = _build(D2SparseConfig, values, "method.d2sparse")
    mcfg.validate()
    if mcfg.shared_weights:
        raise ConfigError(
            "the anytime d2sparse strategy deploys S as a network of its own: "
            "shared_weights is not supported there; unset it"
        )
    return mcfg


@register_strategy("d2sparse")
def d2sparse_strategy(ctx: StreamContext, model: nn.Module) -> StrategySetup:
    """F (the given network) and S (a fresh one) trained together across the stream."""
    mcfg = settings(ctx)
    first = int(ctx.plan.stage_train[0].numel())
    per_epoch = max(1, math.ceil(first / ctx.cfg.data.batch_size))

    def make_net(key: str) -> nn.Module:
        return model if key == "init-fast" else _fresh(model, ctx.seed, key)

    setup = build_dual(
        mcfg,
        make_net,
        steps_per_epoch=per_epoch,
        total_steps=ctx.total_steps,
        seed=ctx.seed,
        label_smoothing=ctx.cfg.train.label_smoothing,
    )
    deployed, plain = setup.deployed()
    prefix = "" if setup.mode == "single" else "slow."
    sync = PlainMasks(setup.masks["slow"], prefix, plain)
    plain.bind(deployed)
    factor = {"dual": 2.0, "ema": 4.0 / 3.0, "single": 1.0}[setup.mode]
    with torch.no_grad():
        plain.apply(deployed)
    return StrategySetup(
        model=setup.model,
        masks=plain,
        callbacks=[*setup.callbacks, sync],
        loss_fn=setup.loss_fn,
        eval_forward=setup.eval_forward,
        deployed=deployed,
        train_cost_factor=factor,
    )
