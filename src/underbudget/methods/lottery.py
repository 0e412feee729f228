"""``lottery``: iterative magnitude pruning with rewinding (lottery tickets).

Level 0 trains the dense network. Each later level removes ``rate`` of the weights that are
still alive (global magnitude by default, scored on the previous level's trained weights),
rewinds the survivors to the rewind point (the initialisation, or the weights after ``k``
optimizer steps of level 0 with ``rewind: step:k``) and trains again with a fresh optimizer
and learning-rate schedule. Level k keeps (1 - rate)^k of the prunable weights.

Every level is a child run (``level-00``, ``level-01``, ...) with its own trainer, checkpoint,
metrics, summary, weights and masks, so an interrupted run resumes inside the level it was
training; finished levels are read back, not trained again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..config import ExperimentConfig, MethodConfig, register_schedule, to_dict
from ..errors import ConfigError, unknown
from ..models import load_weights, read_state_dict, save_weights
from ..runs import Run
from ..sparsity import CRITERIA, SCOPES, MaskCallback, MaskSet, imp_densities, imp_step
from ..train import Callback, resolve_device
from ..utils.seeding import derive_seed, seed_everything
from .common import build_model, eval_loader, make_trainer, prepare_data, train_loader
from .lottery_report import lottery_report, plot_levels
from .registry import register_method
from .sparse_setup import (
    TrainingFlops,
    criterion_options,
    scoring_batches,
    sparse_summary,
    targets_of,
)

#: per-level values kept in the parent summary's ``levels`` table
__all__ = [
    "LEVEL_KEYS", "LevelMasks", "LotteryConfig", "RewindSaver", "level_densities", "level_name",
    "lottery_from_sparsity", "lottery_report", "lottery_summary", "plot_levels", "rewind_step",
    "run_lottery",
]

LEVEL_KEYS = (
    "level",
    "target_density",
    "density",
    "density_all",
    "mask_density",
    "nonzeros",
    "prunable_nonzeros",
    "flops_dense",
    "flops_nonzero",
    "train_flops",
    "test_acc",
    "test_loss",
    "val_acc",
    "val_loss",
    "train_acc",
    "epochs_run",
    "steps",
    "stage_time",
)


@dataclass
class LotteryConfig(MethodConfig):
    """Iterative magnitude pruning with rewinding. Each level trains ``train.epochs`` epochs
    with a fresh optimizer (optimizer state is never rewound)."""

    name: str = "lottery"
    honours: ClassVar[tuple[str, ...]] = ("sections",)
    levels: int = 5  # pruned levels after the dense level 0: densities (1 - rate)^1..levels
    rate: float = 0.2  # fraction of the alive weights removed at each level
    scope: str = "global"  # global | layerwise | erk | er
    criterion: str = "magnitude"  # scored on the previous level's trained weights
    rewind: str = "init"  # init | step:K (weights after K optimizer steps of level 0)
    exclude_first: bool = False
    exclude_last: bool = False
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    score_batches: int = 10  # training batches for data-driven criteria (snip, grasp, taylor)
    eval_train: bool = False  # clean training accuracy of every level

    def validate(self, cfg: ExperimentConfig) -> None:
        """Reject settings IMP cannot run, naming the fix."""
        if self.levels < 1:
            raise ConfigError(f"method.levels must be >= 1 pruned level, got {self.levels}")
        if not 0.0 < self.rate < 1.0:
            raise ConfigError(
                f"method.rate is the fraction of alive weights pruned per level, in (0, 1); "
                f"got {self.rate}"
            )
        if self.scope not in SCOPES:
            raise unknown("allocation (method.scope)", self.scope, SCOPES)
        if self.criterion not in CRITERIA:
            raise unknown("pruning criterion (method.criterion)", self.criterion, CRITERIA)
        if self.score_batches < 1:
            raise ConfigError(f"method.score_batches must be >= 1, got {self.score_batches}")
        rewind_step(self.rewind)
        if cfg.sparsity.method not in ("none", "iterative"):
            raise ConfigError(
                f"the lottery method prunes by its own settings (method.levels, method.rate, "
                f"method.criterion, ...); remove sparsity.method={cfg.sparsity.method}"
            )


#: ``sparsity.iterative`` settings; the others come from the ``sparsity`` section itself
ITERATIVE_KEYS = ("rate", "levels", "rewind")


def lottery_from_sparsity(cfg: ExperimentConfig) -> LotteryConfig:
    """The lottery settings that run ``sparsity.method: iterative`` on one training.

    ``sparsity.density`` is the last level's: with ``iterative.levels`` unset the number of
    levels is the one whose density (1 - rate)^levels is ``density`` (within 1 %).
    """
    s, it = cfg.sparsity, dict(cfg.sparsity.iterative)
    for key in it:
        if key not in ITERATIVE_KEYS:
            raise unknown("sparsity.iterative setting", key, ITERATIVE_KEYS)
    rate = float(it.get("rate", LotteryConfig.rate))
    if not 0.0 < rate < 1.0:
        raise ConfigError(f"sparsity.iterative.rate must be in (0, 1), got {rate}")
    if not 0.0 < s.density < 1.0:
        raise ConfigError(f"sparsity.method=iterative needs sparsity.density in (0, 1) (the "
                          f"last level's), got {s.density}")
    levels = it.get("levels")
    if levels is None:
        levels = max(1, round(math.log(s.density) / math.log(1.0 - rate)))
    if not math.isclose((1.0 - rate) ** levels, s.density, rel_tol=0.01):
        raise ConfigError(
            f"sparsity.density={s.density} is not reached by IMP at rate {rate}: {levels} "
            f"levels keep {(1.0 - rate) ** levels:.6g}; set sparsity.density to that, or "
            f"choose sparsity.iterative.rate / levels")
    return LotteryConfig(
        levels=int(levels), rate=rate, rewind=str(it.get("rewind", "init")), scope=s.scope,
        criterion=s.criterion, exclude_first=s.exclude_first, exclude_last=s.exclude_last,
        include=list(s.include), exclude=list(s.exclude), score_batches=s.score_batches,
        eval_train=bool(getattr(cfg.method, "eval_train", False)))


def rewind_step(rewind: str) -> int:
    """Optimizer step the survivors are rewound to: 0 for ``init``, K for ``step:K``."""
    text = str(rewind).strip().lower()
    if text == "init":
        return 0
    if text.startswith("step:"):
        try:
            step = int(text[5:])
        except ValueError:
            step = -1
        if step >= 0:
            return step
    raise ConfigError(
        f"method.rewind={rewind!r} is not understood; use 'init' (rewind to the "
        "initialisation) or 'step:K' (to the weights after K optimizer steps of level 0), "
        "e.g. rewind=step:100"
    )


def level_densities(levels: int, rate: float) -> list[float]:
    """Target density of every level, dense level 0 included: (1 - rate)^k."""
    return [1.0, *imp_densities(levels, rate)]


def level_name(level: int) -> str:
    return f"level-{level:02d}"


class RewindSaver(Callback):
    """Saves the model's state after ``step`` optimizer steps (the late-rewinding point)."""

    name = "rewind_saver"

    def __init__(self, step: int, path: Path):
        self.step, self.path = int(step), Path(path)

    def after_optimizer_step(self, trainer: Any) -> None:
        if trainer.step == self.step:
            save_weights(trainer.model, self.path)


class LevelMasks(MaskCallback):
    """Enforces one level's fixed masks and tags its ``mask_update`` events with the level."""

    def __init__(self, masks: MaskSet, level: int, target: float, input_shape):
        super().__init__(masks, input_shape=input_shape)
        self.tags = {"level": level, "target_density": target}

    def on_change(self, trainer: Any, **extra: Any) -> None:
        super().on_change(trainer, **self.tags, **extra)


def run_lottery(cfg: ExperimentConfig, run: Run) -> dict:
    """Train level 0 dense, then prune, rewind and retrain level by level."""
    m = cfg.method
    data = prepare_data(cfg, run)
    device = resolve_device(cfg.train.device)
    model = build_model(cfg, data).to(device)
    shape = tuple(data.image_shape)
    loader = train_loader(cfg, data.train, data.splits, device)
    evals = {"test": eval_loader(cfg, data.test, data.splits, device)}
    if m.eval_train:
        evals["train"] = eval_loader(cfg, data.train, data.splits, device)
    val = eval_loader(cfg, data.val, data.splits, device) if data.val is not None else None
    k = rewind_step(m.rewind)
    total = cfg.train.epochs * len(loader)
    if k > total:
        raise ConfigError(
            f"method.rewind=step:{k} is past the end of level 0 ({total} optimizer steps); "
            f"choose a step <= {total}"
        )
    init_path = run.artifact("init.safetensors")
    if init_path.exists():
        load_weights(model, init_path)
    else:
        save_weights(model, init_path)
    rewind_path = init_path if k == 0 else run.artifact(f"rewind-step-{k}.safetensors")
    densities = level_densities(m.levels, m.rate)
    rows = []
    for level, density in enumerate(densities):
        child = run.child(level_name(level))
        if child.is_finished():
            rows.append(child.read_summary())
            continue
        if level > 0 and not rewind_path.exists():
            raise ConfigError(
                f"the rewind point {rewind_path.name} was not saved: level 0 stopped before "
                f"step {k}; lower the step in method.rewind or turn off early stopping"
            )
        masks = _level_masks(cfg, run, model, level, density, data, loader, device, rewind_path)
        seed_everything(derive_seed(cfg.seed, "lottery-level", level), cfg.train.deterministic)
        child.start(to_dict(cfg), device=device)
        callbacks = [LevelMasks(masks, level, density, shape), TrainingFlops(masks, shape)]
        if level == 0 and k > 0:
            callbacks.append(RewindSaver(k, rewind_path))
        trainer = make_trainer(cfg, model, child, callbacks=callbacks)
        result = trainer.fit(loader, cfg.train.epochs, val_loader=val, eval_loaders=evals)
        trainer.finish()
        masks.save(child.artifact("masks.safetensors"), {"level": str(level)})
        save_weights(trainer.model, child.artifact("model.safetensors"))
        summary = {k2: v for k2, v in result.items() if isinstance(v, int | float | bool | str)}
        summary.update(sparse_summary(trainer.model, masks, data))
        summary.update(
            level=level,
            target_density=density,
            rewind=m.rewind,
            name=cfg.name,
            seed=cfg.seed,
            status="ok",
        )
        child.write_summary(summary)
        rows.append(summary)
    return lottery_summary(rows, m)


def _level_masks(
    cfg: ExperimentConfig, run: Run, model, level: int, density: float, data, loader, device,
    rewind_path: Path,
) -> MaskSet:
    """Masks of ``level``, applied to ``model``: all kept at level 0; else an IMP step
    (:func:`~underbudget.sparsity.imp_step`): the previous level's masks pruned by the
    criterion on its trained weights (read from its artifacts), the survivors rewound to the
    weights at ``rewind_path``."""
    m = cfg.method
    targets = targets_of(m)
    if level == 0:
        masks = MaskSet.from_model(model, targets)
        masks.apply(model)
        return masks
    prev = run.child(level_name(level - 1))
    load_weights(model, prev.artifact("model.safetensors"))
    masks = MaskSet.load(prev.artifact("masks.safetensors"), model)

    def data_fn():
        return scoring_batches(cfg, data.train, loader, device, m.score_batches)

    opts = criterion_options(m.criterion, data_fn, tuple(data.image_shape))
    return imp_step(model, density, read_state_dict(rewind_path), m.criterion, scope=m.scope,
                    masks=masks, seed=derive_seed(cfg.seed, "lottery-prune", level), **opts)


def lottery_summary(rows: list[dict], m: LotteryConfig) -> dict:
    """The parent summary: the per-level table, the dense, best and sparsest levels."""
    table = [{k: row[k] for k in LEVEL_KEYS if k in row} for row in rows]
    by = "val_acc" if all("val_acc" in r for r in table) else "test_acc"
    best = max(table, key=lambda r: (r.get(by, float("-inf")), r["level"]))  # ties: sparser
    last = table[-1]
    return {
        "levels": table,
        "best_by": by,
        "best_level": best["level"],
        "best_density": best["density"],
        "best_test_acc": best["test_acc"],
        "dense_test_acc": table[0]["test_acc"],
        "final_density": last["density"],
        "final_density_all": last["density_all"],
        "final_flops_nonzero": last["flops_nonzero"],
        "final_test_acc": last["test_acc"],
        "train_flops": sum(r.get("train_flops", 0.0) for r in table),
        "rewind": m.rewind,
    }


register_method(
    "lottery",
    LotteryConfig,
    "lottery tickets: iterative magnitude pruning with rewinding (a child run per level)",
    report=lottery_report,
)(run_lottery)
register_schedule("iterative", lottery_from_sparsity)
