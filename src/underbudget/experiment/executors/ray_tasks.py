"""The Ray executor: one Ray task per graph task, submitted as soon as its dependencies are
done, with the task's CPU and GPU request (``resources``).

``ray.init(address=executor.ray_address)`` joins a running cluster; without an address a
local Ray instance starts (an instance already started in this process is used as it is).
On a cluster, the results root must be on a file system every node sees. Inside each Ray
task, torch uses as many threads as the task asked CPUs for.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import MissingDependencyError
from ..graph import Graph, Task
from .base import Dispatcher, Options, Outcome, died, execute_task
from .local import set_threads

INSTALL = "executor ray needs the ray extra: pip install 'underbudget[ray]'"


def require_ray():
    """The ``ray`` module, or one clear error naming the extra."""
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(INSTALL) from None
    return ray


def _ray_task(task: Task, root: str, options: Options) -> Outcome:
    set_threads(max(1, int(task.resources.get("cpus", 1) or 1)))
    return execute_task(task, root, options)


def execute(graph: Graph, root: Path, options: Options) -> dict[str, Outcome]:
    """Run ``graph`` as Ray tasks."""
    ray = require_ray()
    if not ray.is_initialized():
        ray.init(address=options.executor.ray_address or None, ignore_reinit_error=True,
                 log_to_driver=not options.quiet)
    remote = ray.remote(max_retries=0)(_ray_task)
    dispatch = Dispatcher(graph, options, slots=max(1, int(ray.cluster_resources().get("CPU", 1))))
    where = str(Path(root).resolve())
    pending: dict = {}
    try:
        while not dispatch.finished:
            for task in dispatch.take_ready():
                ref = remote.options(num_cpus=task.resources.get("cpus", 1),
                                     num_gpus=task.resources.get("gpus", 0) or 0,
                                     name=f"underbudget:{task.id}").remote(task, where, options)
                pending[ref] = task
            if not pending:
                break
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                task = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the worker died, or was cancelled
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    outcome = died(root, task, f"its Ray task died: {first}")
                dispatch.finish(task, outcome)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
    return dispatch.results()
