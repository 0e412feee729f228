"""The compress_transfer section of ``report.md``: tables, plots, reliability diagrams.

For each (transfer method x data budget): test accuracy and ECE of every variant, with the
difference to the dense (uncompressed) source, mean ± sample std over seeds. A difference is
paired: per seed, variant minus dense on the same budget draw, head init and batch order.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from ...report import group_by_setting
from ...report.collect import Record
from ...report.table import csv_text
from ...utils.atomic import write_text
from .figures import level_plots, reliability_plots
from .results import (
    aggregate,
    budget_key,
    load_study,
    method_key,
    most_compressed,
    variant_order,
)


def _pct(values: tuple[float, float, int] | None, signed: bool = False) -> str:
    """``mean ± std`` in percent (the std shown whenever there are two values or more)."""
    if values is None or math.isnan(values[0]):
        return "–"
    mean, std = 100 * values[0], 100 * values[1]
    text = f"{mean:+.1f}" if signed else f"{mean:.1f}"
    return f"{text} ± {std:.1f}" if values[2] > 1 else text


def _level(v: dict) -> tuple[str, str]:
    """(sparsity, bits) cells of a variant."""
    kind = v.get("kind")
    sparsity = f"{v['sparsity']:.3f}" if kind == "prune" else ("0" if kind == "dense" else "–")
    bits = str(v.get("bits") or 32)
    if v.get("act_bits"):
        bits += f"/a{v['act_bits']}"
    return sparsity, bits


def _main_table(rows: dict, variants: dict, order: list[str]) -> str:
    head = (
        "| method | budget | variant | sparsity | bits | acc (%) | Δacc vs dense | ECE (%) "
        "| ΔECE vs dense | ECE after TS (%) | NLL | seeds |"
    )
    lines = [head, "|" + "---|" * 12]
    keys = sorted({(m, b) for m, b, _ in rows}, key=lambda k: (method_key(k[0]), budget_key(k[1])))
    for method, budget in keys:
        for name in order:
            row = rows.get((method, budget, name))
            if row is None:
                continue
            sparsity, bits = _level(variants.get(name, {}))
            nll = row["nll"]
            lines.append(
                f"| {method} | {budget} | {name} | {sparsity} | {bits} | {_pct(row['acc'])} | "
                f"{_pct(row.get('d_acc'), True)} | {_pct(row['ece'])} | "
                f"{_pct(row.get('d_ece'), True)} | {_pct(row['ece_ts'])} | "
                f"{nll[0]:.3f} | {row['seeds']} |"
            )
    return "\n".join(lines) + "\n"


def _variant_table(variants: dict, order: list[str]) -> str:
    lines = [
        "| variant | family | target sparsity | measured density | bits (w/a) | "
        "weight levels (max/channel) | source test acc (%) | Δ vs dense | source ECE (%) "
        "| time (s) |",
        "|" + "---|" * 10,
    ]
    dense = variants.get("dense", {}).get("source_test_acc")
    for name in order:
        v = variants[name]
        diff = (
            "–"
            if dense is None or name == "dense"
            else f"{100 * (v['source_test_acc'] - dense):+.1f}"
        )
        target = f"{v['target_sparsity']:g}" if v.get("target_sparsity") else "–"
        bits = f"{v.get('bits') or 32}/{v.get('act_bits') or 32}"
        lines.append(
            f"| {name} | {v['family']} | {target} | {v['density']:.4f} | {bits} | "
            f"{v.get('weight_levels_max', '–')} | {100 * v['source_test_acc']:.1f} | {diff} | "
            f"{100 * v['source_test_ece']:.1f} | {v.get('time', 0.0):.1f} |"
        )
    return "\n".join(lines) + "\n"


def _mapping_section(rows, variants, order) -> tuple[list[str], dict]:
    lines, dump = [], {}
    picks = ["dense"] + most_compressed(variants, order)
    for (method, budget, name), row in sorted(
        rows.items(), key=lambda kv: (method_key(kv[0][0]), budget_key(kv[0][1]))
    ):
        if not method.startswith("vp"):
            continue
        for run in row["runs"]:
            dump[f"{name}/{method}/{budget}/seed{run['seed']}"] = {
                "label_mapping": run.get("label_mapping"),
                "mapping_changes": run.get("mapping_changes"),
            }
        if name not in picks:
            continue
        first = min(row["runs"], key=lambda r: r["seed"])
        lm = first.get("label_mapping") or {}
        named = ", ".join(f"{t}→{s}" for t, s in (lm.get("named") or {}).items())
        changes = first.get("mapping_changes")
        lines.append(
            f"- {method} / {budget} / {name} (seed {first['seed']}): {named}; "
            f"classes remapped per update (first = initial map): {changes}"
        )
    return lines, dump


def _timing(studies: list[dict], rows: dict) -> list[str]:
    lines = ["| stage | mean time per run (s) | runs |", "|---|---|---|"]
    src = [s["source"].get("time") for s in studies if s["source"].get("time") is not None]
    if src:
        lines.append(f"| source training | {sum(src) / len(src):.1f} | {len(src)} |")
    var = [
        v.get("time", 0.0) for s in studies for v in s["variants"].values() if v["kind"] != "dense"
    ]
    if var:
        lines.append(f"| compression (per variant) | {sum(var) / len(var):.2f} | {len(var)} |")
    per: dict[tuple, list] = defaultdict(list)
    remap = []
    for s in (s for st in studies for s in st["transfers"]):
        per[(s["method"], s["budget"])].append(s["time"])
        if s.get("remap_fraction") is not None and s["method"].startswith("vp-ilm"):
            remap.append(s["remap_fraction"])
    for (method, budget), times in sorted(
        per.items(), key=lambda kv: (method_key(kv[0][0]), budget_key(kv[0][1]))
    ):
        lines.append(
            f"| transfer {method} / {budget} | {sum(times) / len(times):.2f} | {len(times)} |"
        )
    if remap:
        lines.append(
            f"\nILM remapping takes {100 * sum(remap) / len(remap):.1f} % of VP "
            f"training time on average ({len(remap)} runs)."
        )
    return lines


def _csv(rows: dict, variants: dict, order: list[str]) -> str:
    keys = [
        "acc",
        "d_acc",
        "ece",
        "d_ece",
        "ece_ts",
        "d_ece_ts",
        "nll",
        "d_nll",
        "adaptive_ece",
        "mce",
        "brier",
        "mean_conf",
        "time",
    ]
    header = ["method", "budget", "variant", "sparsity", "bits", "seeds"] + [
        f"{k}_{s}" for k in keys for s in ("mean", "std")]
    lines = []
    for (method, budget, name), row in sorted(
        rows.items(),
        key=lambda kv: (
            method_key(kv[0][0]),
            budget_key(kv[0][1]),
            order.index(kv[0][2]) if kv[0][2] in order else 99,
        ),
    ):
        sparsity, bits = _level(variants.get(name, {}))
        cells = []
        for k in keys:
            stats = row.get(k)
            cells += list(stats[:2]) if stats is not None else ["", ""]
        lines.append([method, budget, name, sparsity, bits, row["seeds"]] + cells)
    return csv_text(header, lines)


def _headline(records: list[Record]) -> list[str]:
    """One line per parent run: source, target, size of the grid, time per phase."""
    lines = []
    for rec in records:
        c, s = rec.config, rec.summary
        m = c.get("method", {})
        acc = s.get("source_test_acc")
        lines.append(
            f"- `{rec.path.name}`: source {c.get('data', {}).get('name')} / "
            f"{c.get('model', {}).get('name')}"
            + (f" (test acc {100 * acc:.1f} %)" if acc is not None else "")
            + f" → target {m.get('target', {}).get('name')}; {s.get('variants', '?')} variants, "
            f"{s.get('transfer_runs', '?')} transfer runs; time: source "
            f"{s.get('source_time', 0):.0f} s, compression {s.get('compression_time', 0):.0f} s, "
            f"transfer {s.get('transfer_time', 0):.0f} s"
        )
    return lines


def _section(
    studies: list[dict], out: Path, prefix: str, title: str, records: list[Record]
) -> tuple[str, list[str]]:
    variants = {}
    for study in studies:
        for name, v in study["variants"].items():
            variants.setdefault(name, v)
    order = variant_order(variants)
    rows = aggregate(studies)
    files = []
    text = [f"## {title}", "", *_headline(records), ""]
    if not rows:
        return "\n".join(text + ["No finished transfer runs.", ""]), files
    text += [
        "### Transfer accuracy and calibration vs compression",
        "",
        "Test accuracy and ECE (15 equal-width bins) on the target test set, mean ± sample "
        "std over seeds; Δ = variant minus dense, paired by seed; TS = temperature scaling "
        "fitted on the validation split.",
        "",
        _main_table(rows, variants, order),
    ]
    text += ["### Compressed variants (source task)", "", _variant_table(variants, order)]
    files += level_plots(rows, variants, order, out, prefix)
    rel_files, rel_lines = reliability_plots(rows, variants, order, out, prefix)
    files += rel_files
    if rel_lines:
        text += ["### Reliability diagrams (dense vs most compressed)", "", *rel_lines, ""]
    map_lines, dump = _mapping_section(rows, variants, order)
    if map_lines:
        path = out / f"{prefix}label_mapping.json"
        write_text(path, json.dumps(dump, indent=1))
        files.append(str(path))
        text += [
            "### Label mapping (target → source class)",
            "",
            *map_lines,
            "",
            f"Every VP run's map, count matrix and changes: `{path.name}`.",
            "",
        ]
    text += ["### Time", "", *_timing(studies, rows), ""]
    path = out / f"{prefix}transfer.csv"
    write_text(path, _csv(rows, variants, order))
    files.append(str(path))
    return "\n".join(text), files


def report(records: list[Record], out_dir: Path, options: dict) -> dict:
    """The method's report section over finished compress_transfer runs."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = group_by_setting(records) if len(records) > 1 else [("", records)]
    parts, files = [], []
    for i, (label, recs) in enumerate(groups):
        studies = [load_study(r.path) for r in recs]
        prefix = "ct_" if len(groups) == 1 else f"ct{i + 1}_"
        title = "Compression vs transfer" + (f" ({label})" if label else "")
        text, more = _section(studies, out, prefix, title, recs)
        parts.append(text)
        files += more
    return {"markdown": "\n".join(parts), "files": files}
