"""D2-Sparse report inputs: each finished run as a :class:`Point` (arm, data budget, target
density, seed), classified by the tag the grid writes into ``report.d2grid`` or else from the
run's method and sparsity settings."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from ...report import Record

ARMS = (
    "d2sparse",
    "single",
    "uncoupled",
    "imp",
    "omp",
    "rigl",
    "set",
    "static",
    "snip",
    "grasp",
    "synflow",
    "dense",
)
ARM_TITLES = {
    "d2sparse": "D2-Sparse (S)",
    "d2sparse (F)": "D2-Sparse (F, not deployed)",
    "single": "ablation: S alone",
    "uncoupled": "ablation: no coupling",
    "imp": "IMP + rewinding",
    "omp": "one-shot magnitude",
    "rigl": "RigL",
    "set": "SET",
    "static": "static ERK",
    "snip": "SNIP",
    "grasp": "GraSP",
    "synflow": "SynFlow",
    "dense": "dense",
}


@dataclass
class Point:
    """One finished run, placed in the grid."""

    arm: str
    budget: float
    density: float  # 1.0 for dense
    seed: int
    record: Record

    @property
    def summary(self) -> dict:
        return normalized(self.record)


def grid_tag(rec: Record) -> dict:
    report = rec.config.get("report") or {}
    tag = report.get("d2grid") if isinstance(report, dict) else None
    return tag if isinstance(tag, dict) else {}


def arm_of(rec: Record) -> str:
    """The arm a run belongs to (its grid tag, else its method and settings)."""
    tag = grid_tag(rec)
    if "arm" in tag:
        return str(tag["arm"])
    method = rec.method
    cfg = rec.config.get("method") or {}
    if method == "d2sparse":
        if cfg.get("single"):
            return "single"
        if (
            not cfg.get("lambda_fast")
            and not cfg.get("lambda_slow")
            and cfg.get("slow_mode", "sgd") == "sgd"
        ):
            return "uncoupled"
        return "d2sparse"
    if method == "lottery":
        return "imp"
    if method == "train":
        s = rec.config.get("sparsity") or {}
        kind = s.get("method", "none")
        if kind == "none":
            return "dense"
        if kind == "prune_at_init":
            return {"magnitude": "omp"}.get(s.get("criterion"), s.get("criterion", kind))
        return kind
    return method


def density_of(rec: Record, arm: str) -> float:
    tag = grid_tag(rec)
    if "density" in tag:
        return float(tag["density"])
    if arm == "dense":
        return 1.0
    cfg = rec.config
    if rec.method == "d2sparse":
        return float((cfg.get("method") or {}).get("density", rec.summary.get("density", 1)))
    if rec.method == "train":
        return float((cfg.get("sparsity") or {}).get("density", 1.0))
    for key in ("density_target", "final_density", "density"):
        if isinstance(rec.summary.get(key), int | float):
            return float(rec.summary[key])
    return 1.0


def budget_of(rec: Record) -> float:
    tag = grid_tag(rec)
    if "budget" in tag:
        return float(tag["budget"])
    frac = (rec.config.get("data") or {}).get("fraction")
    return 1.0 if frac is None else float(frac)


#: the lottery method reports its last level under ``final_*`` (that level has the density)
_LOTTERY = {
    "test_acc": "final_test_acc",
    "flops_nonzero": "final_flops_nonzero",
    "density": "final_density",
    "density_all": "final_density_all",
}


def normalized(rec: Record) -> dict:
    """The run's summary with the keys the comparison reads (``test_acc``, ``flops_nonzero``,
    ``train_flops``, ...) whatever method produced it."""
    summary = dict(rec.summary)
    if rec.method == "lottery":
        for key, source in _LOTTERY.items():
            if source in summary:
                summary[key] = summary[source]
    return summary


def points(records: list[Record]) -> list[Point]:
    """Finished, successful runs as grid points."""
    out = []
    for rec in records:
        if rec.summary.get("status", "ok") != "ok" or "test_acc" not in normalized(rec):
            continue
        arm = arm_of(rec)
        out.append(
            Point(
                arm,
                budget_of(rec),
                round(density_of(rec, arm), 6),
                int(rec.config.get("seed", rec.summary.get("seed", 0))),
                rec,
            )
        )
    return out


def budget_label(b: float) -> str:
    frac = Fraction(b).limit_denominator(1024)
    return str(frac) if abs(float(frac) - b) < 1e-9 else f"{b:g}"


def run_values(pts: list[Point], key: str) -> list[float]:
    return [
        float(p.summary[key])
        for p in pts
        if isinstance(p.summary.get(key), int | float) and not isinstance(p.summary.get(key), bool)
    ]
