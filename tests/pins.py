"""Small variants of every shipped research line and preset family, and how to read their
headline numbers. ``tests/test_regression_pins.py`` pins those numbers; run this module as a
script to print them again (``python tests/pins.py``)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

SYNTH = {"name": "synthetic", "image_size": 8, "channels": 1, "batch_size": 32,
         "options": {"num_classes": 4, "n_train": 320, "n_test": 128}}
TARGET = {"name": "synthetic", "image_size": 8, "channels": 1, "batch_size": 16,
          "options": {"num_classes": 3, "n_train": 90, "n_test": 60}}
TRAIN = {"epochs": 3, "device": "cpu", "progress": False}


def _train(**sparsity) -> dict:
    return {"name": "pin-train", "seed": 1, "data": {**SYNTH, "val_fraction": 0.2},
            "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
            "optim": {"name": "sgd", "lr": 0.05}, "train": {**TRAIN, "select": "best"},
            "sparsity": {"density": 0.3, "interval": 3, **sparsity},
            "method": {"name": "train", "eval_train": True}}


CASES: dict[str, dict] = {
    "train-dense": {**_train(), "sparsity": {}},
    "train-snip": _train(method="prune_at_init", criterion="snip", score_batches=2),
    "train-gradual": _train(method="gradual", end=0.6),
    "train-static": _train(method="static"),
    "train-set": _train(method="set", t_end=0.9),
    "train-rigl": _train(method="rigl", t_end=0.9),
    "lottery": {"name": "pin-lottery", "seed": 2, "data": SYNTH,
                "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
                "optim": {"name": "sgd", "lr": 0.05}, "train": TRAIN,
                "method": {"name": "lottery", "levels": 2, "rate": 0.5}},
    "anytime": {"name": "pin-anytime", "seed": 0, "data": {**SYNTH, "eval_batch_size": 64},
                "model": {"name": "lenet5"}, "optim": {"name": "sgd", "lr": 0.05},
                "train": {**TRAIN, "epochs": 2, "select": "best"},
                "method": {"name": "anytime", "strategy": "app", "megabatches": 3, "tau": 4.5,
                           "criterion": "snip", "score_fraction": 0.2},
                "sweep": {"method.strategy": ["dense", "osp", "app", "gmp"]}},
    "transfer": {"name": "pin-transfer", "seed": 0, "data": SYNTH,
                 "model": {"name": "convnet", "kwargs": {"widths": [8, 16]}},
                 "optim": {"name": "sgd", "lr": 0.1}, "train": {**TRAIN, "epochs": 3},
                 "method": {"name": "compress_transfer", "target": TARGET,
                            "sparsities": [0.5], "prune_methods": ["omp"],
                            "recovery": {"epochs": 1}, "quant": ["ptq-w8", "qat-w4a4"],
                            "qat": {"epochs": 1}, "calib_size": 32,
                            "methods": ["lp", "ft", "vp-ilm"], "budgets": ["3shot", "full"],
                            "seeds": [0], "lp": {"epochs": 8}, "ft": {"epochs": 3},
                            "vp": {"epochs": 2, "r": 6}}},
    "d2sparse": {"name": "pin-d2", "seed": 0, "data": SYNTH,
                 "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
                 "optim": {"name": "sgd", "lr": 0.05}, "train": {**TRAIN, "epochs": 4},
                 "sparsity": {"interval": 2, "t_end": 0.75},
                 "method": {"name": "d2sparse-grid", "budgets": [0.5], "densities": [0.2],
                            "seeds": [0], "arms": ["d2sparse", "rigl", "imp", "dense"],
                            "imp_levels": 2,
                            "d2sparse": {"fast_interval": 2, "slow_interval": 6,
                                         "interval_floor": False}}},
}

#: summary keys read from every run that has them
KEYS = ("test_acc", "test_loss", "train_acc", "val_acc", "density", "final_test_acc",
        "cer_count", "final_density_measured", "final_gap_train_test", "acc", "ece",
        "source_test_acc", "source_test_ece", "train_flops")


def numbers(root: Path) -> dict[str, float]:
    """``{'<run path below root>:<key>': value}`` for every finished run below ``root``."""
    out: dict[str, float] = {}
    for summary in sorted(Path(root).rglob("summary.json")):
        where = summary.parent.relative_to(root).as_posix()
        where = "/".join(part.rsplit("-", 1)[0] if i == 0 else part
                         for i, part in enumerate(where.split("/")))  # drop the config hash
        values = json.loads(summary.read_text())
        for key in KEYS:
            value = values.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"{where}:{key}"] = float(value)
        for level in values.get("levels") or []:
            for key in ("test_acc", "density"):
                out[f"{where}:level{level['level']}:{key}"] = float(level[key])
    return out


def run_case(name: str, out: Path) -> dict[str, float]:
    from underbudget.config import load_config
    from underbudget.experiment.launch import run_experiment

    run_experiment(load_config(json.loads(json.dumps(CASES[name]))), out / name, quiet=True)
    return numbers(out / name)


if __name__ == "__main__":  # print the pins
    import tempfile

    import torch

    torch.set_num_threads(1)
    names = sys.argv[1:] or list(CASES)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            got = run_case(name, Path(tmp))
            print(f"    {name!r}: {{")
            for key, value in got.items():
                print(f"        {key!r}: {value!r}," if math.isfinite(value) else "")
            print("    },")
