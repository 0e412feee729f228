"""Tables of run summaries: mean ± std over seeds, as markdown and CSV.

Every cell says over how many seeds it is taken (``n``): a run may lack a key that the
others of its row have. A seed counts once per setting (see ``collect.pool_seeds``).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from typing import Any

from .collect import Record, pool_seeds

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
    """One row per group: label, number of distinct seeds, mean and std of each key, and in
    ``row["n"][key]`` the number of seeds behind that mean."""
    rows = []
    for label, recs in groups:
        recs, _ = pool_seeds(recs)
        row: dict = {"setting": label, "seeds": len({r.seed for r in recs}), "n": {}}
        for key in keys:
            vals = [r.summary[key] for r in recs if _num(r.summary.get(key))]
            row[key] = mean_std(vals) if vals else (math.nan, math.nan)
            row["n"][key] = len(vals)
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


def cell(row: dict, key: str) -> str:
    """A table cell: 'mean ± std (n=seeds)'."""
    n = row.get("n", {}).get(key)
    text = fmt(row[key], key)
    return text if n is None or text == "–" else f"{text} (n={n})"


def markdown(rows: list[dict], keys: Sequence[str]) -> str:
    """A markdown table of :func:`summarize` rows (``seeds``: distinct seeds of the row)."""
    head = ["setting", "seeds", *keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [str(row["setting"]), str(row["seeds"])] + [cell(row, k) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict], keys: Sequence[str]) -> str:
    """CSV with a mean, a std and a seed-count (``_n``) column per key."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["setting", "seeds"]
                    + [f"{k}{s}" for k in keys for s in ("_mean", "_std", "_n")])
    for row in rows:
        counts = row.get("n", {})
        writer.writerow([row["setting"], row["seeds"]]
                        + [x for k in keys for x in (*row[k], counts.get(k, ""))])
    return out.getvalue()


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """CSV text of ``header`` and ``rows``; a NaN cell is written empty."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in row])
    return out.getvalue()
