"""Executors: the wall time of one sweep of 4 small CPU runs (lenet5 on synthetic 28x28
data, 32 epochs each: about 20 s a run on a quiet core) with the serial executor and with
``local --workers 2``, in one process, and their ratio; and the per-task overhead of the Ray
executor (8 trivial tasks: runs already finished, so each task only checks its run; Ray
minus serial, per task, Ray's start-up reported apart; Ray gets one CPU so that its tasks
too run one at a time). Prints one JSON object.

    OMP_NUM_THREADS=1 python benchmarks/bench_executor.py [--epochs 32] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from underbudget.config import load_config
from underbudget.experiment.launch import launch

RUN = ["model.name=lenet5", "model.kwargs={}", "data.image_size=28",
       "data.options.n_train=2048", "train.device=cpu"]
TRIVIAL = ["data.options.n_train=256", "train.device=cpu"]  # tiny's mlp on 8x8 images


def sweep(seeds: int, epochs: int, *extra: str, base: list[str] = RUN):
    grid = json.dumps({"seed": list(range(seeds))})
    return load_config("tiny", [*base, f"train.epochs={epochs}", f"sweep={grid}", *extra])


def timed(cfg, root: Path) -> float:
    t0 = time.perf_counter()
    result = launch(cfg, root, quiet=True)
    seconds = time.perf_counter() - t0
    if not result.ok:
        raise SystemExit(f"benchmark sweep failed: {result.failure_text()}")
    return seconds


def ray_overhead(root: Path, tasks: int) -> dict:
    import ray

    cfg = sweep(tasks, 1, base=TRIVIAL)
    timed(cfg, root)  # train them once: afterwards every task finds its run finished
    serial = min(timed(cfg, root) for _ in range(2))
    t0 = time.perf_counter()
    # one CPU: the tasks run one at a time, as serially, so the difference is the dispatch
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    start = time.perf_counter() - t0
    try:
        on_ray = sweep(tasks, 1, "executor.name=ray", base=TRIVIAL)
        first = timed(on_ray, root)  # Ray starts its worker processes
        warm = min(timed(on_ray, root) for _ in range(2))
    finally:
        ray.shutdown()
    graph_tasks = tasks + 1  # and the report
    return {"tasks": graph_tasks, "serial_s": round(serial, 3), "ray_first_s": round(first, 3),
            "ray_warm_s": round(warm, 3), "ray_init_s": round(start, 2),
            "overhead_per_task_s": round((warm - serial) / graph_tasks, 4),
            "overhead_per_task_first_s": round((first - serial) / graph_tasks, 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--ray-tasks", type=int, default=8)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        serial = timed(sweep(4, args.epochs), root / "serial")
        local = timed(sweep(4, args.epochs, "executor.name=local",
                            f"executor.workers={args.workers}"), root / "local")
        out = {
            "sweep": f"4 runs of lenet5, synthetic 28x28, 2048 images, {args.epochs} epochs",
            "serial_s": round(serial, 2), "local_s": round(local, 2),
            "workers": args.workers, "speedup": round(serial / local, 2),
            "serial_s_per_run": round(serial / 4, 2),
            "torch_threads_serial": torch.get_num_threads(),
            "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "torch": torch.__version__,
        }
        try:
            out["ray"] = ray_overhead(root / "ray", args.ray_tasks)
        except ImportError:
            out["ray"] = "not installed (pip install 'underbudget[ray]')"
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
