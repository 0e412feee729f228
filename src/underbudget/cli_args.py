"""The command line's arguments: every command, its flags and the config-key aliases."""

from __future__ import annotations

import argparse

from .sections import EXECUTORS


def _platform_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="alias of train.device (auto, cpu, cuda, cuda:N, mps)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="alias of train.amp (bf16 autocast on CUDA)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="alias of train.compile (torch.compile)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="alias of train.progress (progress bars and epoch lines)")


def _executor_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", choices=EXECUTORS,
                   help="alias of executor.name: where the experiment graph's tasks run "
                        "(serial in this process, local worker processes, ray, slurm)")
    p.add_argument("--workers", type=int, help="alias of executor.workers (local: processes)")
    p.add_argument("--ray-address", help="alias of executor.ray_address (ray: a running "
                                         "cluster; default: a local Ray instance)")
    p.add_argument("--skip-locked", action="store_true",
                   help="leave a run that another launcher is running to it (default: wait)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="underbudget",
        description="Learning under constraints: sparse, low-data, anytime and compressed "
                    "transfer experiments from one config.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a preset or a YAML config (key.sub=value overrides)")
    run.add_argument("source", help="preset name (see 'underbudget list presets') or FILE.yaml")
    run.add_argument("overrides", nargs="*", help="overrides such as optim.lr=0.05 seed=1")
    run.add_argument("--out", help="runs root (default $UNDERBUDGET_RUNS or ./runs)")
    run.add_argument("--force", action="store_true", help="delete a finished run and redo it")
    run.add_argument("--dry-run", action="store_true",
                     help="check the config (names, files, device) and print it resolved")
    run.add_argument("--quiet", action="store_true", help="less output")
    _platform_flags(run)
    _executor_flags(run)

    sweep = sub.add_parser("sweep", help="run a grid: key=a,b,c overrides expand to runs")
    sweep.add_argument("source")
    sweep.add_argument("overrides", nargs="*",
                       help="key=value (fixed) or key=a,b,c (swept: one run per value)")
    sweep.add_argument("--out")
    sweep.add_argument("--force", action="store_true")
    sweep.add_argument("--dry-run", action="store_true",
                       help="check every run of the grid and print the resolved config")
    sweep.add_argument("--quiet", action="store_true")
    _platform_flags(sweep)
    _executor_flags(sweep)

    report = sub.add_parser("report", help="tables and plots over finished runs")
    report.add_argument("paths", nargs="+", help="run directories or directories of runs")
    report.add_argument("--out", help="output directory (default: <first path>/report)")
    report.add_argument("--pareto", metavar="AXIS",
                        help="also write pareto.md/png: --metric against this cost (train_flops, "
                             "inference_flops, deployed_bytes, examples_seen, wall_time)")
    report.add_argument("--metric", help="accuracy (default, higher is better) or ece (lower) "
                                         "for --pareto")

    show = sub.add_parser("show", help="print a run's config summary and results")
    show.add_argument("path")

    export = sub.add_parser("export", help="write a run's model compactly (sparse, integer) "
                                           "with a model card")
    export.add_argument("run", help="a finished run directory (a train run, a lottery level, "
                                    "an anytime run, a compress_transfer variant)")
    export.add_argument("--out", help="output directory (default: RUN/export)")

    lst = sub.add_parser("list", help="list presets, models, datasets or methods")
    lst.add_argument("what", choices=["presets", "models", "datasets", "methods"])

    demo = sub.add_parser("demo", help="run app-demo (APP vs OSP vs dense on Fashion-MNIST)")
    demo.add_argument("overrides", nargs="*")
    demo.add_argument("--out")
    demo.add_argument("--force", action="store_true")
    _platform_flags(demo)
    return p
