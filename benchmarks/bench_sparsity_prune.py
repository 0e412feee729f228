"""Global magnitude pruning of a ResNet-50-sized model (25.5 M prunable weights) on CPU.

Prints one JSON object: time to score, select and apply masks at density 0.1 (median of
``--repeats``, weights restored between repeats, outside the timing), peak extra resident
memory during one pruning call, and the same for ``torch.nn.utils.prune.global_unstructured``
(L1) as a baseline measured in the same run (``ours_over_torch`` < 1 means faster).

Usage: python benchmarks/bench_sparsity_prune.py [--repeats 3] [--density 0.1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.nn.utils import prune as torch_prune

from underbudget import sparsity
from underbudget.models import create_model


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    return -1


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_extra_mib(fn) -> float | None:
    """Peak resident memory above the starting point while ``fn`` runs (Linux only)."""
    if not _reset_peak():
        return None
    before = _rss_kib("VmRSS:")
    fn()
    return round((_rss_kib("VmHWM:") - before) / 1024, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--density", type=float, default=0.1)
    args = parser.parse_args()

    model = create_model("resnet50", num_classes=1000, image_size=224, stem="imagenet", seed=0)
    weights = {n: p.detach().clone() for n, p in sparsity.prunable_parameters(model).items()}
    n_prunable = sum(w.numel() for w in weights.values())

    def restore():
        with torch.no_grad():
            for n, w in weights.items():
                model.get_parameter(n).copy_(w)

    def ours():
        return sparsity.prune(model, args.density, "magnitude", "global")

    ours_mem = peak_extra_mib(ours)  # first, before earlier calls leave freed heap behind
    times = []
    for _ in range(args.repeats):
        restore()
        start = time.perf_counter()
        masks = ours()
        times.append(time.perf_counter() - start)
    kept = masks.nonzeros()

    params = [(model.get_submodule(n.rpartition(".")[0]), "weight") for n in weights]

    def torch_global():
        torch_prune.global_unstructured(params, torch_prune.L1Unstructured, amount=1 - args.density)

    restore()
    torch_mem = peak_extra_mib(torch_global)
    for module, name in params:
        torch_prune.remove(module, name)
    restore()
    start = time.perf_counter()
    torch_global()
    torch_time = time.perf_counter() - start
    same = all(
        torch.equal(masks[n], model.get_submodule(n.rpartition(".")[0]).weight_mask.bool())
        for n in weights
    )

    print(
        json.dumps(
            {
                "benchmark": "sparsity_global_magnitude_prune",
                "model": "resnet50 (imagenet stem, 1000 classes)",
                "device": "cpu",
                "threads": torch.get_num_threads(),
                "prunable_weights": n_prunable,
                "density": args.density,
                "kept": kept,
                "repeats": args.repeats,
                "prune_s": round(statistics.median(times), 4),
                "prune_s_all": [round(t, 4) for t in times],
                "peak_extra_mib": ours_mem,
                "prunable_weights_mib": round(n_prunable * 4 / 2**20, 1),
                "torch_global_unstructured_s": round(torch_time, 4),
                "torch_peak_extra_mib": torch_mem,
                "ours_over_torch": round(statistics.median(times) / torch_time, 4),
                "masks_equal_torch": same,
            }
        )
    )


if __name__ == "__main__":
    main()
