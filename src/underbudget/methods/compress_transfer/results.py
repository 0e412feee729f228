"""Finished compress_transfer runs as numbers: per-run summaries, grouped and paired.

A difference to the dense source is paired: per seed, variant minus dense on the same budget
draw, head initialisation and batch order; its mean and sample std are over seeds.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from ...report import mean_std

METHOD_ORDER = {"lp": 0, "ft": 1, "vp": 2}


def read_summary(path: Path) -> dict | None:
    file = path / "summary.json"
    if not file.exists():
        return None
    return json.loads(file.read_text(encoding="utf-8"))


def load_study(path: Path) -> dict:
    """Source, variant and transfer summaries of one finished compress_transfer run."""
    variants = {}
    for child in sorted((path / "variants").glob("*")):
        s = read_summary(child)
        if s is not None:
            variants[s["variant"]] = s
    transfers = [
        s
        for f in sorted((path / "transfer").glob("*/*/summary.json"))
        if (s := read_summary(f.parent)) is not None
    ]
    return {
        "source": read_summary(path / "source") or {},
        "variants": variants,
        "transfers": transfers,
    }


def variant_order(variants: dict) -> list[str]:
    """Dense first, then pruning families by sparsity, then quantization by falling bits."""

    def key(name: str):
        v = variants[name]
        if v["kind"] == "dense":
            return (0, "", 0.0)
        if v["kind"] == "prune":
            return (1, v["family"], v.get("target_sparsity") or 0.0)
        return (2, v["family"], -(v.get("bits") or 32), v.get("act_bits") or 0)

    return sorted(variants, key=key)


def method_key(label: str):
    return (METHOD_ORDER.get(label.split("-")[0], 9), label)


def budget_key(label: str):
    if label.endswith("shot"):
        return (0, int(label[:-4]))
    if label.startswith("frac"):
        return (1, float(label[4:]))
    return (2, 0)


def stats(values: list[float]) -> tuple[float, float, int] | None:
    """Mean, sample std and count of the values that are not None."""
    values = [v for v in values if v is not None]
    return (*mean_std(values), len(values)) if values else None


def pool_reliability(summaries: list[dict], key: str = "reliability") -> list[dict]:
    """Bin rows pooled over runs: counts add up, means are count-weighted."""
    pooled: dict[int, dict] = {}
    for s in summaries:
        for i, row in enumerate(s.get(key) or []):
            p = pooled.setdefault(
                i, {"lo": row["lo"], "hi": row["hi"], "count": 0, "conf_sum": 0.0, "acc_sum": 0.0}
            )
            n = row["count"]
            p["count"] += n
            if n:
                p["conf_sum"] += row["confidence"] * n
                p["acc_sum"] += row["accuracy"] * n
    rows = []
    for i in sorted(pooled):
        p = pooled[i]
        n = p["count"]
        rows.append(
            {
                "lo": p["lo"],
                "hi": p["hi"],
                "count": n,
                "confidence": p["conf_sum"] / n if n else None,
                "accuracy": p["acc_sum"] / n if n else None,
            }
        )
    return rows


def ece_of(rows: list[dict]) -> float:
    n = sum(r["count"] for r in rows)
    return sum(r["count"] * abs(r["accuracy"] - r["confidence"]) for r in rows if r["count"]) / n


def aggregate(studies: list[dict]) -> dict:
    """Rows of the main table keyed by (method, budget, variant), with paired differences."""
    runs: dict[tuple, dict] = defaultdict(dict)
    for i, study in enumerate(studies):
        for s in study["transfers"]:
            runs[(s["method"], s["budget"], s["variant"])][(i, s["seed"])] = s
    rows = {}
    for (method, budget, variant), by_seed in runs.items():
        dense = runs.get((method, budget, "dense"), {})
        row = {
            "method": method,
            "budget": budget,
            "variant": variant,
            "seeds": len(by_seed),
            "runs": list(by_seed.values()),
        }
        for key in (
            "acc",
            "ece",
            "ece_ts",
            "nll",
            "adaptive_ece",
            "mce",
            "brier",
            "time",
            "train_time",
            "mean_conf",
        ):
            row[key] = stats([s.get(key) for s in by_seed.values()])
            if variant != "dense" and key in ("acc", "ece", "ece_ts", "nll"):
                diffs = [
                    s[key] - dense[k][key]
                    for k, s in by_seed.items()
                    if k in dense and s.get(key) is not None
                ]
                row[f"d_{key}"] = stats(diffs)
        rows[(method, budget, variant)] = row
    return rows


def most_compressed(variants: dict, order: list[str]) -> list[str]:
    pruned = [n for n in order if variants[n]["kind"] == "prune"]
    quant = [n for n in order if variants[n]["kind"] == "quant"]
    picks = []
    if pruned:
        picks.append(max(pruned, key=lambda n: variants[n]["sparsity"]))
    if quant:
        picks.append(min(quant, key=lambda n: (variants[n]["bits"], variants[n]["act_bits"] or 32)))
    return picks
