"""Launching an experiment: checks, the compiled graph, an executor, and what became of it.

:func:`launch` checks the config and every sweep child (nothing is created when one is
wrong), compiles the experiment graph, and hands it to the executor the config names
(``executor.name``: serial by default, in this process). The directory of a sweep or of a
composed experiment gets its config and ``graph.json`` (the compiled graph) before the tasks
start. Finished runs are skipped, interrupted ones resume, failed
ones are retried, so the same command after a failure runs only what is left.
:func:`run_experiment` is the same, raising when a task failed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..config import to_dict
from ..errors import UnderbudgetError
from ..report import write_report
from ..runs.failures import remove_if_unsaved
from ..runs.lock import clear_run_dir, hold_run
from ..runs.preflight import check_folder
from ..runs.store import Run, runs_root
from ..track import tracking
from ..utils.atomic import clean_stale_temps, write_json
from .compile import compile_experiment
from .executors import DONE, FAILED, SKIPPED, Options, Outcome, execute
from .graph import Graph
from .single import run_single, sharing_listeners
from .sweep import check_experiment

__all__ = ["ExperimentFailed", "Launch", "launch", "run_experiment", "run_single",
           "run_sweep"]


class ExperimentFailed(UnderbudgetError):
    """Some tasks of an experiment failed (the others ran); rerunning retries only them."""

    def __init__(self, result: Launch):
        self.result = result
        super().__init__(result.failure_text())


@dataclass
class Launch:
    """An executed experiment: its directory, graph and every task's outcome."""

    root: Path
    path: Path
    graph: Graph
    outcomes: dict[str, Outcome] = field(default_factory=dict)

    def with_status(self, status: str) -> dict[str, Outcome]:
        return {k: o for k, o in self.outcomes.items() if o.status == status}

    @property
    def failed(self) -> dict[str, Outcome]:
        return self.with_status(FAILED)

    @property
    def skipped(self) -> dict[str, Outcome]:
        return self.with_status(SKIPPED)

    @property
    def ok(self) -> bool:
        return all(o.status == DONE for o in self.outcomes.values())

    def failure_text(self) -> str:
        """What failed and what was skipped, one task a line."""
        lines = [f"{len(self.failed)} of {len(self.outcomes)} task(s) failed:"]
        for task_id, outcome in self.failed.items():
            task = self.graph.tasks[task_id]
            log = self.root / task.path / ("report" if task.kind == "report" else "") / "error.log"
            lines.append(f"  {task_id}: {outcome.reason} (traceback in {log})")
        for task_id, outcome in self.skipped.items():
            lines.append(f"  {task_id}: {outcome.reason}")
        return "\n".join(lines)

    def raise_for_failures(self) -> None:
        """Raise the error of the first failed task (when it travelled back here), else
        :class:`ExperimentFailed`."""
        for outcome in self.failed.values():
            if outcome.error is not None:
                raise outcome.error
        if self.failed:
            raise ExperimentFailed(self)


class _TasksFailed(Exception):
    """Leaves the tracking block so trackers close their runs as failed."""


def _clear_for_force(graph: Graph, root: Path) -> None:
    """``--force``: empty every run directory of the graph (each under its lock)."""
    for task in graph.order():
        if task.kind != "report" and (root / task.path).is_dir():
            with hold_run(root / task.path):
                clear_run_dir(root / task.path)


def launch(cfg, root: str | Path | None = None, *, force: bool = False, quiet: bool = False,
           on_locked: str = "wait") -> Launch:
    """Run ``cfg`` (or its sweep) under ``root`` on the config's executor; a task's failure
    does not raise (see :attr:`Launch.failed`), an error in the config does."""
    children = check_experiment(cfg)
    graph = compile_experiment(cfg, children)
    root = check_folder(runs_root(root))
    path = root / graph.path
    created = not path.exists()
    clean_stale_temps(path)
    top = Run(path)
    options = Options(executor=cfg.executor, quiet=quiet, on_locked=on_locked)
    if cfg.track.backends and cfg.executor.name != "serial" and not quiet:
        print(f"note: trackers mirror the runs of the serial executor only; with "
              f"{cfg.executor.name} the run directories hold the record", file=sys.stderr)
    outcomes: dict[str, Outcome] = {}
    try:
        with tracking(cfg.track, top, quiet=quiet) as trackers:
            if force:
                _clear_for_force(graph, root)
            if cfg.sweep or len(graph.tasks) > 1:  # a sweep's or a composed experiment's
                top.start(config=to_dict(cfg))
                write_json(path / "graph.json", graph.to_dict())
            with sharing_listeners(top):
                outcomes = execute(graph, root, options)
            if any(o.status == FAILED for o in outcomes.values()):
                raise _TasksFailed
            if trackers is not None:
                if not cfg.sweep:
                    write_report([path], path / "report", options=cfg.report)
                trackers.send_plots(path / "report")
    except _TasksFailed:
        pass
    except UnderbudgetError:
        if created:
            remove_if_unsaved(path)
        raise
    result = Launch(root, path, graph, outcomes)
    if created and not cfg.sweep and any(isinstance(o.error, UnderbudgetError)
                                         for o in result.failed.values()):
        remove_if_unsaved(path)  # a user's error before anything was saved leaves nothing
    return result


def run_experiment(cfg, root: str | Path | None = None, *, force: bool = False,
                   quiet: bool = False) -> Path:
    """Run ``cfg`` (or its sweep) under ``root``; return the run directory. When a task
    fails, the others still run, then its error is raised."""
    result = launch(cfg, root, force=force, quiet=quiet)
    result.raise_for_failures()
    return result.path


def run_sweep(cfg, root: str | Path | None = None, *, force: bool = False,
              quiet: bool = False) -> Path:
    """Run every child of a sweep under one parent directory, then its report."""
    return run_experiment(cfg, root, force=force, quiet=quiet)
