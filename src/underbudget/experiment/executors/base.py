"""What every executor shares: the options, a task's outcome, running one task wherever it
runs (:func:`execute_task`), and the bookkeeping of a graph in flight (:class:`Dispatcher`).

A task starts only when every task it depends on is done. A task that raises is recorded in
its run directory (``summary.json`` with status ``failed``, the traceback in ``error.log``),
retried ``executor.retries`` times, and then its dependents are skipped while the rest of the
graph goes on. A run locked by another launcher is waited for, or skipped with the ``skip``
policy (then its dependents are skipped too: that launcher runs them).
"""

from __future__ import annotations

import os
import pickle
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from ...runs.failures import record_failure
from ...runs.lock import RunLocked, hold_run, lock_policy
from ...runs.store import Run
from ...sections import ExecutorConfig
from ...utils.atomic import write_text
from .. import compile as _kinds  # noqa: F401  (registers the task kinds in every process)
from ..graph import Graph, Task
from ..progress import Progress
from ..single import quiet_runs
from ..tasks import run_task

DONE, FAILED, SKIPPED = "done", "failed", "skipped"


@dataclass
class Options:
    """How a graph is executed (plain data: it travels to worker processes and jobs)."""

    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    quiet: bool = False
    on_locked: str = "wait"  # wait | skip: a run another launcher is running


@dataclass
class Outcome:
    """What became of one task."""

    status: str  # done | failed | skipped
    reason: str = ""  # one line for failed and skipped tasks
    seconds: float = 0.0
    summary: dict = field(default_factory=dict)
    error: BaseException | None = None  # the exception, when it could travel back
    host: str = ""

    @property
    def ok(self) -> bool:
        return self.status == DONE


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def failure_dir(root: Path, task: Task) -> Path:
    """Where a failure of ``task`` is recorded (a report's in its report folder)."""
    return root / task.path / ("report" if task.kind == "report" else "")


def record_task_failure(root: Path, task: Task, reason: str, details: str) -> None:
    """Record a failure of ``task`` in its directory, unless another launcher holds the run
    now (it is running it again)."""
    folder = failure_dir(Path(root), task)
    info = {"task": task.id, "kind": task.kind, "name": task.config.get("name"),
            "method": m.get("name") if isinstance(m := task.config.get("method"), dict)
            else m,  # a transfer stage names its method as text
            "seed": task.config.get("seed")}
    if task.kind == "report":  # the sweep's directory is not a run: a log only
        write_text(folder / "error.log", details)
        return
    try:
        with hold_run(folder, wait=False):
            record_failure(Run(folder), reason, details, info)
    except RunLocked:
        pass


def _travels(exc: BaseException) -> BaseException | None:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return None


def execute_task(task: Task, root: str | Path, options: Options) -> Outcome:
    """Run ``task`` here and say what became of it (never raises for a task's own error;
    Ctrl-C, SIGTERM and exits go through)."""
    t0 = time.perf_counter()
    host = os.uname().nodename
    try:
        with lock_policy(options.on_locked), quiet_runs(options.quiet):
            summary = run_task(task, root)
    except RunLocked as exc:
        return Outcome(SKIPPED, f"skipped: {exc}", time.perf_counter() - t0, host=host)
    except Exception as exc:
        reason = one_line(exc)
        record_task_failure(Path(root), task, reason, traceback.format_exc())
        return Outcome(FAILED, reason, time.perf_counter() - t0, error=_travels(exc), host=host)
    return Outcome(DONE, "", time.perf_counter() - t0, summary=dict(summary or {}), host=host)


def died(root: Path, task: Task, why: str) -> Outcome:
    """The outcome of a task whose process or job died without a word (recorded here)."""
    record_task_failure(root, task, why, why + "\n")
    return Outcome(FAILED, why)


class Dispatcher:
    """The state of a graph in flight: which tasks are ready, running, done, failed or
    skipped; retries; progress lines."""

    def __init__(self, graph: Graph, options: Options, slots: int = 1):
        self.graph = graph
        self.order = graph.order()  # validates deps and cycles
        self.options = options
        self.state = {t.id: "pending" for t in self.order}
        self.outcomes: dict[str, Outcome] = {}
        self.attempts: dict[str, int] = {t.id: 0 for t in self.order}
        self.progress = Progress(len(self.order), quiet=options.quiet, slots=slots)

    def take_ready(self, limit: int | None = None) -> list[Task]:
        """Tasks whose dependencies are all done (at most ``limit``), marked running."""
        out = []
        for t in self.order:
            if limit is not None and len(out) >= limit:
                break
            if self.state[t.id] == "pending" and all(self.state[d] == DONE for d in t.deps):
                self.state[t.id] = "running"
                self.attempts[t.id] += 1
                self.progress.started(t.id)
                out.append(t)
        return out

    def finish(self, task: Task, outcome: Outcome) -> bool:
        """Take ``task``'s outcome; return True when it is to be tried again (retries)."""
        if outcome.status == FAILED and self.attempts[task.id] <= self.options.executor.retries:
            self.state[task.id] = "pending"
            self.progress.retrying(task.id, outcome.reason)
            return True
        self.state[task.id] = outcome.status
        self.outcomes[task.id] = outcome
        self.progress.finished(task.id, outcome.status, outcome.seconds)
        if outcome.status != DONE:
            why = "failed" if outcome.status == FAILED else "was left to another launcher"
            for dep in self.graph.dependents(task.id):
                if self.state[dep] == "pending":
                    self.state[dep] = SKIPPED
                    self.outcomes[dep] = Outcome(SKIPPED, f"skipped: {task.id} {why}")
                    self.progress.finished(dep, SKIPPED, 0.0)
        return False

    @property
    def running(self) -> list[str]:
        return [i for i, s in self.state.items() if s == "running"]

    @property
    def finished(self) -> bool:
        return all(s not in ("pending", "running") for s in self.state.values())

    def results(self) -> dict[str, Outcome]:
        """Outcomes in the graph's order (every task has one once :attr:`finished`)."""
        return {t.id: self.outcomes[t.id] for t in self.order if t.id in self.outcomes}
