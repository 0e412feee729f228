"""Throughput of the batched in-memory Loader (crop + flip + normalize on whole batches)
against a per-sample Dataset with the same augmentations through a 2-worker DataLoader.

Both wall-clock images/second and images per CPU-second are reported: on a shared machine the
wall-clock figure favours whichever side runs more processes, while CPU time counts the work
(the baseline's CPU includes its worker processes).

Run: python benchmarks/bench_data.py [--n 20000] [--batch 128]. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import torch
from torch.utils.data import DataLoader, Dataset

from underbudget.data import Augment, ImageSet, Loader

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


class PerSampleCifar(Dataset):
    """The usual pipeline: one image at a time, pad + random crop + flip + to float + normalize."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, padding: int = 4):
        self.images, self.labels, self.padding = images, labels, padding
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        img = self.images[i]
        p = self.padding
        _, h, w = img.shape
        padded = torch.nn.functional.pad(img, (p, p, p, p))
        top, left = torch.randint(0, 2 * p + 1, (2,)).tolist()
        img = padded[:, top : top + h, left : left + w]
        if torch.rand(()) < 0.5:
            img = img.flip(2)
        x = (img.float() / 255.0 - self.mean) / self.std
        return x, self.labels[i]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _epoch(iterable, n: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its finished children) for one pass."""
    wall, cpu, children = time.perf_counter(), time.process_time(), _children_cpu()
    seen = 0
    for x, _ in iterable:
        seen += x.shape[0]
    assert seen == n, (seen, n)
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu + _children_cpu() - children
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (best is reported)")
    parser.add_argument(
        "--threads",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="torch threads of the batched loader (default: as many cores as the baseline's "
        "2 workers use)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (args.n,), generator=gen)

    loader = Loader(
        ImageSet(images, labels, [str(i) for i in range(10)]),
        args.batch,
        shuffle=True,
        augment=Augment(crop_padding=4, flip=True),
        mean=MEAN,
        std=STD,
        seed=0,
    )
    loader.set_epoch(0)
    _epoch(loader, args.n)  # warm-up
    batched = []
    for epoch in range(1, args.epochs + 1):
        loader.set_epoch(epoch)
        batched.append(_epoch(loader, args.n))

    per_sample = []
    for epoch in range(args.epochs):
        baseline = DataLoader(
            PerSampleCifar(images, labels),
            batch_size=args.batch,
            shuffle=True,
            num_workers=2,
            generator=torch.Generator().manual_seed(epoch),
        )
        per_sample.append(_epoch(baseline, args.n))  # includes starting the 2 workers

    def rates(runs):
        return args.n / min(w for w, _ in runs), args.n / min(c for _, c in runs)

    (b_wall, b_cpu), (s_wall, s_cpu) = rates(batched), rates(per_sample)
    print(
        json.dumps(
            {
                "benchmark": "data_loader",
                "images": args.n,
                "shape": [3, 32, 32],
                "batch_size": args.batch,
                "augment": "crop(pad 4) + flip + normalize",
                "batched_loader_img_per_s": round(b_wall),
                "per_sample_2_workers_img_per_s": round(s_wall),
                "speedup_wall": round(b_wall / s_wall, 2),
                "batched_loader_img_per_cpu_s": round(b_cpu),
                "per_sample_2_workers_img_per_cpu_s": round(s_cpu),
                "speedup_cpu": round(b_cpu / s_cpu, 2),
                "batched_loader_threads": args.threads,
                "baseline_workers": 2,
                "torch": torch.__version__,
                "machine": platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
