"""End-to-end time of the app-demo preset and where it goes (training, pruning, evaluation).

Prints one JSON object: total wall time of the three-strategy sweep, and per strategy the
seconds spent training, scoring/pruning and evaluating, with pruning and evaluation given as
fractions of training time (measured in the same run).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from underbudget.config import load_config
from underbudget.experiment.launch import run_experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of app-demo")
    args = parser.parse_args()
    cfg = load_config("app-demo", ["train.progress=false", *args.overrides])
    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        path = run_experiment(cfg, root, quiet=True)
        total = time.perf_counter() - t0
        out = {"benchmark": "anytime_app_demo", "total_s": round(total, 2), "strategies": {}}
        for child in sorted(p for p in path.iterdir() if p.name.startswith("strategy-")):
            s = json.loads((child / "summary.json").read_text())
            train, prune, ev = s["time_train"], s["time_prune"], s["time_eval"]
            out["strategies"][s["strategy"]] = {
                "wall_s": round(s["wall_time"], 2),
                "train_s": round(train, 2),
                "prune_s": round(prune, 3),
                "eval_s": round(ev, 2),
                "prune_over_train": round(prune / train, 4),
                "eval_over_train": round(ev / train, 4),
                "other_s": round(s["wall_time"] - train - prune - ev, 2),
                "final_test_acc": s["final_test_acc"],
                "cer_count": s["cer_count"],
            }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
