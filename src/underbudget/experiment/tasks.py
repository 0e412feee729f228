"""Task kinds: what a task of each kind runs.

``run_task`` is the one entry point every executor calls (in this process, in a worker
process, a Ray task or a Slurm job): it looks up the task's kind and runs it on the results
root. A kind is a function ``fn(task, root) -> dict`` (the task's summary) registered with
:func:`register_task_kind`; the built-in kinds register themselves in :mod:`.compile`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import unknown
from .graph import Task

TaskFn = Callable[[Task, Path], dict]
_KINDS: dict[str, TaskFn] = {}


def register_task_kind(kind: str) -> Callable[[TaskFn], TaskFn]:
    """Decorator registering ``fn(task, root) -> summary`` as task kind ``kind``."""

    def wrap(fn: TaskFn) -> TaskFn:
        _KINDS[kind] = fn
        return fn

    return wrap


def task_kinds() -> list[str]:
    """Names of the registered task kinds."""
    return sorted(_KINDS)


def run_task(task: Task, root: str | Path) -> dict:
    """Run ``task`` under the results ``root``; return its summary."""
    if task.kind not in _KINDS:
        raise unknown("task kind", task.kind, _KINDS)
    return _KINDS[task.kind](task, Path(root)) or {}
