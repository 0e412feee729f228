"""Keeping pruned weights at exactly zero under any optimizer.

Per step: mask gradients before ``optimizer.step()`` (so momentum, weight decay and Adam's
moments cannot move pruned weights), and re-apply the masks after it. When the masks change
(their ``version`` moves), optimizer state (momentum buffers, ``exp_avg``, ``exp_avg_sq``,
``max_exp_avg_sq`` and any other per-weight state) is zeroed wherever a weight was not alive
both before and after the change: pruned positions and regrown ones. During the step in which
a change is first seen, gradients are also masked at regrown positions, so a regrown weight
starts training from exactly 0 with clean state on the next step.

Two front ends share this: :class:`MaskedOptimizer` wraps any torch optimizer, and
:class:`MaskCallback` does the same through the Trainer's callback hooks.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from underbudget.callbacks import Callback
from underbudget.sparsity.cost import profile_flops
from underbudget.sparsity.mask import MaskSet
from underbudget.sparsity.measure import mask_report
from underbudget.sparsity.targets import TargetsLike, unwrap


@torch.no_grad()
def reset_state(
    optimizer: torch.optim.Optimizer, model: nn.Module, positions: Mapping[str, Tensor]
) -> int:
    """Zero every per-weight optimizer state tensor at ``positions`` (True = reset).

    Works for any optimizer whose state holds tensors shaped like the parameter (SGD's
    ``momentum_buffer``, Adam's ``exp_avg``/``exp_avg_sq``/``max_exp_avg_sq``, RMSprop,
    Adagrad, ...). Returns the number of state tensors touched.
    """
    model = unwrap(model)
    touched = 0
    for name, where in positions.items():
        param = model.get_parameter(name)
        state = optimizer.state.get(param)
        if not state:
            continue
        for value in state.values():
            if isinstance(value, Tensor) and value.shape == param.shape and value.dim() > 0:
                value.masked_fill_(where.to(value.device), 0)
                touched += 1
    return touched


class MaskEnforcer:
    """The per-step work shared by MaskedOptimizer and MaskCallback."""

    def __init__(self, masks: MaskSet, model: nn.Module | None = None):
        self.masks = masks
        if model is not None:
            masks.bind(model)
        self._seen_version: int | None = None
        self._seen: dict[str, Tensor] | None = None

    def changed(self) -> bool:
        return self._seen_version != self.masks.version

    def sync(self, optimizer: torch.optim.Optimizer | None) -> dict[str, Tensor] | None:
        """After a mask change, zero state where not alive before and after; return those masks.

        Returns the per-parameter "stable" masks (alive before and after) to use for the
        gradients of this step, or None when nothing changed.
        """
        if not self.changed():
            return None
        stable = {}
        for name, mask in self.masks.items():
            old = None if self._seen is None else self._seen.get(name)
            stable[name] = mask if old is None else mask & old.to(mask.device)
        if optimizer is not None:
            reset_state(optimizer, self.masks._model(None), {n: ~m for n, m in stable.items()})
        self._seen = {n: m.clone() for n, m in self.masks.items()}
        self._seen_version = self.masks.version
        return stable

    def before_step(self, optimizer: torch.optim.Optimizer | None) -> bool:
        """Sync after any mask change, then mask gradients. True when the masks had changed."""
        stable = self.sync(optimizer)
        binding = self.masks.binding()
        if stable is None:
            binding.mask_grads()
            return False
        keep = [
            stable[n].to(device=p.device, dtype=p.dtype) for n, p in zip(self.masks, binding.params)
        ]
        binding.apply()
        binding.mask_grads(keep)
        return True

    def after_step(self) -> None:
        self.masks.binding().apply()

    def state_dict(self) -> dict:
        return {"masks": self.masks.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "masks" in state:
            self.masks.load_state_dict(state["masks"])
        # state restored with the masks is consistent: no reset at the next step
        self._seen = {n: m.clone() for n, m in self.masks.items()}
        self._seen_version = self.masks.version


class MaskedOptimizer(torch.optim.Optimizer):
    """Wrap ``optimizer`` so pruned weights stay exactly zero (usable with LR schedulers).

    ``param_groups`` and ``state`` are the wrapped optimizer's own. ``model`` may be omitted
    when the masks already know it (they do after ``prune``/``apply``/``from_model``).
    Closures that recompute gradients inside ``step`` (LBFGS) bypass gradient masking; the
    masks are still re-applied after the step.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, masks: MaskSet, model: nn.Module | None = None
    ):
        if isinstance(optimizer, MaskedOptimizer):
            optimizer = optimizer.optimizer
        self.optimizer = optimizer
        self.masks = masks
        self.enforcer = MaskEnforcer(masks, model)
        masks.apply(model)  # fails now, not at the first step, when the model is unknown
        self.enforcer.sync(optimizer)

    # the wrapped optimizer owns groups, state and defaults
    @property
    def param_groups(self):  # type: ignore[override]
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value):
        self.optimizer.param_groups = value

    @property
    def state(self):  # type: ignore[override]
        return self.optimizer.state

    @state.setter
    def state(self, value):
        self.optimizer.state = value

    @property
    def defaults(self):  # type: ignore[override]
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value):
        self.optimizer.defaults = value

    def step(self, closure=None):  # type: ignore[override]
        self.enforcer.before_step(self.optimizer)
        loss = self.optimizer.step(closure) if closure is not None else self.optimizer.step()
        self.enforcer.after_step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict) -> None:
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict:  # type: ignore[override]
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:  # type: ignore[override]
        self.optimizer.load_state_dict(state_dict)

    def reset_state(self, positions: Mapping[str, Tensor]) -> int:
        """Zero optimizer state at ``positions`` ({param name: bool tensor, True = reset})."""
        return reset_state(self.optimizer, self.masks._model(None), positions)

    def __getattr__(self, name: str) -> Any:
        # anything else (hooks, custom methods) is the wrapped optimizer's
        if name == "optimizer":
            raise AttributeError(name)
        return getattr(self.optimizer, name)

    def __getstate__(self) -> dict:
        return self.__dict__

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"MaskedOptimizer({self.optimizer!r}, density={self.masks.density():.4f})"


class MaskCallback(Callback):
    """Trainer callback enforcing a MaskSet; checkpoints the masks through ``state_dict``.

    Without ``masks``, all-True masks over ``targets`` are made at ``before_run`` (for
    callbacks that prune later). Every mask change is logged once as ``mask_update`` with the
    measured densities, nonzeros and nonzero FLOPs (the input shape is taken from the first
    batch unless given).
    """

    name = "masks"

    def __init__(
        self,
        masks: MaskSet | None = None,
        targets: TargetsLike = None,
        log: bool = True,
        input_shape: tuple[int, ...] | None = None,
    ):
        self.masks = masks
        self.targets = targets
        self.log_changes = log
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.enforcer: MaskEnforcer | None = None if masks is None else MaskEnforcer(masks)
        self._profile = None
        self._pending_state: dict | None = None
        self._ready_for: weakref.ref | None = None

    # -- setup ------------------------------------------------------------------------------
    def setup(self, trainer: Any) -> MaskSet:
        """Create or bind the masks for ``trainer.model`` (idempotent, cheap when done)."""
        model = unwrap(trainer.model)
        ready = self._ready_for() if self._ready_for is not None else None
        if ready is model and self._pending_state is None and self.enforcer is not None:
            return self.masks
        if self.masks is None:
            self.masks = MaskSet.from_model(model, self.targets)
        self.masks.bind(model)
        if self.enforcer is None or self.enforcer.masks is not self.masks:
            self.enforcer = MaskEnforcer(self.masks)
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            self._restore(state)
        self._ready_for = weakref.ref(model)
        self._profile = None  # a new model may differ in shape
        return self.masks

    def before_run(self, trainer: Any) -> None:
        self.setup(trainer)
        self.masks.apply(unwrap(trainer.model))

    def before_stage(self, trainer: Any, stage: int) -> None:
        self.setup(trainer)
        self.masks.apply(unwrap(trainer.model))

    def before_step(self, trainer: Any, batch: Any) -> None:
        if self.input_shape is None:
            x = batch
            if isinstance(batch, tuple | list) and batch:
                x = batch[0]
            elif isinstance(batch, Mapping):
                x = batch.get("x", batch.get("input"))
            if isinstance(x, Tensor) and x.dim() >= 1:
                self.input_shape = tuple(x.shape[1:])

    def before_optimizer_step(self, trainer: Any) -> None:
        self.setup(trainer)
        changed = self.enforcer.before_step(trainer.optimizer)
        if changed:
            self.on_change(trainer)

    def after_optimizer_step(self, trainer: Any) -> None:
        self.enforcer.after_step()

    # -- logging ----------------------------------------------------------------------------
    def report(self, trainer: Any) -> dict:
        """The measured state of the masks (see :func:`mask_report`)."""
        model = unwrap(trainer.model)
        profile = None
        if self.input_shape is not None:
            if self._profile is None:
                self._profile = profile_flops(model, self.input_shape)
            profile = self._profile
        return mask_report(self.masks, model, profile=profile)

    def on_change(self, trainer: Any, **extra: Any) -> None:
        """Log one ``mask_update`` event with the report and ``extra`` fields."""
        log = getattr(trainer, "log", None)
        if not self.log_changes or log is None:
            return
        values = {"step": int(getattr(trainer, "step", 0)), "source": self.key}
        values.update(extra)
        values.update(self.report(trainer))
        log("mask_update", **values)

    # -- selection and checkpoints ----------------------------------------------------------
    def weight_state(self) -> dict:
        """The masks belong to the weights: best-epoch selection restores them together."""
        return {} if self.masks is None else {"masks": self.masks.state_dict()}

    def load_weight_state(self, state: dict) -> None:
        if not state or self.masks is None:
            return
        self.masks.load_state_dict(state["masks"])  # the enforcer resets state where it moved
        model = self.masks._model_ref() if self.masks._model_ref is not None else None
        if model is not None:
            self.masks.apply(model)

    def state_dict(self) -> dict:
        if self.masks is None:
            return {}
        return {"masks": self.masks.state_dict(), "input_shape": list(self.input_shape or [])}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        if self.masks is None:
            self._pending_state = state  # masks are made at setup, then restored
            return
        self._restore(state)

    def _restore(self, state: dict) -> None:
        if "masks" in state:
            self.masks.load_state_dict(state["masks"])
        if state.get("input_shape"):
            self.input_shape = tuple(state["input_shape"])
        if self.enforcer is None:
            self.enforcer = MaskEnforcer(self.masks)
        self.enforcer.load_state_dict({})
        model = self.masks._model_ref() if self.masks._model_ref is not None else None
        if model is not None:
            self.masks.apply(model)
