"""Training and inference throughput of resnet20 (32x32x3) and lenet5 (28x28x1).

Training is forward + backward + SGD step at batch 128; inference is a no-grad eval forward.
Images per second come from the median step time (robust on a shared machine); the ratios
compare models measured in the same run. Prints one JSON object.

    python benchmarks/bench_throughput.py [--seconds 3] [--batch 128] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from underbudget.models import count_parameters, create_model

CASES = {"resnet20": (3, 32), "lenet5": (1, 28)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_step(step, seconds: float, device: torch.device, warmup: int = 3) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        tic = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def measure(name: str, batch: int, seconds: float, device: torch.device) -> dict:
    channels, size = CASES[name]
    model = create_model(name, num_classes=10, in_channels=channels, image_size=size, seed=0)
    model.to(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    def infer_step() -> None:
        with torch.inference_mode():
            model(x)

    model.train()
    train = _median_step(train_step, seconds, device)
    model.eval()
    infer = _median_step(infer_step, seconds, device)
    return {
        "params": count_parameters(model),
        "input": [channels, size, size],
        "train_images_per_s": round(batch / train, 1),
        "infer_images_per_s": round(batch / infer, 1),
        "train_ms_per_batch": round(1000 * train, 2),
        "infer_over_train": round(train / infer, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per measure")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = {name: measure(name, args.batch, args.seconds, device) for name in CASES}
    lenet, resnet = results["lenet5"], results["resnet20"]
    print(
        json.dumps(
            {
                "benchmark": "throughput",
                "device": str(device),
                "threads": torch.get_num_threads(),
                "batch": args.batch,
                "torch": torch.__version__,
                "machine": platform.machine(),
                "models": results,
                "lenet5_over_resnet20": {
                    "train": round(lenet["train_images_per_s"] / resnet["train_images_per_s"], 2),
                    "infer": round(lenet["infer_images_per_s"] / resnet["infer_images_per_s"], 2),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
