"""Command line: ``underbudget run|sweep|report|show|export|list|demo``.

Every error a user can cause is one line naming the fix, exit status 2, and nothing written.
SIGTERM (what Slurm sends before preemption) stops a run like Ctrl-C: the last epoch
checkpoint is kept, the same command resumes it, and the exit status is 143 (130 for Ctrl-C).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path

from .cli_args import parser as _parser
from .config import (
    list_presets,
    load_config,
    load_yaml,
    parse_override,
    presets_dir,
    run_name,
    to_yaml,
)
from .data import list_datasets
from .errors import ConfigError, UnderbudgetError
from .experiment.compile import compile_experiment
from .experiment.launch import launch
from .experiment.sweep import check_experiment
from .export import export_run
from .methods.registry import list_methods
from .models import list_models
from .report import collect, write_report
from .report.pareto import check_pareto, write_pareto
from .runs import Run, runs_root
from .runs.headline import headline_table
from .runs.preflight import check_folder
from .runs.store import last_checkpoint
from .stages.report import compose_stages, compose_table
from .train import distributed
from .utils.atomic import clean_stale_temps

DEMO_PRESET = "app-demo"
#: command-line flags that are aliases of config keys
FLAG_KEYS = {"device": "train.device", "amp": "train.amp", "compile": "train.compile",
             "progress": "train.progress", "executor": "executor.name",
             "workers": "executor.workers", "ray_address": "executor.ray_address"}
EXIT_SIGTERM, EXIT_SIGINT, EXIT_SIGPIPE = 143, 130, 141


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled exactly like Ctrl-C (checkpoint kept, run resumable)."""


def _split_sweep(overrides: list[str]) -> tuple[list[str], dict]:
    fixed, grid = [], {}
    for text in overrides:
        key, _ = parse_override(text)
        raw = text.split("=", 1)[1]
        if "," in raw and not raw.strip().startswith("["):
            parts = raw.split(",")
            if any(not part.strip() for part in parts):
                raise ConfigError(f"{text}: a swept value is empty; list the values like "
                                  f"{key}=a,b,c")
            grid[key] = [parse_override(f"x={part}")[1] for part in parts]
        else:
            fixed.append(text)
    return fixed, grid


def _flag_overrides(args, overrides: list[str]) -> list[str]:
    """The platform flags as ``key=value`` overrides (refusing a key also given as one)."""
    given = {text.split("=", 1)[0].strip() for text in overrides if "=" in text}
    out = []
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value is None:
            continue
        if key in given:
            raise ConfigError(f"--{flag.replace('_', '-')} and {key}=... both set {key}; "
                              "keep one")
        out.append(f"{key}={json.dumps(value) if isinstance(value, bool) else value}")
    return out


def cmd_run(args, sweep: bool = False) -> int:
    overrides = list(args.overrides)
    if sweep:
        overrides, grid = _split_sweep(overrides)
        if not grid:
            raise UnderbudgetError("sweep needs at least one key=a,b,... override")
        overrides.append(f"sweep={json.dumps(grid)}")
    overrides += _flag_overrides(args, overrides)
    cfg = load_config(args.source, overrides)
    planned = runs_root(args.out) / run_name(cfg)
    if getattr(args, "dry_run", False):
        graph = compile_experiment(cfg, check_experiment(cfg))
        check_folder(planned.parent)
        print(to_yaml(cfg), end="")
        print("".join(f"# {line}\n" for line in graph.describe().splitlines()), end="")
        print(f"config ok; it would run in {planned}", file=sys.stderr)
        return 0

    out, quiet = args.out, args.quiet
    if distributed.init_from_env(cfg.train.device):  # torchrun: one run on several ranks
        out, cfg = distributed.launch_root(cfg, args.out, planned)
        quiet = quiet or not distributed.is_main_process()
    try:
        result = launch(cfg, out, force=args.force, quiet=quiet,
                        on_locked="skip" if getattr(args, "skip_locked", False) else "wait")
    except KeyboardInterrupt as exc:
        return _stopped(exc, planned)
    finally:
        distributed.drop_private_root()
    if len(result.graph.tasks) == 1:  # a user's error in a single run: one line, status 2
        for outcome in result.failed.values():
            if isinstance(outcome.error, UnderbudgetError):
                raise outcome.error
    if not distributed.is_main_process():
        return 1 if result.failed else 0  # rank 0 writes and prints the results
    path = result.path
    if path.is_dir():
        _finish(path)
    if result.failed or result.skipped:
        _tell_failures(result, args)
    if result.failed:
        return 1

    failed = [r for r in collect([path]) if r.summary.get("status", "ok") != "ok"]
    for rec in failed:
        print(f"{rec.path}: {rec.summary.get('status')}: {rec.summary.get('message', '')}",
              file=sys.stderr)
    return 1 if failed else 0


def _tell_failures(result, args) -> None:
    """List what failed or was skipped, and the command that retries only the failures."""
    import shlex

    print(result.failure_text(), file=sys.stderr)
    if result.failed:
        argv = [a for a in getattr(args, "argv", sys.argv[1:]) if a != "--force"]
        print("retry with the same command: finished runs are skipped, so it runs only "
              "what failed or was skipped:\n  " + shlex.join(["underbudget", *argv]),
              file=sys.stderr)


def _stopped(exc: KeyboardInterrupt, planned: Path) -> int:
    """Say where an interrupted run stopped and how to resume it; return the exit status."""

    how = "SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C (SIGINT)"
    found = last_checkpoint(planned)
    if found is None:
        where = f"before the first checkpoint of {planned}"
    else:
        folder, pos = found
        where = (f"at stage {pos['stage']}, epoch {pos['epoch']} (checkpoint kept in {folder})"
                 if not pos.get("stage_done") else
                 f"after stage {pos['stage']} (checkpoint kept in {folder})")
    print(f"stopped by {how} {where}; run the same command to resume", file=sys.stderr)
    return EXIT_SIGTERM if isinstance(exc, Terminated) else EXIT_SIGINT


def _headline(path: Path) -> str:
    records = collect([path])
    return headline_table([(str(r.path.relative_to(path)) if r.path != path else r.path.name,
                            r.summary) for r in records])


def _composed_tables(path: Path) -> str | None:
    """The table of the composed experiment at ``path``, or those of a sweep's composed
    children one after the other (None when there is none)."""
    if (path / "summary.json").exists():
        return None
    own = compose_table(path)
    if own is not None:
        return own
    kids = [(c.name, compose_table(c)) for c in sorted(path.iterdir())
            if c.is_dir() and c.name not in ("stages", "report")]
    return "\n\n".join(f"{name}:\n{table}" for name, table in kids if table) or None


def _finish(path: Path) -> None:
    report_dir = path / "report"
    composed = _composed_tables(path)
    if composed is None and (not (report_dir / "report.md").exists()
                             or (path / "summary.json").exists()):
        write_report([path], report_dir)
    table = composed if composed is not None else _headline(path)
    if table:
        print(table)
    print(f"results: {path}")
    print(f"report:  {report_dir / 'report.md'}")


def _composed_stages(args) -> bool:
    """Replace a composed experiment's folder in ``args.paths`` (it holds only its report)
    by its stage directories; True when the first path was one."""

    paths, first = [], False
    for i, raw in enumerate(args.paths):
        found = None if (Path(raw) / "summary.json").exists() else compose_stages(raw)
        paths += [str(p) for p in found if p.is_dir()] if found else [raw]
        first = first or (i == 0 and bool(found))
    args.paths = paths
    return first


def cmd_report(args) -> int:
    for raw in args.paths:
        path = Path(raw)
        if not path.exists():
            raise ConfigError(f"no run or folder at {raw}; give a run directory or a folder "
                              "of runs")
        if not path.is_dir():
            raise ConfigError(f"{raw} is a file; give a run directory or a folder of runs")
    first = Path(args.paths[0])
    composed = _composed_stages(args)
    if not collect(args.paths):
        raise ConfigError(f"no finished run at or below {', '.join(args.paths)} (a finished "
                          "run has summary.json); run one first, or give another folder")
    if args.out is not None and not args.out.strip():
        raise ConfigError("--out is empty; name the report folder, or leave --out out for "
                          "<first path>/report")
    if args.metric is not None and args.pareto is None:
        raise ConfigError("--metric goes with --pareto AXIS (e.g. --pareto train_flops)")
    if args.pareto is not None:

        check_pareto(args.pareto, args.metric or "accuracy")
    out = Path(args.out) if args.out else first / "report"
    if args.out is None and composed:  # the composed experiment's own report stays
        out = out / "stages"
    check_folder(out, "the report folder")
    clean_stale_temps(out)
    result = write_report(args.paths, out)
    print((out / "report.md").read_text(encoding="utf-8"))
    print(f"report: {out / 'report.md'} ({result['runs']} runs)")
    if args.pareto is not None:

        write_pareto(args.paths, out, args.pareto, args.metric or "accuracy")
        print(f"pareto: {out / 'pareto.md'}, {out / 'pareto.png'}")
    return 0


def cmd_show(args) -> int:
    run = Run(args.path)
    if not run.config_path.exists():
        raise UnderbudgetError(f"{run.path} is not a run directory (no config.yaml)")
    cfg = load_yaml(run.config_path)
    print(f"run:     {run.path}")
    print(f"name:    {cfg.get('name')}  method: {cfg.get('method', {}).get('name')}  "
          f"seed: {cfg.get('seed')}")
    print(f"data:    {cfg.get('data', {}).get('name')}  model: {cfg.get('model', {}).get('name')}")
    summary = run.read_summary()
    composed = _composed_tables(run.path) if (run.path / "graph.json").exists() else None
    table = composed or _headline(run.path)
    if composed is not None:
        tasks = len(json.loads((run.path / "graph.json").read_text())["tasks"])
        print(f"status:  composed experiment of {tasks} task(s); report in "
              f"{run.path / 'report' / 'report.md'}")
    elif summary is None and cfg.get("sweep") and table:
        print(f"status:  sweep; {len(table.splitlines()) - 1} finished run(s) below")
    elif summary is None:
        state = "interrupted (will resume)" if (run.path / "checkpoint.safetensors").exists() \
            else "not finished"
        print(f"status:  {state}; {len(run.events())} events logged")
    if table:
        print(table)
    if summary is not None:
        print("summary:")
        for key, value in summary.items():
            if isinstance(value, (dict, list)):
                continue
            print(f"  {key}: {value}")
    return 0


def cmd_export(args) -> int:
    result = export_run(args.run, args.out)
    print(f"export: {result.out}")
    dense = result.sizes["dense"]
    for form, size in result.sizes.items():
        print(f"  {form:10s} {result.files[form].name:24s} {size:>12,d} bytes  "
              f"{size / dense:6.1%} of dense")
    print(f"card:   {result.out / 'model_card.md'}")
    return 0


def cmd_list(args) -> int:
    if args.what == "presets":

        for name in list_presets():
            doc = load_yaml(presets_dir() / f"{name}.yaml").get("description", "")
            print(f"{name:22s} {doc}")
    elif args.what == "models":

        print("\n".join(list_models()))
    elif args.what == "datasets":

        print("\n".join(list_datasets()))
    else:

        for name, doc in list_methods().items():
            print(f"{name:22s} {doc}")
    return 0


def cmd_demo(args) -> int:
    args.source = DEMO_PRESET
    args.dry_run = False
    args.quiet = False
    return cmd_run(args)


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup
    raise Terminated()


@contextlib.contextmanager
def _sigterm_stops_cleanly():
    """While a command runs, SIGTERM raises :class:`Terminated` (in the main thread only)."""
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


COMMANDS = {"run": cmd_run, "sweep": lambda a: cmd_run(a, sweep=True), "report": cmd_report,
            "show": cmd_show, "export": cmd_export, "list": cmd_list, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``underbudget`` console script."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if extra:  # overrides given after options (run tiny --out X seed=1)
        if not hasattr(args, "overrides") or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    try:
        with _sigterm_stops_cleanly():
            return COMMANDS[args.command](args)
    except UnderbudgetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return EXIT_SIGTERM if isinstance(exc, Terminated) else EXIT_SIGINT
    except BrokenPipeError:  # the output went into `head` or similar, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_SIGPIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
