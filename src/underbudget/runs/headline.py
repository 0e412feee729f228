"""A run's headline numbers as a small text table (printed by ``run`` and ``show``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

#: column -> summary keys that hold it, first found wins (methods name them differently)
COLUMNS: dict[str, tuple[str, ...]] = {
    "accuracy": ("test_acc", "final_test_acc", "source_test_acc", "acc"),  # acc: a transfer
    "density": ("density", "final_density_measured", "final_density"),
    "CER": ("cer_rate",),
    "ECE": ("test_ece", "ece", "source_test_ece"),
    "wall time": ("wall_time", "time"),
}
OPTIONAL = ("CER", "ECE")  # shown only when some run has them


def headline(summary: dict) -> dict[str, Any]:
    """The headline values of one run's summary (None where it has none)."""
    out: dict[str, Any] = {}
    for column, keys in COLUMNS.items():
        out[column] = next((summary[k] for k in keys if _number(summary.get(k))), None)
    out["status"] = summary.get("status", "ok")
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


def _format(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column == "wall time":
        return f"{value:.1f} s" if value < 600 else f"{value / 60:.1f} min"
    if column == "CER":  # a sum of per-stage error rates, up to the number of stages
        return f"{value:.3f}"
    if column in ("accuracy", "density", "ECE"):
        return f"{100 * value:.2f} %"
    return str(value)


def headline_table(runs: Sequence[tuple[str, dict]]) -> str:
    """Rows ``(label, summary)`` as an aligned table: accuracy, density, CER and ECE where
    some run has them, wall time, and the status when a run did not end normally."""
    rows = [(label, headline(summary)) for label, summary in runs]
    if not rows:
        return ""
    columns = [c for c in COLUMNS if c not in OPTIONAL or any(r[c] is not None for _, r in rows)]
    if any(r["status"] != "ok" for _, r in rows):
        columns.append("status")
    table = [["run", *columns]]
    table += [[label, *(_format(c, r[c]) for c in columns)] for label, r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
             for row in table]
    return "\n".join(lines)
