"""Reliability diagrams as PNG files, one panel per model (e.g. dense vs compressed)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from underbudget.metrics._inputs import MetricInputError
from underbudget.utils.atomic import atomic_path

Rows = Sequence[Mapping[str, Any]]


def _is_rows(obj: Any) -> bool:
    return isinstance(obj, Sequence) and not isinstance(obj, (str, bytes))


def _panels(data: Any) -> list[tuple[str | None, Rows, float | None]]:
    """Normalise the accepted inputs to (name, rows, ece) triples."""
    if _is_rows(data):
        return [(None, data, None)]
    if isinstance(data, Mapping) and "reliability" in data:
        return [(None, data["reliability"], data.get("ece"))]
    if isinstance(data, Mapping) and data:
        panels = []
        for name, item in data.items():
            if _is_rows(item):
                panels.append((str(name), item, None))
            elif isinstance(item, Mapping) and "reliability" in item:
                panels.append((str(name), item["reliability"], item.get("ece")))
            else:
                break
        else:
            return panels
    raise MetricInputError(
        "plot_reliability: pass reliability_data(...) rows, a calibration_report(...) dict, or a "
        "dict mapping a name to either (one panel each)"
    )


def plot_reliability(
    data: Rows | Mapping[str, Any], path: str | os.PathLike, title: str | None = None
) -> Path:
    """Draw reliability diagrams and write them to ``path`` as a PNG (atomically).

    ``data`` is one set of bin rows (``{lo, hi, count, confidence, accuracy}``), one
    :func:`calibration_report` dict, or a dict ``{name: rows_or_report}`` drawn side by side.
    Bars show accuracy per bin, the shaded part the gap to the bin's mean confidence, and the
    diagonal perfect calibration. Uses matplotlib's Agg canvas; no display is needed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = _panels(data)
    fig = Figure(figsize=(4.0 * len(panels), 4.3), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, rows, ece_value) in zip(axes, panels):
        full = [r for r in rows if r.get("count") and r.get("accuracy") is not None]
        left = [r["lo"] for r in full]
        width = [max(r["hi"] - r["lo"], 0.005) for r in full]
        acc = [r["accuracy"] for r in full]
        conf = [r["confidence"] for r in full]
        ax.bar(
            left,
            acc,
            width=width,
            align="edge",
            color="#4c72b0",
            edgecolor="black",
            linewidth=0.6,
            label="accuracy",
        )
        ax.bar(
            left,
            [c - a for c, a in zip(conf, acc)],
            bottom=acc,
            width=width,
            align="edge",
            color="#dd8452",
            alpha=0.45,
            edgecolor="#c44e52",
            hatch="//",
            linewidth=0.6,
            label="gap to confidence",
        )
        ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        label = name or ""
        if ece_value is not None:
            label = f"{label}  ECE {100 * ece_value:.2f}%".strip()
        ax.set_title(label, fontsize=10)
        ax.legend(loc="upper left", fontsize=7)
    if title:
        fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)
