"""The callable a Slurm job runs: one graph task, requeued when preempted or timed out.

It is a ``submitit.helpers.Checkpointable``: on the signal Slurm (or submitit's local
executor) sends before a timeout or a preemption, submitit calls :meth:`GraphJob.checkpoint`
and requeues the job; the requeued job runs the task again, and the run resumes from its own
last epoch checkpoint (runs resume from ``checkpoint.safetensors`` whenever they are rerun).
This module imports submitit; :mod:`.slurm` imports it only once submitit is known present.
"""

from __future__ import annotations

import os
from pathlib import Path

import submitit

from ..graph import Task
from .base import Options, Outcome, execute_task
from .local import set_threads


class GraphJob(submitit.helpers.Checkpointable):
    """Run one task of an experiment graph as a submitit job."""

    def __init__(self, task: Task, root: str, options: Options):
        self.task = task
        self.root = root
        self.options = options

    def __call__(self) -> Outcome:
        cpus = os.environ.get("SLURM_CPUS_PER_TASK") or self.task.resources.get("cpus", 1)
        set_threads(max(1, int(cpus or 1)))
        return execute_task(self.task, Path(self.root), self.options)

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Resubmit the same task: the run's own checkpoint holds the progress."""
        return submitit.helpers.DelayedSubmission(GraphJob(self.task, self.root, self.options))
