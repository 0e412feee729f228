"""Executors: run an experiment graph serially, on local worker processes, on Ray or on
Slurm (submitit).

Each executor module has one function ``execute(graph, root, options) -> {task id:
Outcome}``; every one dispatches :func:`underbudget.experiment.tasks.run_task` through
:func:`.base.execute_task` and starts a task only when all its dependencies are done. Ray and
submitit are optional extras, imported only by their executor.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ...errors import unknown
from ...sections import EXECUTORS
from ..graph import Graph
from .base import DONE, FAILED, SKIPPED, Options, Outcome, execute_task

MODULES = {"serial": "serial", "local": "local", "ray": "ray_tasks", "slurm": "slurm"}

__all__ = ["DONE", "EXECUTORS", "FAILED", "SKIPPED", "Options", "Outcome", "execute",
           "execute_task"]


def execute(graph: Graph, root: str | Path, options: Options) -> dict[str, Outcome]:
    """Run ``graph`` under the results ``root`` with ``options.executor.name``."""
    name = options.executor.name
    if name not in MODULES:
        raise unknown("executor (executor.name)", name, MODULES)
    module = importlib.import_module(f"{__name__}.{MODULES[name]}")
    return module.execute(graph, Path(root), options)
