"""The lottery method's report: accuracy vs density per IMP level (mean ± sample std over
seeds) as a table, a CSV and a plot on a log density axis."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ..report import group_by_setting, markdown, mean_std, numeric_keys, summarize
from ..report.plots import save_png
from ..report.table import csv_text, fmt
from ..utils.atomic import write_text


def lottery_report(records: list, out_dir: Path, options: dict) -> dict:
    """Accuracy vs density per level (mean ± sample std over seeds): a table, a CSV and a
    plot with a log density axis, one line per setting."""
    recs = [r for r in records if isinstance(r.summary.get("levels"), list)]
    single = [r for r in records if r not in recs]  # level runs reported on their own
    lines = []
    if single:
        keys = numeric_keys(single, options.get("keys"))
        lines += [
            "## Lottery levels",
            "",
            markdown(summarize(group_by_setting(single), keys), keys),
        ]
    if not recs:
        return {"markdown": "\n".join(lines), "files": []}
    out_dir = Path(out_dir)
    cols = [
        ("target_density", "target density"),
        ("density", "density"),
        ("density_all", "density (all params)"),
        ("nonzeros", "nonzeros"),
        ("flops_nonzero", "nonzero FLOPs"),
        ("train_flops", "training FLOPs"),
        ("test_acc", "test acc"),
    ]
    if all(all("val_acc" in row for row in r.summary["levels"]) for r in recs):
        cols.append(("val_acc", "val acc"))
    groups = group_by_setting(recs)
    keys = [
        "dense_test_acc",
        "best_level",
        "best_density",
        "best_test_acc",
        "final_density",
        "final_test_acc",
        "train_flops",
    ]
    lines += [
        "## Lottery tickets: accuracy vs density",
        "",
        "Iterative magnitude pruning with rewinding; density is measured from the trained "
        "weights and masks of each level (fraction of prunable weights kept). "
        "Mean ± sample std over seeds.",
        "",
        "| setting | seeds | " + " | ".join(keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for row in summarize(groups, keys):
        lines.append(
            f"| {row['setting']} | {row['seeds']} | "
            + " | ".join(_fmt(row[key], key) for key in keys)
            + " |"
        )
    lines.append("")
    csv_rows = []
    series = {}
    for label, grecs in groups:
        per_level: dict[int, list[dict]] = defaultdict(list)
        for rec in grecs:
            for row in rec.summary["levels"]:
                per_level[int(row["level"])].append(row)
        lines += [
            f"### {label}",
            "",
            "| level | seeds | " + " | ".join(name for _, name in cols) + " |",
            "|---|---|" + "---|" * len(cols),
        ]
        xs, ys, errs = [], [], []
        for level in sorted(per_level):
            rows = per_level[level]
            stats = {
                key: mean_std([r[key] for r in rows if isinstance(r.get(key), int | float)])
                for key, _ in cols
            }
            lines.append(
                f"| {level} | {len(rows)} | "
                + " | ".join(_fmt(stats[key], key) for key, _ in cols)
                + " |"
            )
            csv_rows.append([label, level, len(rows)] + [x for key, _ in cols for x in stats[key]])
            xs.append(stats["density"][0])
            ys.append(stats["test_acc"][0])
            errs.append(stats["test_acc"][1])
        lines.append("")
        series[label] = (xs, ys, errs)
    header = ["setting", "level", "seeds"] + [
        f"{key}{s}" for key, _ in cols for s in ("_mean", "_std")]
    write_text(out_dir / "lottery_levels.csv", csv_text(header, csv_rows))
    plot = plot_levels(series, out_dir / "lottery_test_acc_vs_density.png")
    return {
        "markdown": "\n".join(lines) + "\n",
        "files": [str(out_dir / "lottery_levels.csv"), str(plot)],
    }


def _fmt(stat: tuple[float, float], key: str) -> str:
    """Counts as integers, FLOPs in scientific notation, the rest like the report tables."""
    mean, std = stat
    if key in ("nonzeros", "best_level") and std == 0 and mean == int(mean):
        return str(int(mean))
    if "flops" in key and mean == mean:
        return f"{mean:.3g}" if std == 0 else f"{mean:.3g} ± {std:.2g}"
    return fmt(stat)


def plot_levels(series: dict, path: Path) -> Path:
    """Test accuracy vs density on a log axis running from dense (left) to sparse (right),
    ticked at the levels' densities; ``series`` maps a label to (densities, means, stds)."""
    import math

    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ticks: list[float] = []
    for label, (xs, ys, errs) in series.items():
        (line,) = ax.plot(xs, ys, marker="o", markersize=4, label=label)
        if any(e and not math.isnan(e) for e in errs):
            ax.fill_between(
                xs,
                [y - e for y, e in zip(ys, errs)],
                [y + e for y, e in zip(ys, errs)],
                alpha=0.2,
                color=line.get_color(),
            )
        ticks = sorted(set(ticks) | {x for x in xs if x > 0}, reverse=True)
    ax.set_xscale("log")
    ax.invert_xaxis()
    step = max(1, math.ceil(len(ticks) / 10))
    shown = ticks[::step]
    ax.xaxis.set_major_locator(FixedLocator(shown))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{100 * t:.3g}%" for t in shown])
    ax.set_xlabel("density: prunable weights kept (log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Lottery tickets: test accuracy vs density")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)
