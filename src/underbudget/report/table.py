"""Tables of run summaries: mean ± std over seeds, as markdown and CSV."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence

from .collect import Record

SKIP = {"seed", "wall_time"}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    return mean, math.sqrt(var)


def numeric_keys(records: list[Record], keys: Sequence[str] | None = None) -> list[str]:
    """Summary keys that hold numbers in every record (or the requested ones present)."""
    if keys:
        return [k for k in keys if any(_num(r.summary.get(k)) for r in records)]
    common = None
    for rec in records:
        here = [k for k, v in rec.summary.items() if _num(v) and k not in SKIP]
        common = here if common is None else [k for k in common if k in here]
    return common or []


def _num(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def summarize(groups: list[tuple[str, list[Record]]], keys: Sequence[str]) -> list[dict]:
    """One row per group: label, number of seeds, mean and std of each key."""
    rows = []
    for label, recs in groups:
        row: dict = {"setting": label, "seeds": len(recs)}
        for key in keys:
            vals = [r.summary[key] for r in recs if _num(r.summary.get(key))]
            row[key] = mean_std(vals) if vals else (math.nan, math.nan)
        rows.append(row)
    return rows


def fmt(value: tuple[float, float], key: str = "") -> str:
    """'mean ± std' with a precision suited to the magnitude."""
    mean, std = value
    if math.isnan(mean):
        return "–"
    if abs(mean) >= 1e6:
        text, err = f"{mean:.3g}", f"{std:.2g}"
    elif abs(mean) >= 100:
        text, err = f"{mean:.1f}", f"{std:.1f}"
    else:
        text, err = f"{mean:.4f}", f"{std:.4f}"
    return text if std == 0 else f"{text} ± {err}"


def markdown(rows: list[dict], keys: Sequence[str]) -> str:
    """A markdown table of :func:`summarize` rows."""
    head = ["setting", "seeds", *keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [str(row["setting"]), str(row["seeds"])] + [fmt(row[k], k) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict], keys: Sequence[str]) -> str:
    """CSV with a mean and a std column per key."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["setting", "seeds"] + [f"{k}{s}" for k in keys for s in ("_mean", "_std")])
    for row in rows:
        writer.writerow([row["setting"], row["seeds"]] + [x for k in keys for x in row[k]])
    return out.getvalue()
