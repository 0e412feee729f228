"""Inference of pruned networks: dense kernels versus the sparse deploy form.

For MLP and LeNet-5 (1x28x28) and ResNet-20 (3x32x32), each pruned by magnitude (``--scope``,
global by default, on the seeded initial weights) to every density in ``--densities``, and
each batch size in ``--batches``, these forms of the same weights are timed, interleaved
round by round (median over rounds, so machine load affects them alike):

- ``plain``: the pruned model as it is (zeros computed by dense kernels, torch's pooling);
- ``dense``: ``deploy.fast_pooling(model)``, the deployed form with dense kernels: the
  baseline of every ratio, so that they measure the sparse kernels and nothing else;
- ``torch_sparse``: ``to_sparse(..., where="wins", rule=--rule, kxk=True, fast_pool=True,
  fuse=False)`` with the native kernels disabled (torch's CSR product, torch-level
  sparse convolution);
- ``native``: the same with the native kernels (:mod:`underbudget.deploy.native`);
- ``native_fused``: the deploy form ``to_sparse`` gives by default: native kernels, and
  sparse convolutions that apply the following ReLU and 2x2 max-pool as they write.

Prints one JSON object: images/s of each form, the ratios ``<form>_over_dense`` (> 1: faster
than dense kernels), the largest logit difference to the plain model, the layers made
sparse and fused, and whether the target (MLP and LeNet-5 at least 1.5x faster than dense at
density <= 0.1 for the largest batch, in the deploy form ``native_fused``) holds.

    python benchmarks/bench_sparse_inference.py [--quick] [--threads N] [--rule measure]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from underbudget import deploy, sparsity
from underbudget.models import create_model

CASES = {"mlp": (1, 28), "lenet5": (1, 28), "resnet20": (3, 32)}
TARGET = {"models": ["mlp", "lenet5"], "max_density": 0.1, "ratio": 1.5}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(variants: dict, x: torch.Tensor, rounds: int, seconds: float,
          device: torch.device) -> dict[str, float]:
    """Median seconds per forward of each variant, interleaved round by round."""
    with torch.inference_mode():
        for fn in variants.values():  # warm-up: allocator, caches, CSR construction
            fn(x)
        _sync(device)
        start = time.perf_counter()
        next(iter(variants.values()))(x)
        _sync(device)
        one = max(time.perf_counter() - start, 1e-6)
        reps = max(1, min(500, int(seconds / rounds / len(variants) / one)))
        times: dict[str, list[float]] = {k: [] for k in variants}
        names = list(variants)
        for r in range(rounds):
            for k in names[r % len(names):] + names[: r % len(names)]:
                _sync(device)
                start = time.perf_counter()
                for _ in range(reps):
                    variants[k](x)
                _sync(device)
                times[k].append((time.perf_counter() - start) / reps)
    return {k: statistics.median(v) for k, v in times.items()}


def _forms(model, rule: str, batch: int, shape: tuple[int, ...]) -> dict:
    options = dict(where="wins", rule=rule, batch_size=batch, input_shape=shape, kxk=True,
                   fast_pool=True)
    with deploy.native.disabled():
        torch_sparse = deploy.to_sparse(model, fuse=False, **options)

    def run_torch(x):
        with deploy.native.disabled():
            return torch_sparse(x)

    forms = {"plain": model, "dense": deploy.fast_pooling(model), "torch_sparse": run_torch}
    nets = {"torch_sparse": torch_sparse}
    if deploy.native.available():
        nets["native"] = forms["native"] = deploy.to_sparse(model, fuse=False, **options)
        nets["native_fused"] = forms["native_fused"] = deploy.to_sparse(model, **options)
    return forms, nets


def measure(name: str, density: float, batches: list[int], args, device) -> dict:
    channels, size = CASES[name]
    model = create_model(name, num_classes=10, in_channels=channels, image_size=size, seed=0)
    model.to(device).eval()
    masks = sparsity.prune(model, density, "magnitude", args.scope)
    out = {"density_measured": round(masks.density(), 4),
           "layer_densities": {k: round(v, 4) for k, v in masks.layer_densities().items()},
           "batches": {}}
    gen = torch.Generator().manual_seed(0)
    for batch in batches:
        x = torch.randn(batch, channels, size, size, generator=gen).to(device)
        forms, nets = _forms(model, args.rule, batch, (channels, size, size))
        with torch.inference_mode():
            ref = model(x)
            outs = [fn(x) for k, fn in forms.items() if k != "plain"]
            diff = max(float((o - ref).abs().max()) for o in outs)
            same = all(bool(torch.equal(o.argmax(1), ref.argmax(1))) for o in outs)
        t = _time(forms, x, args.rounds, args.seconds, device)
        row = {f"{k}_images_per_s": round(batch / t[k], 1) for k in forms}
        row.update({f"{k}_over_dense": round(t["dense"] / t[k], 3) for k in forms
                    if k != "dense"})
        row.update({
            "max_abs_logit_diff": diff,
            "same_predictions": same,
            **{f"{k}_layers": [c.name for c in net.sparse_choices if c.form != "dense"]
               for k, net in nets.items()},
            "fused_layers": nets["native_fused"].fused_layers if "native_fused" in nets else [],
        })
        out["batches"][str(batch)] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one density, small batches")
    parser.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--densities", nargs="+", type=float, default=[0.5, 0.2, 0.1, 0.05])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 256])
    parser.add_argument("--scope", default="global", choices=["global", "layerwise", "erk"])
    parser.add_argument("--rule", default="threshold", choices=["threshold", "measure"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.5, help="timed seconds per case")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.quick:
        args.densities, args.batches, args.rounds, args.seconds = [0.1], [1, 32], 3, 0.2
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = {name: {str(d): measure(name, d, args.batches, args, device)
                      for d in args.densities} for name in args.models}
    big = str(max(args.batches))
    target_form = "native_fused" if deploy.native.available() else "torch_sparse"
    checked = {
        f"{name}@{d}": results[name][d]["batches"][big][f"{target_form}_over_dense"]
        for name in TARGET["models"] if name in results
        for d in results[name] if float(d) <= TARGET["max_density"]
    }
    print(json.dumps({
        "benchmark": "sparse_inference",
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "scope": args.scope,
        "rule": args.rule,
        "native_kernels": deploy.native.available() or deploy.native.unavailable_reason(),
        "results": results,
        "target": {**TARGET, "batch": int(big), "form": target_form, "ratios": checked,
                   "met": bool(checked) and min(checked.values()) >= TARGET["ratio"]},
    }))


if __name__ == "__main__":
    main()
