"""Running experiments: one run, or a sweep (a grid of child runs) with its report.

A finished run (one with ``summary.json``) is skipped when asked again; an interrupted one
resumes from its checkpoint. A sweep is a parent directory holding one child run per grid
point and the comparison report over them.

Everything a user can get wrong is checked before the first directory is created: the config
and every sweep child, the names, files and devices they use (:mod:`.preflight`), and the
runs folder. A run that still fails with such an error before it saved anything is removed.
"""

from __future__ import annotations

import hashlib
import itertools
import shutil
import sys
import time
from pathlib import Path

from ..errors import UnderbudgetError
from ..utils.atomic import clean_stale_temps
from .preflight import check_folder, preflight
from .store import Run, runs_root

MAX_SLUG = 120


def _slug(assignments: dict) -> str:
    parts = []
    for key, value in assignments.items():
        short = key.split(".")[-1]
        text = "-".join(map(str, value)) if isinstance(value, list) else str(value)
        parts.append(f"{short}-{text}")
    raw = "_".join(parts) or "run"
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in raw)
    if len(slug) > MAX_SLUG:  # file names are limited to 255 bytes
        slug = f"{slug[:MAX_SLUG - 9]}-{hashlib.sha256(slug.encode()).hexdigest()[:8]}"
    return slug


def expand_sweep(cfg) -> list[tuple[str, object]]:
    """Child configs of a sweep, one per grid point, as ``(directory name, config)``."""
    from ..config import apply_overrides, from_dict, to_dict

    keys = list(cfg.sweep)
    base = to_dict(cfg)
    base["sweep"] = {}
    children = []
    for combo in itertools.product(*(cfg.sweep[k] for k in keys)):
        assignment = dict(zip(keys, combo))
        child = from_dict(apply_overrides(base, assignment))
        children.append((_slug(assignment), child))
    return children


def check_experiment(cfg) -> list[tuple[str, object]]:
    """Validate ``cfg`` and every sweep child (config, names, files, devices) without
    creating anything; return the sweep's children (empty for a single run)."""
    children = expand_sweep(cfg) if cfg.sweep else []
    seen: set[str] = set()
    for child in [c for _, c in children] or [cfg]:
        key = repr((child.data, child.model, child.train.device, child.method))
        if key not in seen:
            seen.add(key)
            preflight(child)
    return children


def run_experiment(cfg, root: str | Path | None = None, *, force: bool = False,
                   quiet: bool = False) -> Path:
    """Run ``cfg`` (or its sweep) under ``root``; return the run directory."""
    from ..config import run_name
    from ..track import tracking

    children = check_experiment(cfg)
    root = check_folder(runs_root(root))
    path = root / run_name(cfg)
    created = not path.exists()
    clean_stale_temps(path)
    run = Run(path)
    try:
        with tracking(cfg.track, run, quiet=quiet) as trackers:  # children share the listener
            if cfg.sweep:
                path = run_sweep(cfg, root, force=force, quiet=quiet, children=children,
                                 parent=run)
            else:
                path = run_single(cfg, run, force=force, quiet=quiet)
            if trackers is not None:
                if not cfg.sweep:
                    from ..report import write_report

                    write_report([path], path / "report", options=cfg.report)
                trackers.send_plots(path / "report")
        return path
    except UnderbudgetError:
        if created:
            remove_if_unsaved(run.path)
        raise


def remove_if_unsaved(path: Path) -> bool:
    """Delete a run directory that holds no summary and no checkpoint anywhere (nothing a
    second attempt could reuse); return whether it was deleted."""
    if not path.is_dir():
        return False
    for pattern in ("summary.json", "checkpoint.safetensors"):
        if next(path.rglob(pattern), None) is not None:
            return False
    shutil.rmtree(path, ignore_errors=True)
    return True


def run_single(cfg, run: Run, *, force: bool = False, quiet: bool = False) -> Path:
    """Run one experiment in ``run`` (skip when finished, resume when interrupted)."""
    from ..config import to_dict
    from ..methods.registry import get_method
    from ..train import DivergedError, resolve_device
    from ..utils.seeding import seed_everything

    if force and run.path.exists():
        shutil.rmtree(run.path)
    if run.is_finished():
        _say(quiet, f"already finished: {run.path} (use --force to run again)")
        return run.path
    from .tree import tree_exists

    if not tree_exists(run.checkpoint_path) and run.metrics_path.exists():
        run.truncate_metrics(0)  # a start that never checkpointed: begin afresh
    method = get_method(cfg.method.name)
    run.start(config=to_dict(cfg), device=resolve_device(cfg.train.device))
    seed_everything(cfg.seed, cfg.train.deterministic)
    _say(quiet, f"run {run.path} ({cfg.method.name}, seed {cfg.seed})")
    t0 = time.perf_counter()
    try:
        summary = method.run(cfg, run) or {}
        summary.setdefault("status", "ok")
    except DivergedError as exc:
        summary = {"status": "diverged", "message": str(exc)}
    summary = {"name": cfg.name, "method": cfg.method.name, "seed": cfg.seed,
               "wall_time": time.perf_counter() - t0, **summary}
    run.write_summary(summary)
    if summary["status"] != "ok":
        _say(quiet, f"run stopped: {summary.get('message', summary['status'])}")
    return run.path


def run_sweep(cfg, root: Path, *, force: bool = False, quiet: bool = False,
              children: list | None = None, parent: Run | None = None) -> Path:
    """Run every child of a sweep under one parent directory, then write its report."""
    from ..config import run_name, to_dict
    from ..report import write_report

    children = expand_sweep(cfg) if children is None else children
    parent = parent or Run(root / run_name(cfg))
    parent.path.mkdir(parents=True, exist_ok=True)
    parent.start(config=to_dict(cfg))
    for i, (slug, child) in enumerate(children):
        _say(quiet, f"[{i + 1}/{len(children)}] {slug}")
        run_single(child, parent.child(slug), force=force, quiet=quiet)
    write_report([parent.path], parent.path / "report", options=cfg.report)
    return parent.path


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)
