"""Cost of enforcing masks in a training step: resnet20 on CPU at density 0.1.

Prints one JSON object. Ratios compare variants measured in the same run, interleaved round
by round (median over rounds), so machine load affects them all alike:

- ``masked_over_dense``: MaskedOptimizer step time / plain dense step time (target <= 1.05);
- ``masked_over_torch_prune``: ours / torch.nn.utils.prune hook-based masking with the same
  masks (< 1 means ours is faster);
- ``mask_ops_over_dense``: the masking work alone (gradient masking + re-applying the masks)
  / dense step time, a low-noise estimate of the overhead;
- ``overhead_ours_over_torch_prune``: that masking work against the work torch's hooks add to
  a step (recomputing ``weight = weight_orig * weight_mask`` before every forward and
  back-propagating through the product), both timed in isolation over many repetitions.
  The whole-step ratios are within the run-to-run noise of a shared CPU; this one is not.

Usage: python benchmarks/bench_sparsity_step.py [--batch 128] [--rounds 15] [--steps 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.utils import prune as torch_prune

from underbudget import sparsity
from underbudget.models import create_model


def make_variant(kind: str, base: torch.nn.Module, masks: sparsity.MaskSet):
    model = copy.deepcopy(base)
    if kind == "torch_prune":
        sparsity.to_torch_prune(model, masks)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    if kind == "masked":
        own = sparsity.MaskSet({n: m.clone() for n, m in masks.items()})
        own.apply(model)
        opt = sparsity.MaskedOptimizer(opt, own, model)
    return model, opt


def step(model, opt, x, y) -> None:
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--density", type=float, default=0.1)
    args = parser.parse_args()

    torch.manual_seed(0)
    base = create_model("resnet20", num_classes=10, seed=0)
    base.train()
    probe = copy.deepcopy(base)
    masks = sparsity.prune(probe, args.density, "magnitude", "global")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)

    kinds = ["dense", "masked", "torch_prune"]
    variants = {k: make_variant(k, base, masks) for k in kinds}
    for k in kinds:  # warm up every path (allocator, kernels, optimizer state)
        for _ in range(2):
            step(*variants[k], x, y)

    times: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        order = kinds[r % 3 :] + kinds[: r % 3]
        for k in order:
            model, opt = variants[k]
            start = time.perf_counter()
            for _ in range(args.steps):
                step(model, opt, x, y)
            times[k].append((time.perf_counter() - start) / args.steps)
    med = {k: statistics.median(v) for k, v in times.items()}

    # the masking work alone, on the masked variant's real gradients
    model, opt = variants["masked"]
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    enforcer = opt.enforcer
    reps = 200
    start = time.perf_counter()
    for _ in range(reps):
        enforcer.before_step(opt.optimizer)
        enforcer.after_step()
    mask_ops = (time.perf_counter() - start) / reps

    # the work torch.nn.utils.prune adds: every hook, then backward through weight_orig * mask
    model_t, _ = variants["torch_prune"]
    hooked = [
        (module, hook)
        for module in model_t.modules()
        for hook in module._forward_pre_hooks.values()
        if isinstance(hook, torch_prune.BasePruningMethod)
    ]
    grads = [torch.randn_like(module.weight_orig) for module, _ in hooked]
    start = time.perf_counter()
    for _ in range(reps):
        for module, hook in hooked:
            hook(module, None)
        torch.autograd.backward([module.weight for module, _ in hooked], grads)
    torch_ops = (time.perf_counter() - start) / reps

    # the invariant still holds in the benchmarked model
    for n, m in opt.masks.items():
        assert bool((model.get_parameter(n)[~m] == 0).all())

    print(
        json.dumps(
            {
                "benchmark": "sparsity_masked_step",
                "model": "resnet20",
                "device": "cpu",
                "threads": torch.get_num_threads(),
                "batch": args.batch,
                "density": round(opt.masks.density(), 6),
                "rounds": args.rounds,
                "steps_per_round": args.steps,
                "dense_step_ms": round(med["dense"] * 1e3, 2),
                "masked_step_ms": round(med["masked"] * 1e3, 2),
                "torch_prune_step_ms": round(med["torch_prune"] * 1e3, 2),
                "mask_ops_ms": round(mask_ops * 1e3, 4),
                "masked_over_dense": round(med["masked"] / med["dense"], 4),
                "masked_over_torch_prune": round(med["masked"] / med["torch_prune"], 4),
                "torch_prune_ops_ms": round(torch_ops * 1e3, 4),
                "mask_ops_over_dense": round(mask_ops / med["dense"], 5),
                "torch_prune_ops_over_dense": round(torch_ops / med["dense"], 5),
                "overhead_ours_over_torch_prune": round(mask_ops / torch_ops, 4),
            }
        )
    )


if __name__ == "__main__":
    main()
