"""Mask dynamics of the two networks, each on its own timescale.

With separate weights, each network gets the sparsity engine's RigL/SET callback restricted to
its own parameter names (one MaskSet per network, so drop/grow counts are per network and per
layer), under a checkpoint key of its own. :class:`NetDynamic` adds growth of S guided by F's
weights. With shared weights, :class:`SharedDynamic` updates the two masks of one network:
drop by the magnitude of the shared weight, grow by the dense gradient with respect to that
network's effective (masked) weights, and keep the weight outside both masks at zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ...sparsity import MaskSet, Targets, mask_report, profile_flops, prune
from ...sparsity.dynamic import DynamicSparse, drop_and_grow, update_record, update_size
from ...sparsity.enforce import MaskEnforcer
from ...sparsity.targets import unwrap
from ...train.callbacks import Callback
from ...utils.seeding import generator


def initial_masks(
    net: nn.Module, prefix: str, density: float, init: str, targets: Targets, seed: int
) -> MaskSet:
    """Random masks at ``density`` with ``init``'s per-layer allocation (ERK by default),
    applied to ``net`` and named ``prefix + <parameter name>``."""
    masks = prune(net, density, "random", init, targets=targets, seed=seed)
    return MaskSet({prefix + n: m for n, m in masks.items()})


def effective_interval(interval: int, steps_per_epoch: int, floor: bool) -> int:
    """Update interval in steps; with ``floor`` never shorter than one pass over the data."""
    return max(int(interval), int(steps_per_epoch)) if floor else int(interval)


@dataclass
class Timescale:
    """When and how much a network's mask changes (RigL's schedule)."""

    growth: str
    interval: int
    alpha: float
    t_end: int  # steps
    decay: str = "cosine"

    def due(self, step: int) -> bool:
        return step > 0 and step % self.interval == 0 and step < self.t_end

    def fraction(self, step: int) -> float:
        if self.decay == "constant":
            return self.alpha
        return self.alpha / 2.0 * (1.0 + math.cos(math.pi * step / self.t_end))


def guided_scores(peer_weight: Tensor, peer_mask: Tensor, grad: Tensor | None) -> Tensor:
    """Growth scores that prefer positions where the peer is alive, by its weight magnitude;
    the other positions follow, ordered by ``grad`` magnitude (when given)."""
    w = peer_weight.detach().abs().float()
    alive = peer_mask.to(w.device)
    if grad is not None:
        g = grad.detach().abs().float()
        rest = g / g.max().clamp_min(1e-30) - 2.0  # in [-2, -1]: below every alive position
    else:
        rest = torch.full_like(w, -2.0)
    return torch.where(alive, w, rest)


class NetDynamic(DynamicSparse):
    """The engine's drop-by-magnitude / grow update for one network of the pair.

    ``growth``: ``rigl`` (dense gradient), ``set`` (seeded random) or ``fast`` (where the peer
    network F is alive and large: ``peer(name) -> (weight, mask)``, ties broken by gradient).
    ``key`` names the callback in checkpoints and logs (two callbacks must not share one).
    ``grad_source(name)`` replaces ``param.grad`` as the dense gradient (S as an EMA of F has
    no ``.grad``: its gradient is computed only for growth). With ``network`` (the sub-module
    the masks belong to, their names carrying ``prefix``), the ``mask_update`` events measure
    that network alone (its densities over all its parameters, its FLOPs).
    """

    def __init__(
        self,
        key: str,
        growth: str = "rigl",
        peer: Callable[[str], tuple[Tensor, Tensor]] | None = None,
        grad_source: Callable[[str], Tensor | None] | None = None,
        network: nn.Module | None = None,
        prefix: str = "",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.name = key
        self.growth = growth
        self.method = growth
        self.peer = peer
        self.grad_source = grad_source
        self.network, self.prefix = network, prefix

    def report(self, trainer: Any) -> dict:
        if self.network is None:
            return super().report(trainer)
        plain = MaskSet({n[len(self.prefix) :]: m for n, m in self.masks.items()})
        if self._profile is None and self.input_shape is not None:
            self._profile = profile_flops(self.network, self.input_shape)
        return mask_report(plain, self.network, profile=self._profile)

    def dense_grad(self, name: str, param: Tensor) -> Tensor | None:
        if self.grad_source is not None:
            return self.grad_source(name)
        return param.grad

    def grow_scores(self, name: str, param: Tensor, step: int) -> Tensor | None:
        if self.growth == "set":
            return torch.rand(param.shape, generator=generator(self.seed, "set-grow", step, name))
        grad = self.dense_grad(name, param)
        if self.growth == "fast":
            weight, mask = self.peer(name)
            return guided_scores(weight, mask, grad)
        return None if grad is None else grad.detach().abs()

    def update_due(self, trainer: Any) -> bool:
        """True when this network's mask is updated at the coming optimizer step."""
        return self.is_update(self.steps, self.resolve_t_end(trainer))


class SharedDynamic(Callback):
    """Two masks over the weights of one :class:`SharedDual`, on their own timescales.

    Only the union of the masks is enforced on the weights (weights outside both are zero,
    with optimizer state reset where the union changes); each mask is applied in its
    network's forward pass. A grown position keeps the shared weight's current value (zero
    unless the other network uses it).
    """

    name = "d2_shared"

    def __init__(
        self,
        model: nn.Module,
        masks: dict[str, MaskSet],
        timescales: dict[str, Timescale],
        seed: int = 0,
    ):
        self.model = model
        self.masks = masks
        self.timescales = timescales
        self.seed = int(seed)
        self.steps = 0
        self.union = self._union()
        self.enforcer = MaskEnforcer(self.union)
        self.views = {w: _View(self, w) for w in masks}
        model.set_masks(masks["fast"], masks["slow"])

    def _union(self) -> MaskSet:
        f, s = self.masks["fast"], self.masks["slow"]
        return MaskSet({n: m | s[n] for n, m in f.items()})

    def before_run(self, trainer: Any) -> None:
        self.union.apply(unwrap(trainer.model))

    def before_stage(self, trainer: Any, stage: int) -> None:
        self.union.apply(unwrap(trainer.model))

    def before_step(self, trainer: Any, batch: Any) -> None:
        for which, ts in self.timescales.items():
            self.model.capture[which] = ts.growth in ("rigl", "fast") and ts.due(self.steps)

    def update_due(self, which: str) -> bool:
        return self.timescales[which].due(self.steps)

    @torch.no_grad()
    def before_optimizer_step(self, trainer: Any) -> None:
        model = unwrap(trainer.model)
        changed = False
        for which, ts in self.timescales.items():
            if ts.due(self.steps):
                self.views[which].last_update = self._update(model, which, ts)
                changed = True
        if changed:
            self.union.update(dict(self._union().items()))
        self.enforcer.before_step(trainer.optimizer)

    def after_optimizer_step(self, trainer: Any) -> None:
        self.enforcer.after_step()
        self.steps += 1

    def _scores(self, model: nn.Module, which: str, name: str, ts: Timescale) -> Tensor | None:
        param = model.get_parameter(name)
        grad = self.model.grads[which].get(name)
        if ts.growth == "set":
            return torch.rand(
                param.shape, generator=generator(self.seed, which, "set-grow", self.steps, name)
            )
        if ts.growth == "fast":
            return guided_scores(
                param * self.masks["fast"][name].to(param.device), self.masks["fast"][name], grad
            )
        return None if grad is None else grad.abs()

    def _update(self, model: nn.Module, which: str, ts: Timescale) -> dict[str, Any]:
        masks = self.masks[which]
        fraction = ts.fraction(self.steps)
        new_masks, dropped, grown = {}, {}, {}
        for name, mask in masks.items():
            k = update_size(mask, fraction)
            scores = self._scores(model, which, name, ts) if k > 0 else None
            if scores is None:
                continue
            m, new = drop_and_grow(mask, model.get_parameter(name), scores, k)
            new_masks[name] = new.reshape(mask.shape).to(mask.device)
            dropped[name] = int((m & ~new).count_nonzero())
            grown[name] = int((new & ~m).count_nonzero())
        if new_masks:
            masks.update(new_masks)
        return update_record(ts.growth, self.steps, fraction, dropped, grown)

    def weight_state(self) -> dict:
        """Both masks belong to the shared weights (restored with them; ``steps`` is not)."""
        return {"masks": {w: m.state_dict() for w, m in self.masks.items()}}

    def load_weight_state(self, state: dict) -> None:
        if not state:
            return
        for which, saved in state["masks"].items():
            self.masks[which].load_state_dict(saved)
        self.union.update(dict(self._union().items()))  # the enforcer resets moved state

    def state_dict(self) -> dict:
        return {"steps": self.steps, **self.weight_state()}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.steps = int(state["steps"])
        for which, saved in state["masks"].items():
            self.masks[which].load_state_dict(saved)
        self.union.load_state_dict(self._union().state_dict())
        self.enforcer.load_state_dict({})


class _View:
    """What the evolution analysis reads of one network's masks under SharedDynamic."""

    def __init__(self, owner: SharedDynamic, which: str):
        self.owner, self.which = owner, which
        self.last_update: dict[str, Any] = {}

    @property
    def masks(self) -> MaskSet:
        return self.owner.masks[self.which]

    @property
    def steps(self) -> int:
        return self.owner.steps
