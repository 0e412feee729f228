"""The compress_transfer report's figures: metric vs compression level, reliability diagrams."""

from __future__ import annotations

from pathlib import Path

from ...metrics import plot_reliability
from ...report import line_plot
from .results import budget_key, ece_of, method_key, most_compressed, pool_reliability


def _series(rows: dict, variants: dict, order: list[str], metric: str, kind: str):
    """Line-plot series: per (method, budget, family), ``metric`` vs sparsity or bits."""
    series = {}
    keys = sorted({(m, b) for m, b, _ in rows}, key=lambda k: (method_key(k[0]), budget_key(k[1])))
    families = sorted({variants[n]["family"] for n in order if variants[n]["kind"] == kind})
    for method, budget in keys:
        for family in families:
            names = ["dense"] + [n for n in order if variants[n]["family"] == family]
            pts = []
            for n in names:
                row = rows.get((method, budget, n))
                if row is None or row[metric] is None:
                    continue
                v = variants[n]
                x = v.get("sparsity", 0.0) if kind == "prune" else float(v.get("bits") or 32)
                if n == "dense":
                    x = 0.0 if kind == "prune" else 32.0
                pts.append((x, row[metric][0], row[metric][1]))
            if len(pts) < 2:
                continue
            pts.sort()
            label = f"{method} / {budget}" + (f" ({family})" if len(families) > 1 else "")
            series[label] = ([p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts])
    return series


def level_plots(rows, variants, order, out: Path, prefix: str) -> list[str]:
    files = []
    kinds = {variants[n]["kind"] for n in order}
    for kind, xlabel, logx in (
        ("prune", "sparsity (measured)", False),
        ("quant", "weight bits (dense = 32)", False),
    ):
        if kind not in kinds:
            continue
        for metric, ylabel in (("acc", "test accuracy"), ("ece", "test ECE (15 bins)")):
            series = _series(rows, variants, order, metric, kind)
            if not series:
                continue
            axis = "sparsity" if kind == "prune" else "bits"
            path = out / f"{prefix}{metric}_vs_{axis}.png"
            line_plot(
                series,
                path,
                xlabel=xlabel,
                ylabel=ylabel,
                logx=logx,
                title=f"{ylabel} vs {axis} (mean ± std over seeds)",
            )
            files.append(str(path))
    return files


def reliability_plots(rows, variants, order, out: Path, prefix: str) -> tuple[list[str], list[str]]:
    files, lines = [], []
    picks = ["dense"] + most_compressed(variants, order)
    for method, budget in sorted(
        {(m, b) for m, b, _ in rows}, key=lambda k: (method_key(k[0]), budget_key(k[1]))
    ):
        panels = {}
        for name in picks:
            row = rows.get((method, budget, name))
            if row is None:
                continue
            pooled = pool_reliability(row["runs"])
            if sum(r["count"] for r in pooled):
                panels[name] = {"reliability": pooled, "ece": ece_of(pooled)}
        if not panels:
            continue
        path = out / f"{prefix}reliability_{method}_{budget}.png"
        plot_reliability(
            panels, path, title=f"{method}, {budget}: test reliability (pooled over seeds)"
        )
        files.append(str(path))
        lines.append(f"- {method} / {budget}: `{path.name}` ({', '.join(panels)})")
    return files, lines
