"""Reports over runs: aggregation over seeds, markdown/CSV tables and PNG plots."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ..utils.atomic import write_text
from .collect import (
    Duplicate,
    Record,
    collect,
    duplicate_lines,
    flatten,
    group_by_setting,
    pool_seeds,
)
from .plots import line_plot
from .registry import register_report, report_for
from .table import cell, markdown, mean_std, numeric_keys, summarize, to_csv

__all__ = ["Duplicate", "Record", "cell", "collect", "duplicate_lines", "flatten",
           "group_by_setting", "line_plot", "markdown", "mean_std", "numeric_keys",
           "pool_seeds", "register_report", "report_for", "summarize", "to_csv", "write_report",
           "epoch_curves", "mask_plots"]


def epoch_curves(groups, key: str = "test_acc") -> dict:
    """Per group, ``key`` of 'epoch' events vs epoch number (mean, std over seeds)."""
    series = {}
    for label, recs in groups:
        per_seed = []
        for rec in recs:
            ys = [e[key] for e in rec.events("epoch") if key in e]
            if ys:
                per_seed.append(ys)
        if not per_seed:
            continue
        n = min(len(s) for s in per_seed)
        stats = [mean_std([s[i] for s in per_seed]) for i in range(n)]
        series[label] = (list(range(1, n + 1)), [m for m, _ in stats], [s for _, s in stats])
    return series


def mask_plots(groups, out: Path) -> list[str]:
    """Density and, for SET/RigL, mask evolution vs step from ``mask_update`` events."""
    written = []
    for key, ylabel, name in (("density", "density (prunable weights)", "density_vs_step"),
                              ("ever_active", "fraction of weights ever active",
                               "ever_active_vs_step"),
                              ("iou_initial", "IoU with the initial mask", "iou_initial_vs_step"),
                              ("iou_previous", "IoU with the previous mask",
                               "iou_previous_vs_step")):
        series = {}
        for label, recs in groups:
            events = [e for e in recs[0].events("mask_update") if key in e]
            sources = sorted({str(e.get("source", "")) for e in events})
            for source in sources:  # one line per mask owner (e.g. D2-Sparse's F and S)
                mine = [e for e in events if str(e.get("source", "")) == source]
                name_ = label if len(sources) == 1 else f"{label} [{source}]"
                series[name_] = ([e["step"] for e in mine], [e[key] for e in mine], None)
        if series:
            written.append(str(line_plot(series, out / f"{name}.png", xlabel="optimizer step",
                                         ylabel=ylabel, title="Mask evolution (first seed)")))
    return written


def write_report(paths: list[str | Path], out_dir: str | Path, options: dict | None = None,
                 keys: list[str] | None = None) -> dict:
    """Write ``report.md``, ``summary.csv`` and plots for the finished runs under ``paths``.

    Runs that differ only by seed are aggregated (mean ± sample std); a seed that finished
    twice for one setting counts once (the run that finished last; the others are listed
    under "Duplicate runs"). Each method that has a report of its own adds its sections (e.g.
    the anytime comparison).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records, dups = pool_seeds(collect(paths))
    if not records:
        write_text(out / "report.md", "# Report\n\nNo finished runs found.\n")
        return {"runs": 0, "files": [str(out / "report.md")]}
    by_method: dict[str, list[Record]] = defaultdict(list)
    for rec in records:
        by_method[rec.method].append(rec)
    files: list[str] = []
    counted = f"{len(records)} run(s)" + (
        f" ({sum(len(d.dropped) for d in dups)} duplicate(s) of a seed not counted)" if dups
        else "")
    text = ["# Report", "", f"{counted}; mean ± sample std over seeds (n: seeds per cell).", ""]
    plain: list[Record] = []
    for method, recs in by_method.items():
        report = report_for(method)  # None also for a method this version no longer has
        if report is None:
            plain += recs
            continue
        section = report(recs, out, options or {})
        text += [section.get("markdown", ""), ""]
        files += section.get("files", [])
    groups = group_by_setting(plain) if plain else []
    if plain:
        keys = numeric_keys(plain, keys or (options or {}).get("keys"))
        rows = summarize(groups, keys)
        text += ["## Summary", "", markdown(rows, keys)]
        write_text(out / "summary.csv", to_csv(rows, keys))
        files.insert(0, str(out / "summary.csv"))
    failed = [r for r in records if r.summary.get("status", "ok") != "ok"]
    if failed:
        text += ["## Runs that did not finish normally", ""]
        text += [f"- `{r.path}`: {r.summary.get('status')}: {r.summary.get('message', '')}"
                 for r in failed]
        text.append("")
    text += duplicate_lines(dups)
    files += mask_plots(groups, out)
    curves = epoch_curves(groups)
    if curves and not any("test_acc_vs" in f for f in files):
        files.append(str(line_plot(curves, out / "test_acc_vs_epoch.png", xlabel="epoch",
                                   ylabel="test accuracy", title="Test accuracy")))
    if files:
        text += ["## Files", ""] + [f"- {Path(f).name}" for f in files]
    write_text(out / "report.md", "\n".join(text) + "\n")
    files.insert(0, str(out / "report.md"))
    return {"runs": len(records), "files": files}
