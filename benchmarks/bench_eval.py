"""Evaluation of the Fashion-MNIST test set with LeNet-5 and ConvNet: before versus after.

``before`` is the evaluation loop as it was (``torch.no_grad``, per-batch ``.double()`` and,
with logits, one device-to-host copy per batch), kept here as the baseline; ``after`` is
``underbudget.train.evaluate`` (``torch.inference_mode``, device-side sums, logits gathered
once, batches re-cut to the device for in-memory loaders). Further variants of ``after``:
``loader_batch`` (the loader's own batch size), ``auto_layout`` (``channels_last=None``: on a
CPU the conv weights switch to channels-last for the pass only), a model kept in
channels-last, explicit batch sizes, and ``fastpool``: the model with
``deploy.fast_pooling`` (an exact, faster 2x2 max-pool; a model-side change, measured here to
show how much of evaluation the pooling kernel takes). All variants are interleaved round by
round (median over rounds); each must count the same errors. Prints one JSON object with
seconds per pass, images/s and ``<variant>_over_before`` speed ratios (> 1: faster).

    python benchmarks/bench_eval.py [--quick] [--threads N] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from underbudget import deploy
from underbudget.data import Loader, load_dataset
from underbudget.models import create_model
from underbudget.train.evaluate import evaluate

MODELS = ("lenet5", "convnet")


@torch.no_grad()
def evaluate_before(model, loader, *, device, return_logits=False) -> dict:
    """The evaluation loop before this change (the baseline)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n, all_logits, all_labels = 0, [], []
    try:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = model(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
            n += y.numel()
            if return_logits:
                all_logits.append(logits.cpu())
                all_labels.append(y.cpu())
    finally:
        model.train(was_training)
    n_correct = int(correct.item())
    out = {"loss": float(loss_sum.item()) / max(1, n), "acc": n_correct / max(1, n),
           "errors": n - n_correct, "n": n}
    if return_logits:
        out["logits"], out["labels"] = torch.cat(all_logits), torch.cat(all_labels)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, test, mean, std, args, device) -> dict:
    model = create_model(name, num_classes=10, in_channels=1, image_size=28, seed=0)
    model.to(device)
    loader = Loader(test, args.eval_batch, mean=mean, std=std, device=device)
    cl = create_model(name, num_classes=10, in_channels=1, image_size=28, seed=0).to(device)
    cl.load_state_dict(model.state_dict())
    cl = cl.to(memory_format=torch.channels_last)
    fast = deploy.fast_pooling(model)
    variants = {
        "before": lambda: evaluate_before(model, loader, device=device),
        "after": lambda: evaluate(model, loader, device=device),
        "after_loader_batch": lambda: evaluate(model, loader, device=device,
                                               batch_size=args.eval_batch),
        "before_logits": lambda: evaluate_before(model, loader, device=device,
                                                 return_logits=True),
        "after_logits": lambda: evaluate(model, loader, device=device, return_logits=True),
        "after_auto_layout": lambda: evaluate(model, loader, device=device, channels_last=None),
        "after_channels_last": lambda: evaluate(cl, loader, device=device, channels_last=None),
        "after_fastpool": lambda: evaluate(fast, loader, device=device),
    }
    for size in args.batches:
        variants[f"after_batch{size}"] = (
            lambda size=size: evaluate(model, loader, device=device, batch_size=size))
    results = {k: fn() for k, fn in variants.items()}  # warm-up, and the agreement check
    errors = {k: r["errors"] for k, r in results.items()}
    assert len(set(errors.values())) == 1, f"variants disagree on the errors: {errors}"
    loss_gap = max(abs(r["loss"] - results["before"]["loss"]) for r in results.values())
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(args.rounds):
        for k in names[r % len(names):] + names[: r % len(names)]:
            _sync(device)
            start = time.perf_counter()
            variants[k]()
            _sync(device)
            times[k].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    n = results["before"]["n"]
    return {
        "images": n,
        "seconds": {k: round(v, 4) for k, v in med.items()},
        "images_per_s": {k: round(n / v, 1) for k, v in med.items()},
        "over_before": {
            k: round((med["before_logits"] if "logits" in k else med["before"]) / v, 3)
            for k, v in med.items() if not k.startswith("before")
        },
        "max_loss_gap": loss_gap,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 test images, 2 rounds")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--eval-batch", type=int, default=1000, help="the loader's batch size")
    parser.add_argument("--batches", nargs="+", type=int, default=[256, 2500, 10000])
    parser.add_argument("--limit", type=int, default=None, help="test images (default all)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.quick:
        args.limit, args.rounds, args.batches = 2000, 2, [256, 2000]
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    splits = load_dataset("fashion-mnist")
    test = splits.test if args.limit is None else splits.test.subset(range(args.limit))
    results = {name: measure(name, test, splits.mean, splits.std, args, device)
               for name in MODELS}
    print(json.dumps({
        "benchmark": "eval",
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "loader_batch": args.eval_batch,
        "models": results,
    }))


if __name__ == "__main__":
    main()
