"""Dynamic sparse training: SET and RigL as training callbacks.

Every ``update_interval`` optimizer steps while t < T_end, each layer drops the k alive weights
of smallest magnitude and grows k inactive ones, k = round(f(t) * alive), with
f(t) = alpha/2 (1 + cos(pi t / T_end)) (or alpha with ``decay="constant"``). SET grows at
random (seeded); RigL grows where the dense gradient is largest. The dense gradient is the
``.grad`` seen in ``before_optimizer_step`` at an update step: pruned weights are 0 but their
gradient is computed densely by autograd, so it costs nothing extra. Grown weights start at
exactly 0 with zeroed optimizer state (gradients of grown positions are masked during the
update step). Layer densities never change.

By default only positions inactive before the update can grow (so exactly k weights leave and
k others arrive); ``regrow_dropped=True`` also lets just-dropped weights be chosen again (they
then keep their value), as in the reference RigL code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from underbudget.callbacks import Callback
from underbudget.errors import ConfigError, unknown
from underbudget.sparsity.allocation import check_density
from underbudget.sparsity.enforce import MaskCallback
from underbudget.sparsity.mask import MaskSet
from underbudget.sparsity.prune import prune
from underbudget.sparsity.targets import TargetsLike, unwrap
from underbudget.utils.seeding import generator

DECAYS = ("cosine", "constant")


def update_size(mask: Tensor, fraction: float) -> int:
    """How many weights a drop-and-grow update moves in a layer: ``fraction`` of the alive
    ones, at most as many as are dead."""
    alive = int(mask.count_nonzero())
    return min(int(round(fraction * alive)), alive, mask.numel() - alive)


def drop_and_grow(mask: Tensor, param: Tensor, growth: Tensor, k: int,
                  regrow_dropped: bool = False) -> tuple[Tensor, Tensor]:
    """One layer's drop and grow: the ``k`` alive weights of smallest magnitude are dropped
    and the ``k`` best-scoring dead ones (``growth``, higher first; with ``regrow_dropped``
    the just-dropped ones are candidates too) grown. Returns the flat old and new masks on
    the parameter's device."""
    m = mask.to(param.device).reshape(-1)
    w = param.detach().reshape(-1).abs()
    drop_idx = torch.topk(w.masked_fill(~m, math.inf), k, largest=False).indices
    new = m.clone()
    new[drop_idx] = False
    candidates = ~new if regrow_dropped else ~m
    g = growth.reshape(-1).to(device=param.device, dtype=torch.float32)
    new[torch.topk(g.masked_fill(~candidates, -math.inf), k).indices] = True
    return m, new


def update_record(method: str, step: int, fraction: float, dropped: dict[str, int],
                  grown: dict[str, int]) -> dict[str, Any]:
    """What a drop-and-grow update logs: totals and per-layer counts."""
    return {"method": method, "update_step": step, "drop_fraction": fraction,
            "dropped": sum(dropped.values()), "grown": sum(grown.values()),
            "layer_dropped": dropped, "layer_grown": grown}


class DynamicSparse(MaskCallback):
    """Base of SET and RigL: drop by magnitude, grow by :meth:`grow_scores`."""

    name = "dynamic_sparse"
    method = "dynamic"

    def __init__(
        self,
        density: float | None = None,
        masks: MaskSet | None = None,
        update_interval: int = 100,
        alpha: float = 0.3,
        t_end: float | int = 0.75,
        total_steps: int | None = None,
        init: str | Mapping[str, float] = "erk",
        decay: str = "cosine",
        targets: TargetsLike = None,
        seed: int = 0,
        regrow_dropped: bool = False,
        log: bool = True,
        input_shape: tuple[int, ...] | None = None,
    ):
        super().__init__(masks, targets, log, input_shape)
        if masks is None and density is None:
            raise ConfigError(
                f"{type(self).__name__} needs density=... (initial random masks, allocated by "
                f"{init!r}) or masks=<MaskSet>"
            )
        self.density = None if density is None else check_density(density)
        if int(update_interval) < 1:
            raise ConfigError(f"update_interval must be >= 1 step, got {update_interval}")
        if not 0.0 < float(alpha) <= 1.0:
            raise ConfigError(f"alpha (drop fraction) must be in (0, 1], got {alpha}")
        if decay not in DECAYS:
            raise unknown("drop-fraction decay", decay, DECAYS)
        if isinstance(t_end, float):
            if not 0.0 < t_end <= 1.0:
                raise ConfigError(
                    f"t_end as a float is a fraction of training in (0, 1], got {t_end}; "
                    "pass an int for an absolute step"
                )
        elif int(t_end) < 1:
            raise ConfigError(f"t_end must be a positive step or a fraction, got {t_end}")
        self.update_interval = int(update_interval)
        self.alpha = float(alpha)
        self.t_end = t_end
        self.total_steps = total_steps
        self.init = init
        self.decay = decay
        self.seed = int(seed)
        self.regrow_dropped = bool(regrow_dropped)
        self.steps = 0
        self.t_end_steps: int | None = None
        self.initial: MaskSet | None = None
        self.ever_active: MaskSet | None = None
        self.last_update: dict[str, Any] = {}

    # -- setup ------------------------------------------------------------------------------
    def setup(self, trainer: Any) -> MaskSet:
        if self.masks is None:
            model = unwrap(trainer.model)
            if self._pending_state is not None:  # resuming: the checkpoint holds the masks
                self.masks = MaskSet.from_model(model, self.targets)
            else:
                self.masks = prune(
                    model, self.density, "random", self.init, targets=self.targets, seed=self.seed
                )
        masks = super().setup(trainer)
        if self.initial is None:
            self.initial = masks.copy()
        if self.ever_active is None:
            self.ever_active = masks.copy()
        return masks

    def resolve_t_end(self, trainer: Any) -> int:
        """T_end in optimizer steps (a float t_end is a fraction of the total steps)."""
        if self.t_end_steps is None:
            if isinstance(self.t_end, float):
                total = self.total_steps or getattr(trainer, "total_steps", None)
                if not total:
                    raise ConfigError(
                        f"{type(self).__name__}: t_end={self.t_end} is a fraction of training, "
                        "but the total number of steps is unknown; pass total_steps=... or an "
                        "absolute t_end (int)"
                    )
                self.t_end_steps = max(1, int(self.t_end * int(total)))
            else:
                self.t_end_steps = int(self.t_end)
        return self.t_end_steps

    def drop_fraction(self, step: int, t_end: int | None = None) -> float:
        """f(t): alpha/2 (1 + cos(pi t / T_end)), or alpha with constant decay."""
        t_end = self.t_end_steps if t_end is None else t_end
        if self.decay == "constant":
            return self.alpha
        return self.alpha / 2.0 * (1.0 + math.cos(math.pi * step / t_end))

    def is_update(self, step: int, t_end: int) -> bool:
        return step > 0 and step % self.update_interval == 0 and step < t_end

    # -- hooks ------------------------------------------------------------------------------
    def before_optimizer_step(self, trainer: Any) -> None:
        self.setup(trainer)
        t_end = self.resolve_t_end(trainer)
        info = None
        if self.is_update(self.steps, t_end):
            info = self.update(trainer, self.drop_fraction(self.steps, t_end))
        changed = self.enforcer.before_step(trainer.optimizer)
        if changed:
            self.on_change(trainer, **(info or {}))

    def after_optimizer_step(self, trainer: Any) -> None:
        super().after_optimizer_step(trainer)
        self.steps += 1

    # -- the update -------------------------------------------------------------------------
    def grow_scores(self, name: str, param: Tensor, step: int) -> Tensor | None:
        """Scores for growth (higher first); None skips the layer this time."""
        raise NotImplementedError

    @torch.no_grad()
    def update(self, trainer: Any, fraction: float) -> dict[str, Any]:
        """Drop and grow in every layer; returns what is logged with the change."""
        model = unwrap(trainer.model)
        previous = self.masks.copy()
        new_masks: dict[str, Tensor] = {}
        dropped: dict[str, int] = {}
        grown: dict[str, int] = {}
        for name, mask in self.masks.items():
            param = model.get_parameter(name)
            k = update_size(mask, fraction)
            if k <= 0:
                continue
            growth = self.grow_scores(name, param, self.steps)
            if growth is None:
                continue
            m, new = drop_and_grow(mask, param, growth, k, self.regrow_dropped)
            fresh = new & ~m
            param.data.view(-1).masked_fill_(fresh, 0)  # grown weights start at exactly 0
            new_masks[name] = new.reshape(mask.shape).to(mask.device)
            dropped[name] = int((m & ~new).count_nonzero())
            grown[name] = int(fresh.count_nonzero())
        if new_masks:
            self.masks.update(new_masks)
        self.ever_active = self.ever_active.union(self.masks)
        ever = self.ever_active.nonzeros() / max(self.ever_active.numel(), 1)
        self.last_update = {
            **update_record(self.method, self.steps, fraction, dropped, grown),
            "ever_active": ever,
            "iou_previous": self.masks.iou(previous),
            "iou_initial": self.masks.iou(self.initial),
        }
        return self.last_update

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = super().state_dict()
        state["steps"] = self.steps
        state["t_end_steps"] = -1 if self.t_end_steps is None else self.t_end_steps
        if self.initial is not None:
            state["initial"] = self.initial.state_dict()
            state["ever_active"] = self.ever_active.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.steps = int(state.get("steps", 0))
        t_end = int(state.get("t_end_steps", -1))
        self.t_end_steps = None if t_end < 0 else t_end
        if "initial" in state:
            self.initial = MaskSet(state["initial"])
            self.ever_active = MaskSet(state["ever_active"])


class SET(DynamicSparse):
    """Sparse Evolutionary Training: drop by magnitude, grow at random (seeded)."""

    name = "set"
    method = "set"

    def grow_scores(self, name: str, param: Tensor, step: int) -> Tensor:
        gen = generator(self.seed, "set-grow", step, name)
        return torch.rand(param.shape, generator=gen)


class RigL(DynamicSparse):
    """Rigged Lottery: drop by magnitude, grow where the dense gradient magnitude is largest."""

    name = "rigl"
    method = "rigl"

    def grow_scores(self, name: str, param: Tensor, step: int) -> Tensor | None:
        if param.grad is None:
            return None
        return param.grad.detach().abs()


class DynamicStats(Callback):
    """Adds the final in-time over-parameterization figures of SET/RigL to the stage metrics:
    ``ever_active`` (fraction of prunable weights active at some point), ``iou_initial`` (mask
    overlap with the initial masks) and ``mask_updates`` (drop-and-grow updates so far)."""

    name = "dynamic_stats"

    def __init__(self, dynamic: DynamicSparse):
        self.dynamic = dynamic

    def after_stage(self, trainer: Any, stage: int, metrics: dict) -> None:
        d = self.dynamic
        if d.masks is None or d.initial is None or d.ever_active is None:
            return
        metrics["ever_active"] = d.ever_active.density()
        metrics["iou_initial"] = d.masks.iou(d.initial)
        t_end = d.t_end_steps or 0
        metrics["mask_updates"] = sum(d.is_update(t, t_end) for t in range(d.steps))
