"""Running one run: skipped when finished, resumed when interrupted, retried when failed.

A run directory is locked while it runs (:mod:`underbudget.runs.lock`). The ``run`` task kind
and every executor end here; so does a stage that runs a run directory.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ..config import to_dict
from ..methods.registry import get_method
from ..report.costs import run_costs
from ..runs.failures import forget_failure
from ..runs.lock import clear_run_dir, hold_run
from ..runs.store import Run
from ..runs.tree import tree_exists
from ..train import DivergedError, resolve_device
from ..utils.seeding import seed_everything

__all__ = ["run_single", "quiet_runs", "sharing_listeners"]


def run_single(cfg, run: Run, *, force: bool = False, quiet: bool | None = None,
               wait: bool | None = None) -> Path:
    """Run one experiment in ``run`` (skip when finished, resume when interrupted).

    The run directory is locked while it runs; a second launcher waits for the holder (one
    line says who it is) and then finds the run finished, or, with ``wait=False`` (or the
    ``skip`` policy), raises :class:`~underbudget.runs.lock.RunLocked`. A run that failed
    before (``summary.json`` with status ``failed``) is retried, from its last checkpoint.
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
    if run.is_finished():
        _say(quiet, f"already finished: {run.path} (use --force to run again)")
        return run.path
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
    summary["costs"] = run_costs(summary, to_dict(cfg), run.path)
    run.write_summary(summary)
    if summary["status"] != "ok":
        _say(quiet, f"run stopped: {summary.get('message', summary['status'])}")
    return run.path


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


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


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
