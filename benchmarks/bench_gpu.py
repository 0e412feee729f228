"""Training throughput of ResNet-18 (CIFAR stem, 3x32x32) for each speed option of a device.

Options, each timed as a whole training step (forward, backward, SGD with momentum):

- ``fp32``: the baseline; batches already on the device;
- ``bf16_autocast``: ``torch.autocast(bfloat16)`` (what ``train.amp`` does; CUDA only);
- ``channels_last``: model and inputs in channels-last memory format;
- ``compile``: ``torch.compile(model)`` (first-call compile time reported apart);
- ``best``: bf16 + channels-last + compile together (where each applies);
- ``loader_device``: batches from ``underbudget.data.Loader`` holding the uint8 set on the
  device, crop + flip augmentation on the device;
- ``loader_host``: the same loader on the host, each batch copied to the device (pageable);
- ``loader_host_pinned``: as ``loader_host`` with each batch pinned and copied
  ``non_blocking`` (the option when data must stay on the host);
- ``eval_loader_batch`` / ``eval_auto_batch``: ``underbudget.train.evaluate`` over the
  device loader with its own batch size, and with batches sized to the device.

Options that do not apply on the device are reported as skipped with the reason. Prints one
JSON object: images/s per option and ``over_fp32`` (> 1: faster than the baseline).

    python benchmarks/bench_gpu.py [--device cuda] [--quick] [--skip compile]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import time

import torch
import torch.nn.functional as F

from underbudget.data import Augment, Loader, make_synthetic
from underbudget.models import create_model
from underbudget.train.evaluate import evaluate

OPTIONS = ("fp32", "bf16_autocast", "channels_last", "compile", "best", "loader_device",
           "loader_host", "loader_host_pinned", "eval_loader_batch", "eval_auto_batch")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def skip_reason(option: str, device: torch.device) -> str | None:
    """Why ``option`` does not apply on ``device`` (None when it does)."""
    cuda = device.type == "cuda"
    if option == "bf16_autocast" and not cuda:
        return "train.amp (bf16 autocast) is applied on CUDA only"
    if option == "bf16_autocast" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bf16 support"
    if option in ("loader_host", "loader_host_pinned") and not cuda:
        return "no accelerator: host memory is device memory, nothing is copied"
    if option in ("compile", "best"):
        try:
            importlib.import_module("torch._inductor")
        except Exception as exc:  # an incomplete install: report it, don't crash
            return f"torch.compile is unavailable ({exc})"
    return None


class Run:
    """One model, optimizer and data set per option; ``steps`` timed training steps."""

    def __init__(self, args, device: torch.device):
        self.args, self.device = args, device
        self.data = make_synthetic(10, 32, 3, n_train=args.examples, n_test=args.examples)

    def model(self, channels_last: bool = False):
        model = create_model("resnet18", 10, 3, 32, seed=0, stem="cifar").to(self.device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        return model, opt

    def loader(self, device) -> Loader:
        return Loader(self.data.train, self.args.batch, shuffle=True,
                      augment=Augment(crop_padding=4, flip=True), mean=self.data.mean,
                      std=self.data.std, device=device, seed=0)

    def train(self, option: str) -> dict:
        dev, args = self.device, self.args
        cuda = dev.type == "cuda"
        bf16 = option in ("bf16_autocast", "best") and cuda
        cl = option in ("channels_last", "best")
        model, opt = self.model(cl)
        forward = torch.compile(model) if option in ("compile", "best") else model
        fixed = next(iter(self.loader(dev)))
        batches = self._batches(option, fixed)

        def step(x, y) -> None:
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            ctx = (torch.autocast("cuda", dtype=torch.bfloat16) if bf16
                   else contextlib.nullcontext())
            with ctx:
                loss = F.cross_entropy(forward(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        start = time.perf_counter()
        step(*fixed)  # the first call (compiles when asked)
        _sync(dev)
        first = time.perf_counter() - start
        for _ in range(args.warmup):
            step(*next(batches))
        _sync(dev)
        start = time.perf_counter()
        for _ in range(args.steps):
            step(*next(batches))
        _sync(dev)
        seconds = time.perf_counter() - start
        out = {"images_per_s": round(args.steps * args.batch / seconds, 1),
               "ms_per_step": round(1000 * seconds / args.steps, 2)}
        if option in ("compile", "best"):
            out["first_step_s"] = round(first, 2)
        return out

    def _batches(self, option: str, fixed):
        """Endless batches for ``option``: fixed device tensors, or from a loader."""
        dev = self.device
        if not option.startswith("loader"):
            while True:
                yield fixed
        host = option != "loader_device"
        loader = self.loader("cpu" if host else dev)
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            for x, y in loader:
                if option == "loader_host_pinned":
                    x, y = x.pin_memory(), y.pin_memory()
                if host:
                    x = x.to(dev, non_blocking=option == "loader_host_pinned")
                    y = y.to(dev, non_blocking=option == "loader_host_pinned")
                yield x, y
            epoch += 1

    def eval(self, option: str) -> dict:
        model, _ = self.model()
        loader = Loader(self.data.test, self.args.batch, mean=self.data.mean,
                        std=self.data.std, device=self.device)
        size = loader.batch_size if option == "eval_loader_batch" else None
        evaluate(model, loader, device=self.device, batch_size=size)  # warm-up
        _sync(self.device)
        start = time.perf_counter()
        for _ in range(self.args.eval_passes):
            evaluate(model, loader, device=self.device, batch_size=size)
        _sync(self.device)
        seconds = time.perf_counter() - start
        return {"images_per_s": round(self.args.eval_passes * len(self.data.test) / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a CPU smoke run)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--examples", type=int, default=10000)
    parser.add_argument("--eval-passes", type=int, default=3)
    parser.add_argument("--skip", nargs="*", default=[], choices=OPTIONS)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if args.quick:
        args.batch, args.steps, args.warmup, args.examples, args.eval_passes = 16, 2, 1, 64, 1
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    run = Run(args, device)
    results: dict[str, dict] = {}
    for option in OPTIONS:
        why = "--skip" if option in args.skip else skip_reason(option, device)
        if why is not None:
            results[option] = {"skipped": why}
            continue
        try:
            results[option] = run.eval(option) if option.startswith("eval") else run.train(option)
        except Exception as exc:  # report the failure of one option, measure the others
            results[option] = {"skipped": f"failed: {type(exc).__name__}: {exc}"[:300]}
    base = results["fp32"].get("images_per_s")
    for option in OPTIONS:
        ips = results[option].get("images_per_s")
        if base and ips and not option.startswith("eval"):
            results[option]["over_fp32"] = round(ips / base, 3)
    if results["eval_loader_batch"].get("images_per_s") and results["eval_auto_batch"].get(
            "images_per_s"):
        results["eval_auto_batch"]["over_loader_batch"] = round(
            results["eval_auto_batch"]["images_per_s"]
            / results["eval_loader_batch"]["images_per_s"], 3)
    print(json.dumps({
        "benchmark": "gpu_options",
        "model": "resnet18 (cifar stem)",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
        platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "batch": args.batch,
        "steps": args.steps,
        "options": results,
    }))


if __name__ == "__main__":
    main()
