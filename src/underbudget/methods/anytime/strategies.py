"""Anytime strategies: how a network is made sparse while the megabatches arrive.

Every strategy runs in the same loop with the same stream, seeds and budgets; they differ
only in the callbacks (and, for two-network strategies, the model and loss) they set up.

- ``dense``: no pruning.
- ``osp``: one-shot pruning to the final density before training on B_1 (criterion on a
  scoring subset of B_1, weights at init); the mask then stays fixed.
- ``app``: before each megabatch b, score the weights as trained on the previous stage
  (random init at b = 1) and prune the alive weights down to d_b (nested masks),
  d_b = 0.8^{tau_b}, tau_b = linspace(1, tau, T).
- ``gmp``: gradual magnitude pruning (cubic) over the whole stream.
- ``rigl`` / ``set``: dynamic sparse training at the final density from the start (ERK).
- ``imp``: per megabatch, train, prune by magnitude to d_b, rewind the survivors to their
  values at the start of the stage and retrain (two trainer stages per megabatch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ... import sparsity
from ...train.callbacks import Callback


@dataclass
class StreamContext:
    """What a strategy may use: settings, the stream plan and the data."""

    cfg: Any
    acfg: Any
    plan: Any
    densities: list[float]  # progressive schedule d_b (APP, IMP); the last is the target
    scheduled: list[float]  # what this strategy's density should be after each megabatch
    total_steps: int  # planned optimizer steps over the whole stream
    targets: Any
    score_batches: Callable[[int], list]  # megabatch index -> [(x, y), ...]
    seed: int
    input_shape: tuple[int, ...] = ()  # one example's shape (C, H, W)
    on_scoring: Callable[[str, int], None] | None = None  # (criterion, examples) before a prune


@dataclass
class StrategySetup:
    """What the anytime loop needs from a strategy."""

    model: torch.nn.Module  # the module the trainer trains
    masks: Any  # MaskSet of the deployed network (measurement), None when not sparse
    callbacks: list[Callback] = field(default_factory=list)
    loss_fn: Callable | None = None
    eval_forward: Callable | None = None
    deployed: torch.nn.Module | None = None  # the one network that would be deployed
    train_cost_factor: float = 1.0  # networks trained per step (two-network methods: 2)
    stages_per_megabatch: int = 1
    on_stage: Callable | None = None  # (trainer, megabatch, phase) before a stage trains

    def deployed_model(self) -> torch.nn.Module:
        return self.deployed if self.deployed is not None else self.model


StrategyFactory = Callable[[StreamContext, torch.nn.Module], StrategySetup]
STRATEGIES: dict[str, StrategyFactory] = {}


def register_strategy(name: str):
    """Decorator: ``factory(ctx, model) -> StrategySetup`` becomes anytime strategy ``name``."""

    def wrap(fn: StrategyFactory) -> StrategyFactory:
        STRATEGIES[name] = fn
        return fn

    return wrap


def _masked(ctx: StreamContext, model: torch.nn.Module) -> tuple[Any, Callback]:
    masks = sparsity.MaskSet.from_model(model, ctx.targets)
    return masks, sparsity.MaskCallback(masks)


def _prune(ctx: StreamContext, trainer, masks, density: float, b: int,
           criterion: str | None = None, rewind: dict | None = None) -> None:
    """Prune to ``density`` before megabatch ``b``; with ``rewind`` (a state dict) an IMP
    level (:func:`underbudget.sparsity.imp_step`): the survivors are rewound to it."""
    crit = criterion or ctx.acfg.criterion
    needs = sparsity.NEEDS.get(crit, ())
    data = ctx.score_batches(b) if "data" in needs else None
    examples = sum(int(y.numel()) for _, y in data) if data is not None else 0
    if ctx.on_scoring is not None:  # the cost meter reads the FLOPs of the unpruned network
        ctx.on_scoring(crit, examples)
    extra = {"input_shape": ctx.input_shape} if "input_shape" in needs else {}
    options = dict(scope=ctx.acfg.scope, data=data, targets=ctx.targets, masks=masks,
                   seed=ctx.seed + 7919 * (b + 1), **extra)
    if rewind is None:
        sparsity.prune(trainer.model, density, criterion=crit, **options)
    else:
        sparsity.imp_step(trainer.model, density, rewind, criterion=crit, **options)
    trainer.log("prune", megabatch=b, criterion=crit, scheduled=density,
                measured=masks.density(), scoring_examples=examples)


@register_strategy("dense")
def dense(ctx: StreamContext, model: torch.nn.Module) -> StrategySetup:
    return StrategySetup(model=model, masks=None)


@register_strategy("osp")
def osp(ctx: StreamContext, model: torch.nn.Module) -> StrategySetup:
    masks, cb = _masked(ctx, model)
    final = ctx.densities[-1]

    def on_stage(trainer, b: int, phase: int) -> None:
        if b == 0:
            _prune(ctx, trainer, masks, final, b)

    return StrategySetup(model=model, masks=masks, callbacks=[cb], on_stage=on_stage)


@register_strategy("app")
def app(ctx: StreamContext, model: torch.nn.Module) -> StrategySetup:
    masks, cb = _masked(ctx, model)

    def on_stage(trainer, b: int, phase: int) -> None:
        _prune(ctx, trainer, masks, ctx.densities[b], b)

    return StrategySetup(model=model, masks=masks, callbacks=[cb], on_stage=on_stage)


@register_strategy("gmp")
def gmp(ctx: StreamContext, model: torch.nn.Module) -> StrategySetup:
    a = ctx.acfg
    # the final density is reached at gmp_end of the stream, pruning every interval steps
    t0, n, dt = sparsity.gradual_steps(ctx.total_steps, 0.0, a.gmp_end, a.interval)
    cb = sparsity.GradualMagnitude(ctx.densities[-1], d_initial=1.0, t0=t0, n=n, dt=dt,
                                   scope=a.scope, targets=ctx.targets)
    cb.setup(_Holder(model))
    return StrategySetup(model=model, masks=cb.masks, callbacks=[cb])


def _dynamic(kind: str, ctx: StreamContext, model: torch.nn.Module) -> StrategySetup:
    a = ctx.acfg
    cls = sparsity.RigL if kind == "rigl" else sparsity.SET
    cb = cls(density=ctx.densities[-1], update_interval=a.interval, alpha=a.alpha,
             t_end=a.t_end, total_steps=ctx.total_steps, init="erk", targets=ctx.targets,
             seed=ctx.seed)
    cb.setup(_Holder(model))
    return StrategySetup(model=model, masks=cb.masks, callbacks=[cb])


@register_strategy("rigl")
def rigl(ctx: StreamContext, model: torch.nn.Module) -> StrategySetup:
    return _dynamic("rigl", ctx, model)


@register_strategy("set")
def set_(ctx: StreamContext, model: torch.nn.Module) -> StrategySetup:
    return _dynamic("set", ctx, model)


class RewindPoint(Callback):
    """Holds the weights at the start of each IMP stage (checkpointed, so resume is exact).

    The copy is taken at the stage's first epoch, after every ``before_stage`` hook, so a
    re-initialisation (``method.warm_start=false``) is what IMP rewinds to.
    """

    name = "imp_rewind"

    def __init__(self):
        self.weights: dict[str, torch.Tensor] | None = None
        self.pending = False

    def before_epoch(self, trainer) -> None:
        if self.pending:
            self.weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
            self.pending = False

    def state_dict(self) -> dict:
        return {"weights": self.weights, "pending": self.pending}

    def load_state_dict(self, state: dict) -> None:
        self.weights = state.get("weights")
        self.pending = bool(state.get("pending", False))


@register_strategy("imp")
def imp(ctx: StreamContext, model: torch.nn.Module) -> StrategySetup:
    masks, cb = _masked(ctx, model)
    rewind = RewindPoint()

    def on_stage(trainer, b: int, phase: int) -> None:
        if phase == 0:
            rewind.pending = True
            return
        _prune(ctx, trainer, masks, ctx.densities[b], b, criterion="magnitude",
               rewind=rewind.weights)
        trainer.log("rewind", megabatch=b)

    return StrategySetup(model=model, masks=masks, callbacks=[cb, rewind], on_stage=on_stage,
                         stages_per_megabatch=2)


class _Holder:
    """Minimal trainer stand-in for binding masks to a model before training starts."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
