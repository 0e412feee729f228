"""Reports of their own, by method: a method registers a function that writes its sections.

The function is called as ``fn(records, out_dir, options) -> {"markdown": str, "files": [...]}``
with the method's finished runs; :func:`~underbudget.report.write_report` looks it up here,
so the report layer never imports the methods.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

#: ``fn(records, out_dir, options) -> {"markdown": ..., "files": [...]}``
MethodReport = Callable[[list[Any], Path, dict], dict]

_REPORTS: dict[str, MethodReport] = {}


def register_report(method: str, fn: MethodReport) -> None:
    """Make ``fn`` write the report sections of ``method``'s runs."""
    _REPORTS[method] = fn


def report_for(method: str) -> MethodReport | None:
    """The report function registered for ``method`` (None: the plain summary table)."""
    return _REPORTS.get(method)
