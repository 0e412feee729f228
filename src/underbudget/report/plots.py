"""PNG plots written atomically with matplotlib's Agg backend."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ..utils.atomic import atomic_path

Series = dict[str, tuple[Sequence[float], Sequence[float], Sequence[float] | None]]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | Path) -> Path:
    """Lay ``fig`` out, write it to ``path`` as PNG (atomically) and close it."""
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    _pyplot().close(fig)
    return path


def line_plot(series: Series, path: str | Path, *, xlabel: str, ylabel: str, title: str = "",
              fill_area: bool = False, logx: bool = False, styles: dict | None = None) -> Path:
    """Lines ``label -> (x, mean, std or None)``; std drawn as a band; optional area fill."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for label, (xs, ys, err) in series.items():
        style = {"marker": "o", "markersize": 3, **(styles or {}).get(label, {})}
        (line,) = ax.plot(xs, ys, label=label, **style)
        if err is not None and any(e and not math.isnan(e) for e in err):
            lo = [y - e for y, e in zip(ys, err)]
            hi = [y + e for y, e in zip(ys, err)]
            ax.fill_between(xs, lo, hi, alpha=0.2, color=line.get_color())
        if fill_area:
            ax.fill_between(xs, ys, 0, alpha=0.08, color=line.get_color())
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    return save_png(fig, path)
