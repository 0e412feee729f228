"""``d2sparse-grid``: data budgets x densities x seeds x arms, each an ordinary child run.

An *arm* is a method with its settings: D2-Sparse, its two ablations (S alone; F and S
without coupling) and the baselines, which reuse the existing methods: the ``train`` method's
``sparsity`` section (dense, static ERK, SET, RigL, SNIP, GraSP, SynFlow) and the ``lottery``
method (IMP with rewinding; one-shot magnitude pruning as its one-round special case). Every
child is a complete run directory (skipped when finished, resumed when interrupted) whose
config carries a ``report.d2grid`` tag (arm, budget, density, seed, and whether epochs or
steps are held equal across budgets) that the report reads.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from ...config import ExperimentConfig, MethodConfig, apply_overrides, from_dict, to_dict
from ...errors import ConfigError, UnderbudgetError, closest, unknown
from ...report import collect, mean_std
from ...runs import Run
from ..registry import list_methods, register_method
from .config import D2SparseConfig
from .report import ARMS, budget_label, points, report_grid

GRID_METHOD = "d2sparse-grid"
EQUAL = ("epochs", "steps")
DENSITY_FREE = ("dense",)  # arms that do not depend on the density


def imp_schedule(density: float, levels: int | None = None) -> tuple[int, float]:
    """(levels, rate) of IMP ending exactly at ``density``: by default as many levels as
    20 % steps need (0.8^k), with the rate adjusted so that (1 - rate)^levels = density."""
    if levels is None:
        levels = max(1, math.ceil(math.log(density) / math.log(0.8) - 1e-9))
    return int(levels), 1.0 - density ** (1.0 / levels)


def arm_settings(
    arm: str, density: float, d2sparse: dict, imp_levels: int | None = None
) -> dict[str, Any]:
    """Dotted-key overrides that turn the grid's base config into ``arm`` at ``density``."""
    d2 = {f"method.{k}": v for k, v in d2sparse.items()}
    if arm == "d2sparse":
        return {"method": {"name": "d2sparse"}, **d2, "method.density": density}
    if arm == "single":
        return {
            "method": {"name": "d2sparse"},
            **d2,
            "method.density": density,
            "method.single": True,
            "method.slow_mode": "sgd",
            "method.shared_weights": False,
            "method.slow_growth": "rigl",
        }
    if arm == "uncoupled":
        return {
            "method": {"name": "d2sparse"},
            **d2,
            "method.density": density,
            "method.lambda_fast": 0.0,
            "method.lambda_slow": 0.0,
            "method.slow_mode": "sgd",
        }
    if arm in ("imp", "omp"):
        levels, rate = imp_schedule(density, 1 if arm == "omp" else imp_levels)
        return {
            "method": {"name": "lottery"},
            "method.levels": levels,
            "method.rate": rate,
            "sparsity.method": "none",
            "sparsity.density": 1.0,
        }
    train = {"method": {"name": "train", "eval_train": True}}  # the gap, as D2-Sparse reports it
    if arm == "dense":
        return {**train, "sparsity.method": "none", "sparsity.density": 1.0}
    if arm in ("static", "set", "rigl"):
        return {**train, "sparsity.method": arm, "sparsity.density": density}
    if arm in ("snip", "grasp", "synflow"):
        out = {
            **train,
            "sparsity.method": "prune_at_init",
            "sparsity.criterion": arm,
            "sparsity.density": density,
        }
        if arm == "synflow":
            out["sparsity.iterations"] = 100  # SynFlow prunes in 100 rounds at init
        return out
    raise unknown("grid arm", arm, ARMS)


@dataclass
class D2GridConfig(MethodConfig):
    """The D2-Sparse experiment grid (every child is an ordinary run of its method)."""

    name: str = GRID_METHOD
    budgets: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.25, 0.125, 0.0625])
    densities: list[float] = field(default_factory=lambda: [0.5, 0.2, 0.1, 0.05])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    equal: str = "epochs"  # epochs | steps: what is held equal across budgets
    max_epochs: int | None = None  # cap of the scaled epochs when equal=steps
    d2sparse: dict = field(default_factory=dict)  # method settings of the d2sparse arms
    imp_levels: int | None = None  # IMP levels to each density (None: 20 % steps, 0.8^k)
    arm_overrides: dict = field(default_factory=dict)  # {arm: {dotted.key: value}}

    def validate(self, cfg: ExperimentConfig) -> None:
        """Check names and ranges, then build every child config (errors before any run)."""
        for arm in self.arms:
            if arm not in ARMS:
                raise unknown("grid arm (method.arms)", arm, ARMS)
        for arm in self.arm_overrides:
            if arm not in ARMS:
                raise unknown("arm in method.arm_overrides", arm, ARMS)
        if not self.arms or not self.budgets or not self.seeds:
            raise ConfigError("method.arms, method.budgets and method.seeds must not be empty")
        if any(a != "dense" for a in self.arms) and not self.densities:
            raise ConfigError("method.densities must not be empty for sparse arms")
        for b in self.budgets:
            if not 0 < b <= 1:
                raise ConfigError(f"method.budgets are fractions in (0, 1], got {b}")
        for d in self.densities:
            if not 0 < d < 1:
                raise ConfigError(f"method.densities are in (0, 1) (fraction kept), got {d}")
        if self.imp_levels is not None and self.imp_levels < 1:
            raise ConfigError(f"method.imp_levels must be >= 1, got {self.imp_levels}")
        if self.equal not in EQUAL:
            raise unknown("what is held equal across budgets (method.equal)", self.equal, EQUAL)
        if self.max_epochs is not None and self.max_epochs < 1:
            raise ConfigError(f"method.max_epochs must be >= 1, got {self.max_epochs}")
        if cfg.data.fraction is not None or cfg.data.kshot is not None:
            raise ConfigError(
                "the grid sets data.fraction per child from method.budgets: "
                "leave data.fraction and data.kshot unset"
            )
        unknown_keys = set(self.d2sparse) - set(D2SparseConfig.__dataclass_fields__)
        if unknown_keys:
            key = sorted(unknown_keys)[0]
            raise ConfigError(
                f"unknown key 'method.d2sparse.{key}'"
                f"{closest(key, D2SparseConfig.__dataclass_fields__)}"
            )
        if "lottery" not in list_methods() and {"imp", "omp"} & set(self.arms):
            raise ConfigError(
                "the imp and omp arms need the 'lottery' method, which this "
                "installation lacks; remove them from method.arms"
            )
        grid_children(cfg)

    def epochs(self, base: int, budget: float) -> int:
        """Epochs of a child at ``budget`` (scaled by 1/budget when steps are held equal)."""
        if self.equal == "epochs":
            return base
        epochs = max(1, round(base / budget))
        return min(epochs, self.max_epochs) if self.max_epochs else epochs


def child_slug(arm: str, budget: float, density: float | None, seed: int) -> str:
    parts = [arm, f"b{budget_label(budget).replace('/', '-')}"]
    if density is not None:
        parts.append(f"d{density:g}")
    parts.append(f"s{seed}")
    return "_".join(parts)


def grid_children(cfg: ExperimentConfig) -> list[tuple[str, ExperimentConfig]]:
    """``(directory name, config)`` of every child run, in running order."""
    g: D2GridConfig = cfg.method
    base = to_dict(cfg)
    base.pop("method")
    base["sweep"] = {}
    base["name"] = cfg.name
    out = []
    for seed in g.seeds:
        for budget in sorted(g.budgets, reverse=True):
            done_free: set[str] = set()
            for density in sorted(g.densities, reverse=True) or [1.0]:
                for arm in g.arms:
                    free = arm in DENSITY_FREE
                    if free and arm in done_free:
                        continue
                    done_free.add(arm)
                    settings = arm_settings(arm, density, g.d2sparse, g.imp_levels)
                    settings.update(g.arm_overrides.get(arm, {}))
                    tag = {
                        "arm": arm,
                        "budget": budget,
                        "density": 1.0 if free else density,
                        "seed": seed,
                        "equal": g.equal,
                    }
                    values = json.loads(json.dumps(base))
                    values["method"] = settings.pop("method")
                    values["report"] = {**(values.get("report") or {}), "d2grid": tag}
                    values = apply_overrides(
                        values,
                        {
                            "seed": seed,
                            "data.fraction": budget,
                            "train.epochs": g.epochs(cfg.train.epochs, budget),
                            **settings,
                        },
                    )
                    slug = child_slug(arm, budget, None if free else density, seed)
                    try:
                        out.append((slug, from_dict(values)))
                    except ConfigError as exc:
                        raise ConfigError(f"grid child {slug}: {exc}") from None
    return out


def _summary(pts) -> dict[str, Any]:
    acc: dict[str, list[float]] = defaultdict(list)
    for p in pts:
        acc[f"{p.arm}|{p.budget:g}|{p.density:g}"].append(p.summary["test_acc"])
    table = {k: mean_std(v)[0] for k, v in acc.items()}
    gains = {}
    for key, value in table.items():
        arm, budget, density = key.split("|")
        ref = table.get(f"imp|{budget}|{density}")
        if arm == "d2sparse" and ref is not None:
            gains[f"b{budget}|d{density}"] = value - ref
    out: dict[str, Any] = {"acc": table, "gain_vs_imp": gains}
    if gains:
        out["mean_gain_vs_imp"] = sum(gains.values()) / len(gains)
    return out


@register_method(
    GRID_METHOD,
    D2GridConfig,
    "D2-Sparse experiment grid: budgets x densities x seeds x (d2sparse, ablations, baselines)",
    report=report_grid,
)
def run_grid(cfg: ExperimentConfig, run: Run) -> dict:
    """Summarise the finished children (the compiled grid runs them before this task)."""
    kids = [run.child(slug).path for slug, _ in grid_children(cfg)]
    missing = [p.name for p in kids if not Run(p).is_finished()]
    if missing:
        raise UnderbudgetError(f"{len(missing)} grid child run(s) have not finished, e.g. "
                          f"{missing[0]}: launch the grid as an experiment (underbudget run), "
                          "which runs every child first")
    records = collect(kids)
    failed = [r for r in records if r.summary.get("status", "ok") != "ok"]
    summary = {"runs": len(records), "failed": len(failed), "equal": cfg.method.equal}
    summary.update(_summary(points(records)))
    return summary
