"""Command line: ``underbudget run|sweep|report|show|list|demo``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import UnderbudgetError

DEMO_PRESET = "app-demo"


def _parser() -> argparse.ArgumentParser:
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
    run.add_argument("--dry-run", action="store_true", help="print the resolved config only")
    run.add_argument("--quiet", action="store_true", help="less output")

    sweep = sub.add_parser("sweep", help="run a grid: key=a,b,c overrides expand to runs")
    sweep.add_argument("source")
    sweep.add_argument("overrides", nargs="*",
                       help="key=value (fixed) or key=a,b,c (swept: one run per value)")
    sweep.add_argument("--out")
    sweep.add_argument("--force", action="store_true")
    sweep.add_argument("--quiet", action="store_true")

    report = sub.add_parser("report", help="tables and plots over finished runs")
    report.add_argument("paths", nargs="+", help="run directories or directories of runs")
    report.add_argument("--out", help="output directory (default: <first path>/report)")

    show = sub.add_parser("show", help="print a run's config summary and results")
    show.add_argument("path")

    lst = sub.add_parser("list", help="list presets, models, datasets or methods")
    lst.add_argument("what", choices=["presets", "models", "datasets", "methods"])

    demo = sub.add_parser("demo", help="run app-demo (APP vs OSP vs dense on Fashion-MNIST)")
    demo.add_argument("overrides", nargs="*")
    demo.add_argument("--out")
    demo.add_argument("--force", action="store_true")
    return p


def _split_sweep(overrides: list[str]) -> tuple[list[str], dict]:
    from .config import parse_override

    fixed, grid = [], {}
    for text in overrides:
        key, _ = parse_override(text)
        raw = text.split("=", 1)[1]
        if "," in raw and not raw.strip().startswith("["):
            grid[key] = [parse_override(f"x={part}")[1] for part in raw.split(",")]
        else:
            fixed.append(text)
    return fixed, grid


def cmd_run(args, sweep: bool = False) -> int:
    from .config import load_config, to_yaml
    from .runs.launch import run_experiment

    overrides = list(args.overrides)
    if sweep:
        overrides, grid = _split_sweep(overrides)
        if not grid:
            raise UnderbudgetError("sweep needs at least one key=a,b,... override")
        overrides.append(f"sweep={json.dumps(grid)}")
    cfg = load_config(args.source, overrides)
    if getattr(args, "dry_run", False):
        print(to_yaml(cfg), end="")
        return 0
    path = run_experiment(cfg, args.out, force=args.force, quiet=args.quiet)
    _finish(path)
    from .report import collect

    failed = [r for r in collect([path]) if r.summary.get("status", "ok") != "ok"]
    for rec in failed:
        print(f"{rec.path}: {rec.summary.get('status')}: {rec.summary.get('message', '')}",
              file=sys.stderr)
    return 1 if failed else 0


def _finish(path: Path) -> None:
    from .report import write_report

    report_dir = path / "report"
    if not (report_dir / "report.md").exists() or (path / "summary.json").exists():
        write_report([path], report_dir)
    print(f"results: {path}")
    print(f"report:  {report_dir / 'report.md'}")


def cmd_report(args) -> int:
    from .report import write_report

    out = Path(args.out) if args.out else Path(args.paths[0]) / "report"
    result = write_report(args.paths, out)
    print((out / "report.md").read_text(encoding="utf-8"))
    print(f"report: {out / 'report.md'} ({result['runs']} runs)")
    return 0


def cmd_show(args) -> int:
    from .config import load_yaml
    from .runs import Run

    run = Run(args.path)
    if not run.config_path.exists():
        raise UnderbudgetError(f"{run.path} is not a run directory (no config.yaml)")
    cfg = load_yaml(run.config_path)
    print(f"run:     {run.path}")
    print(f"name:    {cfg.get('name')}  method: {cfg.get('method', {}).get('name')}  "
          f"seed: {cfg.get('seed')}")
    print(f"data:    {cfg.get('data', {}).get('name')}  model: {cfg.get('model', {}).get('name')}")
    summary = run.read_summary()
    if summary is None:
        state = "interrupted (will resume)" if (run.path / "checkpoint.safetensors").exists() \
            else "not finished"
        print(f"status:  {state}; {len(run.events())} events logged")
    else:
        print("summary:")
        for key, value in summary.items():
            if isinstance(value, (dict, list)):
                continue
            print(f"  {key}: {value}")
    return 0


def cmd_list(args) -> int:
    if args.what == "presets":
        from .config import list_presets, load_yaml, presets_dir

        for name in list_presets():
            doc = load_yaml(presets_dir() / f"{name}.yaml").get("description", "")
            print(f"{name:22s} {doc}")
    elif args.what == "models":
        from .models import list_models

        print("\n".join(list_models()))
    elif args.what == "datasets":
        from .data import list_datasets

        print("\n".join(list_datasets()))
    else:
        from .methods.registry import list_methods

        for name, doc in list_methods().items():
            print(f"{name:22s} {doc}")
    return 0


def cmd_demo(args) -> int:
    args.source = DEMO_PRESET
    args.dry_run = False
    args.quiet = False
    return cmd_run(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``underbudget`` console script."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides given after options (run tiny --out X seed=1)
        if not hasattr(args, "overrides") or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "sweep":
            return cmd_run(args, sweep=True)
        if args.command == "report":
            return cmd_report(args)
        if args.command == "show":
            return cmd_show(args)
        if args.command == "list":
            return cmd_list(args)
        return cmd_demo(args)
    except UnderbudgetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
