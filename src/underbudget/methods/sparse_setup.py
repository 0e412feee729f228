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

from typing import Any

from torch import nn

from ..config import ExperimentConfig, SparsityConfig
from ..data import Loader
from ..errors import ConfigError, unknown
from ..sparsity import (
    CRITERIA,
    SCOPES,
    SET,
    GradualMagnitude,
    MaskCallback,
    MaskSet,
    RigL,
    Targets,
    cost,
    prune,
)
from ..sparsity.at_init import Batches, PruneAtInit, criterion_options
from ..sparsity.dynamic import DynamicStats
from ..sparsity.schedules import gradual_steps
from ..sparsity.targets import unwrap
from ..sparsity.training_cost import TrainingFlops
from ..train.callbacks import Callback
from ..utils.seeding import derive_seed

__all__ = [
    "Batches", "DynamicStats", "PruneAtInit", "SPARSE_METHODS", "TrainingFlops", "check_sparsity",
    "criterion_options", "gradual_steps", "scoring_batches", "sparse_callbacks", "sparse_summary",
    "targets_of",
]

SPARSE_METHODS = ("none", "prune_at_init", "static", "gradual", "set", "rigl", "progressive",
                  "iterative", "dual_dynamic")
#: schedules whose time axis is the stages of a stream
STREAM_ONLY = ("progressive",)


# --------------------------------------------------------------------------- validation


def check_sparsity(s: SparsityConfig, stream: bool = False) -> None:
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
    if s.method in STREAM_ONLY and not stream:
        raise ConfigError(
            f"sparsity.method={s.method} prunes further at every stage of a stream: set "
            f"stream.megabatches (>= 2), or use sparsity.method=gradual to prune "
            f"progressively over the steps of one training")
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


# --------------------------------------------------------------------------- from config


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
    elif s.method not in ("set", "rigl"):
        raise ConfigError(
            f"sparsity.method={s.method} is not a schedule of one training's callbacks: it "
            f"runs over a stream (stream.megabatches) or as its own method (see "
            f"underbudget.schedule_registry)")
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
