"""The Pareto front of runs: a quality metric against one cost axis.

Quality is the headline metric of each run (:func:`underbudget.runs.headline.headline`):
``accuracy`` (higher is better) or ``ece`` (lower is better); a transfer stage's are its
target accuracy and ECE; a run that records no ECE (a ``train`` source, a lottery level)
takes the one a quantize stage below it measured on its float model, else the one its
composed experiment's report measured (``compose.json``), when there is one. The cost is one axis of
``costs`` (:mod:`.costs`), lower is better. A run is on the front when no other run is at
least as good on both and strictly better on one; equal points are all on the front.

Runs are collected as the report collects them (sweep members included, one run per setting
and seed); a finished run that holds finished sub-runs (lottery levels, compress_transfer
variants, grid members) contributes those sub-runs, the points it is made of, instead of
itself. The stages of a composed experiment (quantize and transfer runs below the model they
start from) each place, beside that model. Written: ``pareto.md`` (every run, front
marked) and ``pareto.png`` (log cost axis, the front as a step line).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, unknown
from ..runs.headline import headline
from ..utils.atomic import atomic_path, write_text
from .collect import Record, collect, pool_seeds
from .costs import AXES, leaf_runs, nearest_config
from .plots import _pyplot

#: --metric name -> (headline column, higher is better)
METRICS: dict[str, tuple[str, bool]] = {"accuracy": ("accuracy", True), "ece": ("ECE", False)}
FRONT_MARK = "★"
#: the ``stage`` of a composed experiment's stage summaries (quantize, transfer)
STAGE_KINDS = ("quantize", "transfer")


@dataclass
class Point:
    """One run placed (or not) on the cost/metric plane."""

    label: str
    method: str
    cost: float | None
    value: float | None
    front: bool = False

    @property
    def placed(self) -> bool:
        return self.cost is not None and self.value is not None


def check_pareto(axis: str, metric: str) -> None:
    """Raise one ConfigError for an unknown cost axis or metric."""
    if axis not in AXES:
        raise unknown("cost axis (--pareto)", axis, AXES)
    if metric not in METRICS:
        raise unknown("metric (--metric)", metric, METRICS)


def pareto_front(costs: Sequence[float], values: Sequence[float],
                 maximize: bool = True) -> list[bool]:
    """Which points are not dominated (lower cost and ``values`` higher when ``maximize``,
    else lower). O(n log n): sorted by cost, a point is on the front when its value beats
    every point of strictly lower cost and ties the best of its own cost."""
    if len(costs) != len(values):
        raise ValueError("costs and values must have the same length")
    sign = 1.0 if maximize else -1.0
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -sign * values[i]))
    front = [False] * len(costs)
    best_lower = -math.inf  # best value among strictly lower costs
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and costs[order[j]] == costs[order[i]]:
            j += 1
        group_best = sign * values[order[i]]
        if group_best > best_lower:
            for k in order[i:j]:
                front[k] = sign * values[k] == group_best
        best_lower = max(best_lower, group_best)
        i = j
    return front


def _points_of(paths: list[str | Path]) -> list[Record]:
    """The runs to place: collected as the report does, sub-runs instead of their parent."""
    out: list[Record] = []
    seen: set[Path] = set()
    for rec in pool_seeds(collect(paths))[0]:
        nested = [r for r in collect([rec.path], nested=True) if r.path != rec.path]
        stages = [r for r in nested if r.summary.get("stage") in STAGE_KINDS]
        if stages:  # a composed experiment's stages below their upstream: every one places
            found = _upstream_points(rec, nested, stages) + stages
        else:
            subs = set(leaf_runs(rec.path))
            found = [r for r in nested if r.path in subs] or [rec]
        for r in found:
            if r.path.resolve() not in seen:
                seen.add(r.path.resolve())
                out.append(r)
    return out


def _upstream_points(rec: Record, nested: list[Record], stages: list[Record]) -> list[Record]:
    """The points of a source run that holds stages: the innermost runs below it that are not
    stages (lottery levels), else the run itself."""
    inside = {r.path for r in stages}
    plain = [r for r in nested if r.path not in inside
             and not any(p in r.path.parents for p in inside)]
    leaves = [r for r in plain if not any(q.path != r.path and r.path in q.path.parents
                                          for q in plain)]
    return leaves or [rec]


def _label(path: Path, roots: list[Path]) -> str:
    for root in roots:
        try:
            rel = path.resolve().relative_to(root.resolve())
        except ValueError:
            continue
        return root.name if rel == Path() else f"{root.name}/{rel.as_posix()}"
    return str(path)


def _method(rec: Record) -> str:
    """The method that made the run (a sub-run without a config: its parent's)."""
    if rec.summary.get("stage") == "transfer":  # its metric is the target task's
        return f"{rec.summary.get('method')} transfer"
    if rec.summary.get("method") or (rec.config.get("method") or {}).get("name"):
        return rec.method
    return str((nearest_config(rec.path).get("method") or {}).get("name", "?"))


#: --metric column -> the key a quantize stage below a run records it under for that run
_MEASURED_BELOW = {"accuracy": "test_acc_float", "ECE": "test_ece_float"}


def _value(rec: Record, column: str) -> float | None:
    """The run's headline ``column``; for a run that records none, the value a quantize
    stage below it measured on its (float) model, when one did."""
    value = headline(rec.summary)[column]
    if value is not None or column not in _MEASURED_BELOW:
        return value
    for path in sorted(rec.path.glob("ptq-*/summary.json")):
        below = (_read_json(path) or {}).get(_MEASURED_BELOW[column])
        if isinstance(below, int | float) and math.isfinite(below):
            return float(below)
    return _composed_value(rec.path, column)


#: --metric column -> the column of a composed experiment's model rows that holds it
_COMPOSE_COLUMNS = {"accuracy": "source test acc", "ECE": "source test ECE"}


def _composed_value(run_dir: Path, column: str) -> float | None:
    """The value a composed experiment's report measured for the stage at ``run_dir`` (its
    ``compose.json``, beside the ``stages`` folder the stage lives in), else None."""
    stages = next((p for p in run_dir.parents if p.name == "stages"), None)
    if stages is None:
        return None
    here = run_dir.resolve()
    for found in sorted([*stages.parent.glob("*/report/compose.json"),
                         *stages.parent.glob("*/*/report/compose.json")]):
        data = _read_json(found) or {}
        root = (found.parent / str(data.get("root", "../../"))).resolve()
        for row in data.get("models", []):
            value = row.get(_COMPOSE_COLUMNS[column])
            if (root / str(row.get("path"))).resolve() == here and isinstance(
                    value, int | float) and math.isfinite(value):
                return float(value)
    return None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def pareto_points(records: list[Record], axis: str, metric: str = "accuracy",
                  roots: Sequence[str | Path] = ()) -> list[Point]:
    """Every record as a :class:`Point` (cost, headline metric) with its front flag."""
    check_pareto(axis, metric)
    column, maximize = METRICS[metric]
    roots = [Path(r) for r in roots]
    points = [Point(_label(rec.path, roots), _method(rec), rec.costs.get(axis),
                    _value(rec, column)) for rec in records]
    placed = [p for p in points if p.placed]
    flags = pareto_front([p.cost for p in placed], [p.value for p in placed], maximize)
    for p, flag in zip(placed, flags):
        p.front = flag
    return points


def _fmt(value: float | None, metric: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if metric else f"{value:.4g}"


def pareto_markdown(points: list[Point], axis: str, metric: str) -> str:
    """The table of all points (front marked), then the runs that could not be placed."""
    _, maximize = METRICS[metric]
    placed = sorted((p for p in points if p.placed),
                    key=lambda p: (p.cost, -p.value if maximize else p.value, p.label))
    front = sum(p.front for p in placed)
    better = "higher" if maximize else "lower"
    lines = [f"# Pareto front: {metric} vs {axis}", "",
             f"{len(placed)} run(s) placed, {front} on the front ({FRONT_MARK}): {better} "
             f"{metric} and lower {axis} are better; a run is on the front when no other run "
             "is at least as good on both and better on one.", "",
             f"| run | method | {axis} | {metric} | front |", "|---|---|---:|---:|:---:|"]
    lines += [f"| {p.label} | {p.method} | {_fmt(p.cost)} | {_fmt(p.value, True)} | "
              f"{FRONT_MARK if p.front else ''} |" for p in placed]
    if any(p.method.endswith(" transfer") for p in placed):
        lines += ["", "Transfer points (method `… transfer`) measure the target task; the "
                  "other runs, their own test set."]
    missing = [p for p in points if not p.placed]
    if missing:
        lines += ["", "## Not placed", "",
                  f"These runs record no {axis} or no {metric}:", ""]
        lines += [f"- {p.label} ({p.method}): {axis} {_fmt(p.cost)}, "
                  f"{metric} {_fmt(p.value, True)}" for p in missing]
    return "\n".join(lines) + "\n"


def pareto_plot(points: list[Point], path: str | Path, axis: str, metric: str) -> Path:
    """Scatter of the placed runs (one colour per method) on a log cost axis, the front as a
    step line (the best metric reachable at each cost). Costs <= 0 cannot be drawn on a log
    axis and are left out of the picture (they stay in the table)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    drawn = [p for p in points if p.placed and p.cost > 0]
    for method in sorted({p.method for p in drawn}):
        mine = [p for p in drawn if p.method == method]
        ax.scatter([p.cost for p in mine], [p.value for p in mine], s=18, alpha=0.7,
                   label=method)
    front = sorted((p for p in drawn if p.front), key=lambda p: p.cost)
    if front:
        ax.step([p.cost for p in front], [p.value for p in front], where="post", color="black",
                linewidth=1.2, label="Pareto front")
        ax.scatter([p.cost for p in front], [p.value for p in front], s=40,
                   facecolors="none", edgecolors="black")
    if drawn:
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no run to place", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(f"{axis} (log scale)")
    ax.set_ylabel(metric)
    ax.set_title(f"Pareto front: {metric} vs {axis}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def write_pareto(paths: list[str | Path], out_dir: str | Path, axis: str,
                 metric: str = "accuracy") -> dict:
    """Write ``pareto.md`` and ``pareto.png`` for the runs under ``paths`` into ``out_dir``;
    return the points and the files written."""
    check_pareto(axis, metric)
    records = _points_of(paths)
    if not records:
        raise ConfigError(f"no finished run at or below {', '.join(map(str, paths))}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    points = pareto_points(records, axis, metric, roots=paths)
    write_text(out / "pareto.md", pareto_markdown(points, axis, metric))
    png = pareto_plot(points, out / "pareto.png", axis, metric)
    return {"points": points, "files": [str(out / "pareto.md"), str(png)]}
