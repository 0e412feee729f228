"""The D2-Sparse report: accuracy vs data budget per density and arm, the gain over IMP,
training and inference FLOPs, and the mask-evolution plots.

Runs are classified into *arms* (d2sparse, its ablations and the baselines) by the tag the
grid writes into each child's ``report.d2grid`` config, or else from their method and
sparsity settings, so the same section works over a grid and over a plain sweep.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ...report import Record, collect, duplicate_lines, line_plot, mean_std, pool_seeds
from ...report.table import csv_text
from ...utils.atomic import write_text
from .report_plots import budget_series, evolution_curve, evolution_plots
from .report_points import (
    ARM_TITLES,
    ARMS,
    Point,
    arm_of,
    budget_label,
    budget_of,
    density_of,
    grid_tag,
    normalized,
    points,
    run_values,
)

__all__ = [
    "ARMS", "ARM_TITLES", "Point", "arm_of", "budget_label", "budget_of", "children",
    "d2sparse_section", "density_of", "evolution_curve", "normalized", "points",
    "report_d2sparse", "report_grid",
]

def _pct(values: list[float]) -> str:
    if not values:
        return "–"
    m, s = mean_std(values)
    text = f"{100 * m:.2f}"
    return (text if len(values) < 2 else f"{text} ± {100 * s:.2f}") + f" (n={len(values)})"


def _num(values: list[float], scale: float, digits: int = 3, spread: bool = True) -> str:
    if not values:
        return "–"
    m, s = mean_std([v / scale for v in values])
    text = f"{m:.{digits}g}"
    return text if len(values) < 2 or s == 0 or not spread else f"{text} ± {s:.2g}"


def _order(arms) -> list[str]:
    known = [a for a in ARMS if a in arms]
    return known + sorted(a for a in arms if a not in ARMS)


def _paired_gain(a: list[Point], b: list[Point]) -> list[float]:
    """Per-seed differences of test accuracy (only seeds both arms have)."""
    by_seed = {p.seed: p.summary["test_acc"] for p in b}
    return [p.summary["test_acc"] - by_seed[p.seed] for p in a if p.seed in by_seed]


def d2sparse_section(records: list[Record], out_dir: str | Path, title: str = "D2-Sparse") -> dict:
    """Markdown and plot files of the D2-Sparse comparison over ``records``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records, dups = pool_seeds(records)
    pts = points(records)
    if not pts:
        return {"markdown": f"## {title}\n\nNo finished runs.\n", "files": []}
    budgets = sorted({p.budget for p in pts}, reverse=True)
    densities = sorted({p.density for p in pts if p.arm != "dense"}, reverse=True) or [1.0]
    dense = [p for p in pts if p.arm == "dense"]
    equal = sorted({str(grid_tag(p.record).get("equal")) for p in pts if grid_tag(p.record)})
    seeds = sorted({p.seed for p in pts})
    heads = " | ".join(budget_label(b) for b in budgets)
    lines = [
        f"## {title}",
        "",
        f"Test accuracy (%) of the deployed network, mean ± sample std over seeds "
        f"({', '.join(map(str, seeds))}; n = seeds in the cell), by data budget (fraction of "
        f"the training set, class-balanced, nested across budgets).",
    ]
    if equal:
        lines.append(f"Across budgets the number of **{' / '.join(equal)}** is held equal.")
    lines.append("")
    files: list[str] = []
    for d in densities:
        here = [p for p in pts if p.density == d and p.arm != "dense"]
        by_arm: dict[str, list[Point]] = defaultdict(list)
        for p in here:
            by_arm[p.arm].append(p)
        if dense:
            by_arm["dense"] = dense
        lines += [f"### Density {d:g}", "", f"| arm | {heads} |", "|---|" + "---|" * len(budgets)]
        rows = []
        for arm in _order(by_arm):
            rows.append((ARM_TITLES.get(arm, arm), by_arm[arm], "test_acc"))
            if arm == "d2sparse" and run_values(by_arm[arm], "fast_test_acc"):
                rows.append((ARM_TITLES["d2sparse (F)"], by_arm[arm], "fast_test_acc"))
        for label, arm_pts, key in rows:
            cells = [_pct(run_values([p for p in arm_pts if p.budget == b], key)) for b in budgets]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
        notes = _arm_notes(by_arm)
        if notes:
            lines += [f"- {n}" for n in notes] + [""]
        d2 = by_arm.get("d2sparse", [])
        for ref in ("imp", "rigl"):
            if not d2 or ref not in by_arm:
                continue
            lines += [
                f"Gain of D2-Sparse (S) over {ARM_TITLES[ref]} (percentage points, "
                "paired by seed):",
                "",
                f"| | {heads} |",
                "|---|" + "---|" * len(budgets),
            ]
            cells = [
                _pct(
                    _paired_gain(
                        [p for p in d2 if p.budget == b], [p for p in by_arm[ref] if p.budget == b]
                    )
                )
                for b in budgets
            ]
            lines += ["| gain | " + " | ".join(cells) + " |", ""]
        lines += [
            "Cost: inference = nonzero FLOPs of one forward pass of the deployed network "
            "(per sample, millions); training = FLOPs of the whole run (3x forward per "
            "sample per trained network, billions), per budget.",
            "",
            f"| arm | networks trained | inference MFLOPs | {heads} |",
            "|---|---|---|" + "---|" * len(budgets),
        ]
        for arm in _order(by_arm):
            arm_pts = by_arm[arm]
            nets = run_values(arm_pts, "networks_trained")
            cells = [
                _num(run_values([p for p in arm_pts if p.budget == b], "train_flops"), 1e9)
                for b in budgets
            ]
            lines.append(
                f"| {ARM_TITLES.get(arm, arm)} | {int(nets[0]) if nets else 1} | "
                f"{_num(run_values(arm_pts, 'flops_nonzero'), 1e6, spread=False)} | "
                + " | ".join(cells)
                + " |"
            )
        lines.append("")
        series = {}
        for arm in _order(by_arm):
            xs, m, s = budget_series(by_arm[arm], "test_acc", budgets)
            if xs:
                series[ARM_TITLES.get(arm, arm)] = (xs, m, s)
        if series and len(budgets) > 1:
            files.append(
                str(
                    line_plot(
                        series,
                        out / f"d2sparse_acc_vs_budget_d{d:g}.png",
                        xlabel="data budget (fraction of training set)",
                        ylabel="test accuracy",
                        logx=True,
                        title=f"Accuracy vs data budget, density {d:g}",
                    )
                )
            )
        files += evolution_plots(here, d, out)
    write_text(out / "d2sparse_results.csv", _csv(pts))
    files.append(str(out / "d2sparse_results.csv"))
    lines += [
        "Mask evolution (`mask_evolution` events, logged at every mask update of either "
        "network): IoU of F's and S's masks and of each with its initial mask, fraction "
        "of weights ever active, survival of regrown weights, per-layer density; see "
        "the `d2sparse_*_d<density>.png` plots.",
        "",
    ] + duplicate_lines(dups)
    return {"markdown": "\n".join(lines), "files": files}


def _arm_notes(by_arm: dict[str, list[Point]]) -> list[str]:
    """One line per arm whose settings matter for reading the table (from the first run)."""
    notes = []
    for arm in ("d2sparse", "imp", "omp"):
        if arm not in by_arm:
            continue
        m = by_arm[arm][0].record.config.get("method") or {}
        s = by_arm[arm][0].summary
        if arm == "d2sparse":
            fast = s.get("fast_interval_steps", m.get("fast_interval"))
            slow = s.get("slow_interval_steps", m.get("slow_interval"))
            notes.append(
                f"D2-Sparse: variant {s.get('variant', '?')}, consistency {m.get('consistency')} "
                f"(λ_F {m.get('lambda_fast')}, λ_S {m.get('lambda_slow')}), F every {fast} "
                f"steps (α {m.get('fast_alpha')}), S every {slow} steps (α "
                f"{m.get('slow_alpha')}); S deployed."
            )
        else:
            rate = m.get("rate")
            notes.append(
                f"{ARM_TITLES[arm]}: {m.get('levels')} pruning level(s) of rate "
                f"{rate:.3g}, {m.get('criterion', 'magnitude')} ({m.get('scope', 'global')}), "
                f"rewind to {m.get('rewind', 'init')}; training cost includes the dense level."
                if isinstance(rate, int | float)
                else f"{ARM_TITLES[arm]}"
            )
    return notes


def _csv(pts: list[Point]) -> str:
    keys = [
        "test_acc",
        "fast_test_acc",
        "train_acc",
        "density",
        "flops_nonzero",
        "train_flops",
        "train_examples",
        "epochs_run",
        "steps",
    ]
    rows = [
        [p.arm, p.budget, p.density, p.seed, *(p.summary.get(k, "") for k in keys),
         str(p.record.path)]
        for p in sorted(pts, key=lambda p: (p.arm, -p.budget, -p.density, p.seed))
    ]
    return csv_text(["arm", "budget", "density_target", "seed", *keys, "path"], rows)


def report_d2sparse(records: list[Record], out_dir: Path, options: dict) -> dict:
    """Report hook of the ``d2sparse`` method (e.g. a sweep over budgets or variants)."""
    return d2sparse_section(records, out_dir)


def children(rec: Record) -> list[Record]:
    """The finished child runs of a grid run (each child's own sub-runs excluded)."""
    dirs = [
        p
        for p in sorted(Path(rec.path).iterdir())
        if p.is_dir() and p.name not in ("artifacts", "report")
    ]
    return collect(dirs) if dirs else []


def report_grid(records: list[Record], out_dir: Path, options: dict) -> dict:
    """Report hook of ``d2sparse-grid``: the comparison over every grid's child runs."""
    kids = [child for rec in records for child in children(rec)]
    return d2sparse_section(kids, out_dir, title="D2-Sparse vs baselines")
