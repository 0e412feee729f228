"""The ``sparsity`` config section turned into training callbacks, and what a sparse run costs.

``sparsity.method`` chooses how masks come about during one training:

- ``none``: dense training;
- ``prune_at_init``: score once before the first step (``criterion``: magnitude, random, snip,
  grasp, synflow, taylor; ``scope``: global, layerwise, erk, er), then train with fixed masks;
- ``static``: random masks allocated by ``init`` (ERK by default), fixed during training;
- ``gradual``: cubic magnitude pruning (Zhu & Gupta) from ``start`` to ``end`` of training,
  every ``interval`` steps;
- ``set`` / ``rigl``: dynamic sparse training from random ``init`` masks, updated every
  ``interval`` steps until ``t_end`` of training with drop fraction ``alpha``.

Every mask change is logged as a ``mask_update`` event (measured density globally and per
layer, nonzeros, nonzero FLOPs; for SET/RigL also the ever-active fraction and the overlap
with the previous and the initial masks). Training FLOPs are counted step by step from the
masks in force (:class:`TrainingFlops`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..config import ExperimentConfig, SparsityConfig
from ..data import Loader
from ..errors import ConfigError, unknown
from ..sparsity import (
    CRITERIA,
    SCOPES,
    SET,
    DynamicSparse,
    FlopProfile,
    GradualMagnitude,
    MaskCallback,
    MaskSet,
    RigL,
    Targets,
    cost,
    profile_flops,
    prune,
)
from ..sparsity.targets import unwrap
from ..train.callbacks import Callback
from ..utils.seeding import derive_seed

SPARSE_METHODS = ("none", "prune_at_init", "static", "gradual", "set", "rigl")
DATA_CRITERIA = ("snip", "grasp", "taylor")
Batches = list[tuple[torch.Tensor, torch.Tensor]]


# --------------------------------------------------------------------------- validation


def check_sparsity(s: SparsityConfig) -> None:
    """Raise one ConfigError naming the fix for an impossible ``sparsity`` section."""
    if s.method not in SPARSE_METHODS:
        raise unknown("sparsity method (sparsity.method)", s.method, SPARSE_METHODS)
    if s.method == "none":
        if s.density < 1.0:
            raise ConfigError(
                f"sparsity.density={s.density} has no effect with sparsity.method=none; "
                f"choose one of {', '.join(SPARSE_METHODS[1:])}"
            )
        return
    if s.criterion not in CRITERIA:
        raise unknown("pruning criterion (sparsity.criterion)", s.criterion, CRITERIA)
    if s.scope not in SCOPES:
        raise unknown("allocation (sparsity.scope)", s.scope, SCOPES)
    if s.init not in SCOPES:
        raise unknown("initial allocation (sparsity.init)", s.init, SCOPES)
    if s.method == "gradual" and s.criterion != "magnitude":
        raise ConfigError(
            f"sparsity.method=gradual prunes by magnitude; set sparsity.criterion=magnitude "
            f"(got {s.criterion!r}), or use sparsity.method=prune_at_init for {s.criterion!r}"
        )
    if s.score_batches < 1:
        raise ConfigError(f"sparsity.score_batches must be >= 1, got {s.score_batches}")
    if s.iterations is not None and s.iterations < 1:
        raise ConfigError(f"sparsity.iterations must be >= 1, got {s.iterations}")
    if s.interval < 1:
        raise ConfigError(f"sparsity.interval must be >= 1 optimizer step, got {s.interval}")
    if not 0.0 <= s.start < s.end <= 1.0:
        raise ConfigError(
            f"sparsity.start and sparsity.end are fractions of training with "
            f"0 <= start < end <= 1, got start={s.start}, end={s.end}"
        )
    if not 0.0 < s.alpha <= 1.0:
        raise ConfigError(f"sparsity.alpha (drop fraction) must be in (0, 1], got {s.alpha}")
    if not 0.0 < s.t_end <= 1.0:
        raise ConfigError(
            f"sparsity.t_end is the fraction of training after which masks freeze, in (0, 1]; "
            f"got {s.t_end}"
        )


def targets_of(s: Any) -> Targets:
    """The prunable set described by a config section with exclude/include fields."""
    return Targets(
        exclude_first=bool(s.exclude_first),
        exclude_last=bool(s.exclude_last),
        include=tuple(s.include) if s.include else None,
        exclude=tuple(s.exclude),
    )


# --------------------------------------------------------------------------- scoring data


def scoring_batches(
    cfg: ExperimentConfig, images, loader: Any, device: Any, batches: int, key: str = "scoring"
) -> Batches:
    """The first ``batches`` batches of a seeded, un-augmented pass over the training data.

    Normalised like the training loader, so scores see the inputs training sees; the order is
    a function of ``(cfg.seed, key)`` only, so a rerun scores the same examples.
    """
    scorer = Loader(
        images,
        cfg.data.batch_size,
        shuffle=True,
        augment=None,
        mean=getattr(loader, "mean", None),
        std=getattr(loader, "std", None),
        normalize=getattr(loader, "normalize", True),
        device=device,
        seed=derive_seed(cfg.seed, key),
    )
    out: Batches = []
    for i, batch in enumerate(scorer.batches(0)):
        if i >= batches:
            break
        out.append(batch)
    return out


def criterion_options(
    criterion: str, data_fn: Callable[[], Batches] | None, input_shape: Sequence[int] | None
) -> dict:
    """Keyword arguments :func:`~underbudget.sparsity.prune` needs for ``criterion``
    (scoring batches for data-driven criteria, the input shape for SynFlow)."""
    if criterion in DATA_CRITERIA:
        if data_fn is None:
            raise ConfigError(f"criterion {criterion!r} needs scoring data from the training set")
        return {"data": data_fn()}
    if criterion == "synflow":
        if input_shape is None and data_fn is not None:
            return {"data": data_fn()}
        return {"input_shape": None if input_shape is None else tuple(input_shape)}
    return {}


# --------------------------------------------------------------------------- callbacks


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


class TrainingFlops(Callback):
    """Training FLOPs counted step by step: ``factor`` x forward FLOPs x batch size.

    Forward FLOPs are those of the masks in force at each step (nonzero-aware: a pruned weight
    costs nothing; recounted only when the masks change) and, for reference, of the dense
    model. ``factor`` 3 counts the forward pass and a backward pass twice as costly. The
    totals of the run so far are added to each stage's metrics as ``train_flops``,
    ``train_flops_dense`` and ``train_samples``.
    """

    name = "training_flops"

    def __init__(
        self,
        masks: MaskSet | None = None,
        input_shape: Sequence[int] | None = None,
        factor: float = 3.0,
    ):
        self.masks, self.factor = masks, float(factor)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.forward_sum = 0.0  # sum over steps of batch size x forward FLOPs (masked)
        self.dense_sum = 0.0
        self.samples = 0
        self._profile: FlopProfile | None = None
        self._cached: tuple[int, float, float] | None = None  # (mask version, masked, dense)

    def forward_flops(self, model: nn.Module) -> tuple[float, float]:
        """(masked, dense) FLOPs of one forward pass of one sample with the current masks."""
        model = unwrap(model)
        version = -1 if self.masks is None else self.masks.version
        if self._cached is not None and self._cached[0] == version:
            return self._cached[1], self._cached[2]
        if self._profile is None:
            self._profile = profile_flops(model, self.input_shape)
        prof = self._profile
        fixed = sum(prof.bias_flops.values()) + sum(prof.other_flops.values())
        macs = dense = 0
        for name, uses in prof.weight_uses.items():
            numel = model.get_parameter(name).numel()
            kept = numel
            if self.masks is not None and name in self.masks:
                kept = int(self.masks[name].count_nonzero())
            macs += uses * kept
            dense += uses * numel
        self._cached = (version, float(2 * macs + fixed), float(2 * dense + fixed))
        return self._cached[1], self._cached[2]

    def before_step(self, trainer: Any, batch: Any) -> None:
        x = batch[0] if isinstance(batch, tuple | list) else batch
        if self.input_shape is None:
            self.input_shape = tuple(x.shape[1:])
        masked, dense = self.forward_flops(trainer.model)
        n = int(x.shape[0])
        self.forward_sum += masked * n
        self.dense_sum += dense * n
        self.samples += n

    def totals(self) -> dict[str, float]:
        return {
            "train_flops": self.factor * self.forward_sum,
            "train_flops_dense": self.factor * self.dense_sum,
            "train_samples": self.samples,
        }

    def after_stage(self, trainer: Any, stage: int, metrics: dict) -> None:
        metrics.update(self.totals())

    def state_dict(self) -> dict:
        return {
            "forward_sum": self.forward_sum,
            "dense_sum": self.dense_sum,
            "samples": self.samples,
        }

    def load_state_dict(self, state: dict) -> None:
        self.forward_sum = float(state.get("forward_sum", 0.0))
        self.dense_sum = float(state.get("dense_sum", 0.0))
        self.samples = int(state.get("samples", 0))


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


# --------------------------------------------------------------------------- from config


def gradual_steps(total: int, start: float, end: float, interval: int) -> tuple[int, int, int]:
    """(t0, n, dt) of the cubic schedule: prune every ``interval`` steps from ``start`` to
    about ``end`` of ``total`` steps (one event at the end point when the window is shorter)."""
    t0 = int(round(start * total))
    t_end = max(t0 + 1, int(round(end * total)))
    span = t_end - t0
    if span < interval:
        return t0, 1, span
    return t0, span // interval, interval


def sparse_callbacks(
    cfg: ExperimentConfig, trainer: Any, data: Any, loader: Any
) -> tuple[list[Callback], MaskSet | None]:
    """Callbacks realising ``cfg.sparsity`` for ``trainer`` and the MaskSet they enforce.

    Args:
        cfg: the experiment (its ``sparsity``, ``train.epochs``, ``seed`` are read).
        trainer: the Trainer that will train ``trainer.model``.
        data: the prepared data (``train`` images for scoring, ``image_shape``).
        loader: the training loader (its length gives the number of steps; its
            normalisation is reused for scoring batches).

    The returned MaskSet is the one the callbacks update in place (None for dense training),
    so it holds the final masks after ``fit``. A :class:`TrainingFlops` meter is always
    included.
    """
    s = cfg.sparsity
    check_sparsity(s)
    model = unwrap(trainer.model)
    shape = tuple(data.image_shape)
    if s.method == "none":
        return [TrainingFlops(None, shape)], None
    targets = targets_of(s)
    seed = derive_seed(cfg.seed, "sparsity")
    total = max(1, int(cfg.train.epochs) * len(loader))
    device = getattr(trainer, "device", None) or next(model.parameters()).device

    def data_fn() -> Batches:
        return scoring_batches(cfg, data.train, loader, device, s.score_batches)

    if s.method in ("prune_at_init", "static"):
        criterion = s.criterion if s.method == "prune_at_init" else "random"
        scope = s.scope if s.method == "prune_at_init" else s.init
        masks = MaskSet.from_model(model, targets)
        cb: MaskCallback = PruneAtInit(
            masks, s.density, criterion, scope, data_fn, s.iterations, seed, shape
        )
    elif s.method == "gradual":
        masks = MaskSet.from_model(model, targets)
        t0, n, dt = gradual_steps(total, s.start, s.end, s.interval)
        cb = GradualMagnitude(s.density, 1.0, t0, n, dt, s.scope, masks=masks, input_shape=shape)
    else:
        masks = prune(model, s.density, "random", s.init, targets=targets, seed=seed)
        cls = SET if s.method == "set" else RigL
        dyn = cls(
            masks=masks,
            update_interval=s.interval,
            alpha=s.alpha,
            t_end=float(s.t_end),
            total_steps=total,
            seed=seed,
            input_shape=shape,
        )
        return [dyn, DynamicStats(dyn), TrainingFlops(masks, shape)], masks
    return [cb, TrainingFlops(masks, shape)], masks


# --------------------------------------------------------------------------- summary


def sparse_summary(model: nn.Module, masks: MaskSet | None, data: Any) -> dict:
    """What the trained network costs, measured from its weights and masks.

    ``density`` (nonzero kept weights over prunable ones) and ``density_all`` (over all
    parameters), ``mask_density``, ``nonzeros``/``params``, ``prunable_nonzeros``/``prunable``,
    ``flops_dense``/``flops_nonzero`` (one forward pass of one sample), ``bytes_dense``/
    ``bytes_sparse`` (float32) and per-layer densities. Training FLOPs come from
    :class:`TrainingFlops` in the stage metrics.
    """
    c = cost(model, tuple(data.image_shape), masks)
    keys = (
        "density",
        "density_all",
        "nonzeros",
        "params",
        "prunable",
        "prunable_nonzeros",
        "flops_dense",
        "flops_nonzero",
        "bytes_dense",
        "bytes_sparse",
    )
    out: dict[str, Any] = {k: c[k] for k in keys}
    out["mask_density"] = masks.density() if masks is not None else 1.0
    out["layer_densities"] = {
        n: layer["density"] for n, layer in c["layers"].items() if layer.get("prunable")
    }
    return out
