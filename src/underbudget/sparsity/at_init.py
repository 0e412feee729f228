"""Pruning at initialisation as a training callback: score once before the first step, then
train with the masks fixed (SNIP, GraSP, SynFlow, magnitude, random, or any registered
criterion)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from underbudget.errors import ConfigError
from underbudget.sparsity.criteria import NEEDS
from underbudget.sparsity.enforce import MaskCallback
from underbudget.sparsity.mask import MaskSet
from underbudget.sparsity.prune import prune
from underbudget.sparsity.targets import unwrap

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def criterion_options(
    criterion: str, data_fn: Callable[[], Batches] | None, input_shape: Sequence[int] | None
) -> dict:
    """Keyword arguments :func:`~underbudget.sparsity.prune` needs for ``criterion``
    (scoring batches for data-driven criteria, the input shape for SynFlow)."""
    if "data" in NEEDS.get(criterion, ()):
        if data_fn is None:
            raise ConfigError(f"criterion {criterion!r} needs scoring data from the training set")
        return {"data": data_fn()}
    if criterion == "synflow":
        if input_shape is None and data_fn is not None:
            return {"data": data_fn()}
        return {"input_shape": None if input_shape is None else tuple(input_shape)}
    return {}


class PruneAtInit(MaskCallback):
    """Prune once, before the first training step, then keep the masks fixed.

    The pruning happens in ``before_stage`` of the first stage and is recorded in the
    checkpointed state, so a resumed run restores the masks instead of scoring again.
    """

    name = "prune_at_init"

    def __init__(
        self,
        masks: MaskSet,
        density: float,
        criterion: str = "magnitude",
        scope: str = "global",
        data_fn: Callable[[], Batches] | None = None,
        iterations: int | None = None,
        seed: int = 0,
        input_shape: Sequence[int] | None = None,
        log: bool = True,
    ):
        super().__init__(masks, log=log, input_shape=input_shape)
        self.density, self.criterion, self.scope = float(density), criterion, scope
        self.data_fn, self.iterations, self.seed = data_fn, iterations, int(seed)
        self.pruned = False

    def before_stage(self, trainer: Any, stage: int) -> None:
        super().before_stage(trainer, stage)
        if not self.pruned:
            self.prune_now(trainer)

    def prune_now(self, trainer: Any) -> None:
        """Score the current (initial) weights and prune to the target density."""
        model = unwrap(trainer.model)
        t0 = time.perf_counter()
        opts = criterion_options(self.criterion, self.data_fn, self.input_shape)
        prune(
            model,
            self.density,
            self.criterion,
            self.scope,
            masks=self.masks,
            seed=self.seed,
            iterations=self.iterations,
            **opts,
        )
        self.pruned = True
        self.enforcer.sync(trainer.optimizer)
        self.on_change(
            trainer,
            criterion=self.criterion,
            scope=self.scope,
            target_density=self.density,
            iterations=self.iterations,
            scoring_time=time.perf_counter() - t0,
        )

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["pruned"] = self.pruned
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.pruned = bool(state.get("pruned", self.pruned))
