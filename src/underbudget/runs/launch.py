"""Running one run, and the checks and grid expansion before an experiment runs.

A finished run (one with ``summary.json``) is skipped when asked again; an interrupted one
resumes from its checkpoint; a failed one (status ``failed``, traceback in ``error.log``) is
retried. A run directory is locked while it runs (:mod:`.lock`). A sweep is a parent
directory holding one child run per grid point and the comparison report over them.

Everything a user can get wrong is checked before the first directory is created: the config
and every sweep child, the names, files and devices they use (:mod:`.preflight`). Running
the whole experiment (compiled into a graph, dispatched by an executor) is
:mod:`underbudget.experiment.launch`; ``run_experiment`` is importable from here too.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ..utils.atomic import write_json, write_text
from .lock import clear_run_dir, hold_run
from .preflight import preflight
from .store import Run

#: status of a run whose task raised; it is retried when asked again
FAILED = "failed"
ERROR_LOG = "error.log"

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


def remove_if_unsaved(path: Path) -> bool:
    """Delete a run directory that holds no summary and no checkpoint anywhere (nothing a
    second attempt could reuse); return whether it was deleted."""
    if not path.is_dir():
        return False
    if next(path.rglob("checkpoint.safetensors"), None) is not None:
        return False
    for summary in path.rglob("summary.json"):
        if not is_failed(Run(summary.parent)):
            return False
    shutil.rmtree(path, ignore_errors=True)
    return True


def run_single(cfg, run: Run, *, force: bool = False, quiet: bool | None = None,
               wait: bool | None = None) -> Path:
    """Run one experiment in ``run`` (skip when finished, resume when interrupted).

    The run directory is locked while it runs (:mod:`.lock`); a second launcher waits for the
    holder (one line says who it is) and then finds the run finished, or, with ``wait=False``
    (or the ``skip`` policy), raises :class:`~.lock.RunLocked`. A run that failed before
    (``summary.json`` with status ``failed``) is retried, from its last checkpoint.
    ``quiet`` None follows :func:`quiet_runs`.
    """
    if quiet is None:
        quiet = _QUIET[-1]
    with hold_run(run.path, wait=wait, on_wait=lambda line: _say(False, line)):
        if force:
            clear_run_dir(run.path)
        else:
            forget_failure(run)
        if not run.listeners:
            run.listeners = _shared_listeners(run.path)
        return _run_locked(cfg, run, quiet)


def _run_locked(cfg, run: Run, quiet: bool) -> Path:
    from ..config import to_dict
    from ..methods.registry import get_method
    from ..train import DivergedError, resolve_device
    from ..utils.seeding import seed_everything

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
    from ..report.costs import run_costs
    summary["costs"] = run_costs(summary, to_dict(cfg), run.path)
    run.write_summary(summary)
    if summary["status"] != "ok":
        _say(quiet, f"run stopped: {summary.get('message', summary['status'])}")
    return run.path


# ------------------------------------------------------------------------------ failures
def is_failed(run: Run) -> bool:
    """Whether ``run`` holds the record of a failure (status ``failed``; retried on rerun)."""
    try:
        return (run.read_summary() or {}).get("status") == FAILED
    except (OSError, ValueError):
        return False


def record_failure(run: Run, reason: str, details: str, info: dict | None = None) -> None:
    """Record in ``run`` that it failed: ``summary.json`` with status ``failed`` and the one-line
    ``reason``, ``details`` (a traceback) in ``error.log``. The resume checkpoint is kept, and
    a rerun retries the run (see :func:`forget_failure`); a finished run is left alone."""
    if run.is_finished() and not is_failed(run):
        return
    write_text(run.path / ERROR_LOG, details if details.endswith("\n") else details + "\n")
    write_json(run.summary_path, {**(info or {}), "status": FAILED, "message": reason,
                                  "error_log": ERROR_LOG})


def forget_failure(run: Run) -> bool:
    """Drop the record of an earlier failure so the run is tried again; return whether there
    was one."""
    if not is_failed(run):
        return False
    run.summary_path.unlink(missing_ok=True)
    (run.path / ERROR_LOG).unlink(missing_ok=True)
    return True


# ------------------------------------------------------------------------------ messages
_QUIET = [False]


@contextlib.contextmanager
def quiet_runs(quiet: bool) -> Iterator[None]:
    """While the block runs, :func:`run_single` without an explicit ``quiet`` uses this one
    (executors set it around each task from the launcher's ``--quiet``)."""
    _QUIET.append(bool(quiet))
    try:
        yield
    finally:
        _QUIET.pop()


# ------------------------------------------------------------------------------ listeners
_SHARED: list[Run] = []


@contextlib.contextmanager
def sharing_listeners(top: Run) -> Iterator[None]:
    """While the block runs, a run at or below ``top`` started by :func:`run_single` without
    listeners of its own gets ``top``'s (experiment trackers, in this process)."""
    _SHARED.append(top)
    try:
        yield
    finally:
        _SHARED.remove(top)


def _shared_listeners(path: Path) -> list:
    here = path.resolve()
    for top in reversed(_SHARED):
        base = top.path.resolve()
        if here == base or base in here.parents:
            return list(top.listeners)
    return []


def __getattr__(name: str):
    """``run_experiment`` and ``run_sweep`` live in :mod:`underbudget.experiment.launch`."""
    if name in ("run_experiment", "run_sweep"):
        from ..experiment import launch

        return getattr(launch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)
