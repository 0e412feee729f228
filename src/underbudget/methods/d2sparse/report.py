"""The D2-Sparse report: accuracy vs data budget per density and arm, the gain over IMP,
training and inference FLOPs, and the mask-evolution plots.

Runs are classified into *arms* (d2sparse, its ablations and the baselines) by the tag the
grid writes into each child's ``report.d2grid`` config, or else from their method and
sparsity settings, so the same section works over a grid and over a plain sweep.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from ...report import Record, collect, duplicate_lines, line_plot, mean_std, pool_seeds
from ...utils.atomic import write_text

ARMS = (
    "d2sparse",
    "single",
    "uncoupled",
    "imp",
    "omp",
    "rigl",
    "set",
    "static",
    "snip",
    "grasp",
    "synflow",
    "dense",
)
ARM_TITLES = {
    "d2sparse": "D2-Sparse (S)",
    "d2sparse (F)": "D2-Sparse (F, not deployed)",
    "single": "ablation: S alone",
    "uncoupled": "ablation: no coupling",
    "imp": "IMP + rewinding",
    "omp": "one-shot magnitude",
    "rigl": "RigL",
    "set": "SET",
    "static": "static ERK",
    "snip": "SNIP",
    "grasp": "GraSP",
    "synflow": "SynFlow",
    "dense": "dense",
}


@dataclass
class Point:
    """One finished run, placed in the grid."""

    arm: str
    budget: float
    density: float  # 1.0 for dense
    seed: int
    record: Record

    @property
    def summary(self) -> dict:
        return normalized(self.record)


def _tag(rec: Record) -> dict:
    report = rec.config.get("report") or {}
    tag = report.get("d2grid") if isinstance(report, dict) else None
    return tag if isinstance(tag, dict) else {}


def arm_of(rec: Record) -> str:
    """The arm a run belongs to (its grid tag, else its method and settings)."""
    tag = _tag(rec)
    if "arm" in tag:
        return str(tag["arm"])
    method = rec.method
    cfg = rec.config.get("method") or {}
    if method == "d2sparse":
        if cfg.get("single"):
            return "single"
        if (
            not cfg.get("lambda_fast")
            and not cfg.get("lambda_slow")
            and cfg.get("slow_mode", "sgd") == "sgd"
        ):
            return "uncoupled"
        return "d2sparse"
    if method == "lottery":
        return "imp"
    if method == "train":
        s = rec.config.get("sparsity") or {}
        kind = s.get("method", "none")
        if kind == "none":
            return "dense"
        if kind == "prune_at_init":
            return {"magnitude": "omp"}.get(s.get("criterion"), s.get("criterion", kind))
        return kind
    return method


def density_of(rec: Record, arm: str) -> float:
    tag = _tag(rec)
    if "density" in tag:
        return float(tag["density"])
    if arm == "dense":
        return 1.0
    cfg = rec.config
    if rec.method == "d2sparse":
        return float((cfg.get("method") or {}).get("density", rec.summary.get("density", 1)))
    if rec.method == "train":
        return float((cfg.get("sparsity") or {}).get("density", 1.0))
    for key in ("density_target", "final_density", "density"):
        if isinstance(rec.summary.get(key), int | float):
            return float(rec.summary[key])
    return 1.0


def budget_of(rec: Record) -> float:
    tag = _tag(rec)
    if "budget" in tag:
        return float(tag["budget"])
    frac = (rec.config.get("data") or {}).get("fraction")
    return 1.0 if frac is None else float(frac)


#: the lottery method reports its last level under ``final_*`` (that level has the density)
_LOTTERY = {
    "test_acc": "final_test_acc",
    "flops_nonzero": "final_flops_nonzero",
    "density": "final_density",
    "density_all": "final_density_all",
}


def normalized(rec: Record) -> dict:
    """The run's summary with the keys the comparison reads (``test_acc``, ``flops_nonzero``,
    ``train_flops``, ...) whatever method produced it."""
    summary = dict(rec.summary)
    if rec.method == "lottery":
        for key, source in _LOTTERY.items():
            if source in summary:
                summary[key] = summary[source]
    return summary


def points(records: list[Record]) -> list[Point]:
    """Finished, successful runs as grid points."""
    out = []
    for rec in records:
        if rec.summary.get("status", "ok") != "ok" or "test_acc" not in normalized(rec):
            continue
        arm = arm_of(rec)
        out.append(
            Point(
                arm,
                budget_of(rec),
                round(density_of(rec, arm), 6),
                int(rec.config.get("seed", rec.summary.get("seed", 0))),
                rec,
            )
        )
    return out


def budget_label(b: float) -> str:
    frac = Fraction(b).limit_denominator(1024)
    return str(frac) if abs(float(frac) - b) < 1e-9 else f"{b:g}"


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


def _values(pts: list[Point], key: str) -> list[float]:
    return [
        float(p.summary[key])
        for p in pts
        if isinstance(p.summary.get(key), int | float) and not isinstance(p.summary.get(key), bool)
    ]


def _paired_gain(a: list[Point], b: list[Point]) -> list[float]:
    """Per-seed differences of test accuracy (only seeds both arms have)."""
    by_seed = {p.seed: p.summary["test_acc"] for p in b}
    return [p.summary["test_acc"] - by_seed[p.seed] for p in a if p.seed in by_seed]


def _series(pts: list[Point], key: str, budgets: list[float]):
    xs, means, stds = [], [], []
    for b in budgets:
        vals = _values([p for p in pts if p.budget == b], key)
        if vals:
            m, s = mean_std(vals)
            xs.append(b)
            means.append(m)
            stds.append(s)
    return xs, means, stds


def evolution_curve(records: list[Record], key: str):
    """(fraction of training, mean, std) of a ``mask_evolution`` field over seeds."""
    runs = []
    for rec in records:
        pts = {
            round(float(e["frac"]), 6): float(e[key])
            for e in rec.events("mask_evolution")
            if isinstance(e.get(key), int | float)
        }
        if pts:
            runs.append(pts)
    if not runs:
        return None
    xs = sorted(set.intersection(*(set(r) for r in runs)))
    if not xs:
        return None
    stats = [mean_std([r[x] for r in runs]) for x in xs]
    return xs, [m for m, _ in stats], [s for _, s in stats]


def _evolution_plots(pts: list[Point], density: float, out: Path) -> list[str]:
    d2 = [p for p in pts if p.arm == "d2sparse" and p.record.events("mask_evolution")]
    if not d2:
        return []
    tag = f"d{density:g}"
    budgets = sorted({p.budget for p in d2}, reverse=True)
    overlap, explore, survive, styles = {}, {}, {}, {}
    for b in budgets:
        recs = [p.record for p in d2 if p.budget == b]
        name = f"budget {budget_label(b)}"
        for key, label, target, style in (
            ("iou_fast_slow", "IoU(F, S)", overlap, "-"),
            ("slow_iou_initial", "IoU(S, S init)", overlap, "--"),
            ("fast_iou_initial", "IoU(F, F init)", overlap, ":"),
            ("slow_ever_active", "S ever active", explore, "-"),
            ("fast_ever_active", "F ever active", explore, "--"),
            ("slow_regrown_alive", "S regrown alive", survive, "-"),
            ("fast_regrown_alive", "F regrown alive", survive, "--"),
            ("slow_survival", "S survival of last growth", survive, "-."),
            ("fast_survival", "F survival of last growth", survive, ":"),
        ):
            curve = evolution_curve(recs, key)
            if curve is not None:
                target[f"{label}, {name}"] = curve
                styles[f"{label}, {name}"] = {"linestyle": style}
    files = []
    for series, fname, ylabel, title in (
        (overlap, "overlap", "IoU", "Mask overlap (F vs S, and with the initial masks)"),
        (
            explore,
            "ever_active",
            "fraction of weights ever active",
            "Exploration (in-time over-parameterisation)",
        ),
        (survive, "regrown_survival", "fraction alive", "Survival of regrown weights"),
    ):
        if series:
            files.append(
                str(
                    line_plot(
                        series,
                        out / f"d2sparse_{fname}_{tag}.png",
                        xlabel="fraction of training",
                        ylabel=ylabel,
                        title=f"{title}, density {density:g}",
                        styles=styles,
                    )
                )
            )
    smallest = [p.record for p in d2 if p.budget == budgets[-1]]
    layers: dict[str, Any] = {}
    lstyles = {}
    for which, style in (("slow", "-"), ("fast", "--")):
        events = smallest[0].events("mask_evolution")
        names = list((events[0].get(f"{which}_layer_density") or {}) if events else [])
        for layer in names:
            xs = [float(e["frac"]) for e in events]
            ys = [float(e[f"{which}_layer_density"][layer]) for e in events]
            key = f"{'S' if which == 'slow' else 'F'} {layer}"
            layers[key] = (xs, ys, None)
            lstyles[key] = {"linestyle": style}
    if layers:
        files.append(
            str(
                line_plot(
                    layers,
                    out / f"d2sparse_layer_density_{tag}.png",
                    xlabel="fraction of training",
                    ylabel="layer density",
                    title=f"Per-layer density (measured), budget "
                    f"{budget_label(budgets[-1])}, density {density:g}",
                    styles=lstyles,
                )
            )
        )
    return files


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
    equal = sorted({str(_tag(p.record).get("equal")) for p in pts if _tag(p.record)})
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
            if arm == "d2sparse" and _values(by_arm[arm], "fast_test_acc"):
                rows.append((ARM_TITLES["d2sparse (F)"], by_arm[arm], "fast_test_acc"))
        for label, arm_pts, key in rows:
            cells = [_pct(_values([p for p in arm_pts if p.budget == b], key)) for b in budgets]
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
            nets = _values(arm_pts, "networks_trained")
            cells = [
                _num(_values([p for p in arm_pts if p.budget == b], "train_flops"), 1e9)
                for b in budgets
            ]
            lines.append(
                f"| {ARM_TITLES.get(arm, arm)} | {int(nets[0]) if nets else 1} | "
                f"{_num(_values(arm_pts, 'flops_nonzero'), 1e6, spread=False)} | "
                + " | ".join(cells)
                + " |"
            )
        lines.append("")
        series = {}
        for arm in _order(by_arm):
            xs, m, s = _series(by_arm[arm], "test_acc", budgets)
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
        files += _evolution_plots(here, d, out)
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
    buf = io.StringIO()
    writer = csv.writer(buf)
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
    writer.writerow(["arm", "budget", "density_target", "seed", *keys, "path"])
    for p in sorted(pts, key=lambda p: (p.arm, -p.budget, -p.density, p.seed)):
        row = [p.summary.get(k, "") for k in keys]
        row = ["" if isinstance(v, float) and math.isnan(v) else v for v in row]
        writer.writerow([p.arm, p.budget, p.density, p.seed, *row, str(p.record.path)])
    return buf.getvalue()


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
