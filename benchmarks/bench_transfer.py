"""Where the time of a ``transfer-demo`` run goes: source training, compression, each transfer.

Runs the ``transfer-demo`` preset (one transfer seed by default; ``--full`` runs the preset as
shipped) in a temporary directory and reads the times every child run records. Speeds are
given as ratios to the source training measured in the same run, plus ILM's remapping time
as a fraction of VP training time. Prints one JSON object.

    python benchmarks/bench_transfer.py [--full] [--threads N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from underbudget.config import load_config
from underbudget.experiment.launch import run_experiment
from underbudget.methods.compress_transfer.results import load_study


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def summarize(path: Path) -> dict:
    """Per-phase times of a finished compress_transfer run directory."""
    study = load_study(path)
    source = study["source"]["time"]
    variants = {n: v["time"] for n, v in study["variants"].items() if v["kind"] != "dense"}
    per_method: dict[str, list[dict]] = defaultdict(list)
    for s in study["transfers"]:
        per_method[f"{s['method']}/{s['budget']}"].append(s)
    transfer = {}
    for key, runs in sorted(per_method.items()):
        t = _mean([r["time"] for r in runs])
        transfer[key] = {
            "runs": len(runs),
            "seconds_per_run": round(t, 3),
            "train_seconds_per_run": round(_mean([r["train_time"] for r in runs]), 3),
            "ratio_to_source_training": round(t / source, 4),
        }
    ilm = [s for s in study["transfers"] if s["method"].startswith("vp-ilm")]
    remap = {}
    for budget in sorted({s["budget"] for s in ilm}):
        runs = [s for s in ilm if s["budget"] == budget]
        remap[budget] = {
            "remap_fraction_of_vp_training": round(_mean([s["remap_fraction"] for s in runs]), 4),
            "remap_seconds_per_epoch": round(
                _mean([s["remap_time"] / s["epochs"] for s in runs]), 4
            ),
            "runs": len(runs),
        }
    return {
        "source_training_seconds": round(source, 3),
        "compression_seconds_per_variant": {n: round(t, 3) for n, t in variants.items()},
        "compression_ratio_to_source_training": round(_mean(list(variants.values())) / source, 4),
        "transfer": transfer,
        "ilm_remap": remap,
        "transfer_runs": len(study["transfers"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the preset's seeds (default: 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=None, help="keep the runs here (default: temp dir)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = ["train.progress=false"] + ([] if args.full else ["method.seeds=[0]"])
    cfg = load_config("transfer-demo", overrides)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        t0 = time.perf_counter()
        path = run_experiment(cfg, root, quiet=True)
        wall = time.perf_counter() - t0
        result = summarize(Path(path))
    result.update(
        {
            "benchmark": "transfer",
            "preset": "transfer-demo",
            "overrides": overrides,
            "wall_seconds": round(wall, 2),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "platform": platform.platform(),
        }
    )
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
