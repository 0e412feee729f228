"""Share of evaluation in each CPU preset's training stages: ``time_eval / stage_time``.

Runs each CPU preset (at its defaults, or with ``--epochs N`` as a quick check: fewer epochs
raise the share, since evaluation happens at the end of each stage) into a temporary folder
and sums, over every ``stage_end`` event of the run and of its children, the evaluation time
and the stage time. Prints one JSON object: per preset the two sums, the share and the
preset's wall time.

    python benchmarks/bench_eval_share.py [--presets app-demo,gmp-fashion] [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from underbudget.config import load_config
from underbudget.experiment.launch import run_experiment

CPU_PRESETS = ("tiny", "train-fashion", "gmp-fashion", "rigl-fashion", "snip-fashion",
               "lottery-fashion", "app-demo", "d2sparse-demo", "transfer-demo",
               "transfer-qat-demo")


def stage_times(path: Path) -> tuple[float, float, int]:
    """Sums of ``time_eval`` and ``stage_time`` over every stage_end event under ``path``."""
    ev = st = 0.0
    n = 0
    for metrics in path.rglob("metrics.jsonl"):
        before = 0.0  # a trainer's evaluation timer runs across its stages: take differences
        for line in metrics.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row.get("event") == "stage_end" and "stage_time" in row:
                total = float(row.get("time_eval") or 0.0)
                ev += total - before if total >= before else total
                before = total
                st += float(row["stage_time"])
                n += 1
    return ev, st, n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default=",".join(CPU_PRESETS))
    p.add_argument("--epochs", type=int, default=None, help="train.epochs override (quick)")
    args = p.parse_args()
    out: dict = {"epochs_override": args.epochs, "presets": {}}
    for name in args.presets.split(","):
        overrides = ["train.progress=false"]
        if args.epochs is not None:
            overrides.append(f"train.epochs={args.epochs}")
        cfg = load_config(name, overrides)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            path = run_experiment(cfg, tmp, quiet=True)
            wall = time.perf_counter() - t0
            ev, st, n = stage_times(path)
        out["presets"][name] = {"time_eval": round(ev, 2), "stage_time": round(st, 2),
                                "stages": n, "share": round(ev / st, 4) if st else None,
                                "wall_s": round(wall, 1)}
        print(json.dumps({name: out["presets"][name]}), flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
