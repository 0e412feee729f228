"""One small APP stream, run through underbudget and through a plain PyTorch loop.

Both runs share the model (LeNet-5), the data (Fashion-MNIST limited to ``--limit`` training
images, the same megabatches, replay and validation split, the same test images), the
optimizer (SGD with momentum and weight decay, cosine LR restarting every stage), the epochs
per stage and the pruning schedule d_b = 0.8^{tau_b}, tau_b = linspace(1, tau, T), by global
magnitude with nested masks. underbudget runs the ``anytime`` method (strategy ``app``,
criterion ``magnitude``) through ``load_config`` + ``run_experiment`` into a temporary
directory. The plain loop is written the way reference research code is: a per-sample
``Dataset`` with transforms, a ``DataLoader``, ``torch.nn.utils.prune.global_unstructured``
with ``L1Unstructured``, and a test-set evaluation after every epoch.

Both run in one process after a common warm-up (torch's lazy imports). Prints one JSON
object: both wall times (data loading included), ``plain_over_underbudget``
(> 1: underbudget is faster), each run's final test accuracy and measured density (which
must agree: same density, accuracy within noise), and where each run spent its time.

    python benchmarks/bench_end_to_end.py [--quick] [--threads N] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune
from torch.utils.data import DataLoader, Dataset

from underbudget.config import load_config
from underbudget.experiment.launch import run_experiment
from underbudget.methods.anytime.plan import plan_stream
from underbudget.methods.common import prepare_data
from underbudget.models import create_model
from underbudget.sparsity import keep_count, progressive_densities


def config(args):
    overrides = ["method.strategy=app", "method.criterion=magnitude", "train.select=last",
                 "train.progress=false", f"data.limit={args.limit}", f"train.epochs={args.epochs}",
                 f"method.megabatches={args.megabatches}", "train.device=cpu"]
    if args.test_limit:
        overrides.append(f"data.test_limit={args.test_limit}")
    cfg = load_config("app-demo", overrides + list(args.overrides))
    cfg.sweep = {}  # one strategy, not the preset's comparison
    return cfg


def run_underbudget(cfg) -> dict:
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        path = run_experiment(cfg, root, quiet=True)
        wall = time.perf_counter() - start
        s = json.loads((path / "summary.json").read_text())
    return {"wall_s": round(wall, 2), "final_test_acc": s["final_test_acc"],
            "final_density": s["final_density_measured"],
            "train_s": round(s["time_train"], 2), "eval_s": round(s["time_eval"], 2),
            "prune_s": round(s["time_prune"], 3)}


# ---------------------------------------------------------------- the plain loop


class StreamDataset(Dataset):
    """Per-sample access with per-sample transforms, as a torchvision-style dataset."""

    def __init__(self, images, labels, indices, mean: float, std: float, train: bool):
        self.images, self.labels, self.indices = images, labels, indices.tolist()
        self.mean, self.std, self.train = mean, std, train

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = self.indices[i]
        img = self.images[j].float().div(255.0)  # ToTensor
        if self.train and torch.rand(()) < 0.5:  # RandomHorizontalFlip
            img = img.flip(-1)
        return (img - self.mean) / self.std, int(self.labels[j])  # Normalize


def plain_evaluate(model, loader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x).argmax(1) == y).sum().item()
            total += y.numel()
    model.train()
    return correct / total


def run_plain(cfg) -> dict:
    a, o = cfg.method, cfg.optim
    start = time.perf_counter()
    data = prepare_data(cfg)  # reads the same files and takes the same subsets
    plan = plan_stream(data.train.labels, a, cfg.seed)
    mean, std = data.splits.mean[0], data.splits.std[0]
    images, labels = data.train.images, data.train.labels
    test = DataLoader(StreamDataset(data.test.images, data.test.labels,
                                    torch.arange(len(data.test)), mean, std, False),
                      batch_size=cfg.data.eval_batch_size)
    model = create_model("lenet5", 10, 1, 28, seed=cfg.seed)
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum,
                          weight_decay=o.weight_decay)
    layers = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    total = sum(m.weight.numel() for m, _ in layers)
    kept = total
    densities = progressive_densities(a.megabatches, tau=a.tau)
    times = {"train_s": 0.0, "eval_s": 0.0, "prune_s": 0.0}
    acc = float("nan")
    for b, d in enumerate(densities):
        t0 = time.perf_counter()
        target = keep_count(d, total)
        scores = {(m, n): getattr(m, n).detach().abs() for m, n in layers}
        torch_prune.global_unstructured(layers, pruning_method=torch_prune.L1Unstructured,
                                        importance_scores=scores, amount=kept - target)
        kept = target
        times["prune_s"] += time.perf_counter() - t0
        train = DataLoader(StreamDataset(images, labels, plan.stage_train[b], mean, std, True),
                           batch_size=cfg.data.batch_size, shuffle=True)
        steps = cfg.train.epochs * len(train)
        step = 0
        for _ in range(cfg.train.epochs):
            t0 = time.perf_counter()
            for x, y in train:
                for g in opt.param_groups:  # cosine over the stage, restarted every stage
                    g["lr"] = o.lr * 0.5 * (1 + math.cos(math.pi * step / steps))
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
            times["train_s"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            acc = plain_evaluate(model, test)  # test accuracy after every epoch
            times["eval_s"] += time.perf_counter() - t0
    wall = time.perf_counter() - start
    nonzero = sum(int(m.weight.count_nonzero()) for m, _ in layers)
    return {"wall_s": round(wall, 2), "final_test_acc": acc,
            "final_density": nonzero / total, **{k: round(v, 3) for k, v in times.items()}}


def warm_up() -> None:
    """Pay one-time costs of the process (torch's lazy imports, kernel set-up) before timing,
    so that neither run is charged for them."""
    model = create_model("lenet5", 10, 1, 28, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # imports torch._dynamo
    F.cross_entropy(model(torch.randn(8, 1, 28, 28)), torch.arange(8)).backward()
    opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="key=value overrides of app-demo")
    parser.add_argument("--quick", action="store_true", help="1,000 images, 1 epoch, T=4")
    parser.add_argument("--limit", type=int, default=4000, help="training images")
    parser.add_argument("--test-limit", type=int, default=None, help="test images (all)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per stage")
    parser.add_argument("--megabatches", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if args.quick:
        args.limit, args.test_limit, args.epochs, args.megabatches = 1000, 2000, 1, 4
    torch.set_num_threads(args.threads)
    cfg = config(args)
    warm_up()
    torch.manual_seed(cfg.seed)
    plain = run_plain(cfg)
    ours = run_underbudget(cfg)
    print(json.dumps({
        "benchmark": "end_to_end_app",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "setup": {"model": "lenet5", "train_images": args.limit, "test_images":
                  args.test_limit or 10000, "megabatches": args.megabatches,
                  "epochs_per_stage": args.epochs, "tau": cfg.method.tau,
                  "criterion": "magnitude", "scope": "global"},
        "underbudget": ours,
        "plain": plain,
        "plain_over_underbudget": round(plain["wall_s"] / ours["wall_s"], 3),
        "density_gap": abs(plain["final_density"] - ours["final_density"]),
        "acc_gap": round(abs(plain["final_test_acc"] - ours["final_test_acc"]), 4),
        "target": {"ratio": 2.0, "met": plain["wall_s"] / ours["wall_s"] >= 2.0},
    }))


if __name__ == "__main__":
    main()
