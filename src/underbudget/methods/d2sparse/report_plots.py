"""D2-Sparse report plots: accuracy vs data budget series and the mask-evolution curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...report import Record, line_plot, mean_std
from .report_points import Point, budget_label, run_values


def budget_series(pts: list[Point], key: str, budgets: list[float]):
    xs, means, stds = [], [], []
    for b in budgets:
        vals = run_values([p for p in pts if p.budget == b], key)
        if vals:
            m, s = mean_std(vals)
            xs.append(b)
            means.append(m)
            stds.append(s)
    return xs, means, stds


def evolution_curve(records: list[Record], key: str):
    """(fraction of training, mean, std) of a ``mask_evolution`` field over seeds."""
    runs = []
    for rec in records:
        pts = {
            round(float(e["frac"]), 6): float(e[key])
            for e in rec.events("mask_evolution")
            if isinstance(e.get(key), int | float)
        }
        if pts:
            runs.append(pts)
    if not runs:
        return None
    xs = sorted(set.intersection(*(set(r) for r in runs)))
    if not xs:
        return None
    stats = [mean_std([r[x] for r in runs]) for x in xs]
    return xs, [m for m, _ in stats], [s for _, s in stats]


def evolution_plots(pts: list[Point], density: float, out: Path) -> list[str]:
    d2 = [p for p in pts if p.arm == "d2sparse" and p.record.events("mask_evolution")]
    if not d2:
        return []
    tag = f"d{density:g}"
    budgets = sorted({p.budget for p in d2}, reverse=True)
    overlap, explore, survive, styles = {}, {}, {}, {}
    for b in budgets:
        recs = [p.record for p in d2 if p.budget == b]
        name = f"budget {budget_label(b)}"
        for key, label, target, style in (
            ("iou_fast_slow", "IoU(F, S)", overlap, "-"),
            ("slow_iou_initial", "IoU(S, S init)", overlap, "--"),
            ("fast_iou_initial", "IoU(F, F init)", overlap, ":"),
            ("slow_ever_active", "S ever active", explore, "-"),
            ("fast_ever_active", "F ever active", explore, "--"),
            ("slow_regrown_alive", "S regrown alive", survive, "-"),
            ("fast_regrown_alive", "F regrown alive", survive, "--"),
            ("slow_survival", "S survival of last growth", survive, "-."),
            ("fast_survival", "F survival of last growth", survive, ":"),
        ):
            curve = evolution_curve(recs, key)
            if curve is not None:
                target[f"{label}, {name}"] = curve
                styles[f"{label}, {name}"] = {"linestyle": style}
    files = []
    for series, fname, ylabel, title in (
        (overlap, "overlap", "IoU", "Mask overlap (F vs S, and with the initial masks)"),
        (
            explore,
            "ever_active",
            "fraction of weights ever active",
            "Exploration (in-time over-parameterisation)",
        ),
        (survive, "regrown_survival", "fraction alive", "Survival of regrown weights"),
    ):
        if series:
            files.append(
                str(
                    line_plot(
                        series,
                        out / f"d2sparse_{fname}_{tag}.png",
                        xlabel="fraction of training",
                        ylabel=ylabel,
                        title=f"{title}, density {density:g}",
                        styles=styles,
                    )
                )
            )
    smallest = [p.record for p in d2 if p.budget == budgets[-1]]
    layers: dict[str, Any] = {}
    lstyles = {}
    for which, style in (("slow", "-"), ("fast", "--")):
        events = smallest[0].events("mask_evolution")
        names = list((events[0].get(f"{which}_layer_density") or {}) if events else [])
        for layer in names:
            xs = [float(e["frac"]) for e in events]
            ys = [float(e[f"{which}_layer_density"][layer]) for e in events]
            key = f"{'S' if which == 'slow' else 'F'} {layer}"
            layers[key] = (xs, ys, None)
            lstyles[key] = {"linestyle": style}
    if layers:
        files.append(
            str(
                line_plot(
                    layers,
                    out / f"d2sparse_layer_density_{tag}.png",
                    xlabel="fraction of training",
                    ylabel="layer density",
                    title=f"Per-layer density (measured), budget "
                    f"{budget_label(budgets[-1])}, density {density:g}",
                    styles=lstyles,
                )
            )
        )
    return files
