"""The Slurm executor (through submitit): one job per graph task.

The tasks that are ready together (and ask for the same resources) go in one job array
(``executor.submit_array``, at most ``slurm.array_parallelism`` running at once). A task's
dependents are submitted by this process once the task's job has finished well, not with
Slurm's ``--dependency=afterok``: a task that fails or is skipped then never leaves a job
waiting forever in the queue, and the retries and skips follow one rule on every executor.

A job that is preempted or reaches its time limit is requeued by submitit (the job is a
``Checkpointable``, see :mod:`.slurm_job`) and its run resumes from its last epoch
checkpoint. A job that dies without a word (killed, node failure) is submitted again, up to
``slurm.max_requeue`` times, and resumes the same way. This process polls the jobs until
the graph is done; Ctrl-C cancels the jobs still queued or running.

``slurm.extra`` holds further submitit parameters (``qos``, ``account``, ``constraint`` ...,
given to Slurm as ``slurm_<key>``) and two keys of its own: ``cluster`` (``local`` runs the
jobs as processes of this machine through submitit's local executor, ``debug`` in this
process; default: Slurm when ``sbatch`` is there) and ``poll_s`` (seconds between polls).
"""

from __future__ import annotations

import time
from pathlib import Path

from ...errors import ConfigError, MissingDependencyError, unknown
from ..graph import Graph, Task
from .base import Dispatcher, Options, Outcome, died

INSTALL = "executor slurm needs the slurm extra: pip install 'underbudget[slurm]'"
CLUSTERS = ("slurm", "local", "debug")
PREFIXES = tuple(f"{c}_" for c in CLUSTERS)


def require_submitit():
    """The ``submitit`` module, or one clear error naming the extra."""
    try:
        import submitit
    except ImportError:
        raise MissingDependencyError(INSTALL) from None
    return submitit


def _executor(graph: Graph, root: Path, options: Options):
    submitit = require_submitit()
    s = options.executor.slurm
    extra = dict(s.extra)
    cluster = extra.pop("cluster", None)
    if cluster is not None and cluster not in CLUSTERS:
        raise unknown("executor.slurm.extra.cluster", cluster, CLUSTERS)
    poll_s = float(extra.pop("poll_s", 0.5 if cluster in ("local", "debug") else 15.0))
    folder = Path(s.folder) if s.folder else root / graph.path / "slurm"
    try:
        ex = submitit.AutoExecutor(folder=folder, cluster=cluster,
                                   slurm_max_num_timeout=s.max_requeue,
                                   local_max_num_timeout=s.max_requeue)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"executor slurm: {exc} (set executor.slurm.extra.cluster=local to "
                          "run the jobs on this machine)") from None
    params = {"timeout_min": s.time_min, "name": f"underbudget-{Path(graph.path).name}",
              "slurm_partition": s.partition, "mem_gb": s.mem_gb,
              "slurm_array_parallelism": s.array_parallelism}
    params.update({k if k.startswith(PREFIXES) else f"slurm_{k}": v for k, v in extra.items()})
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return ex, poll_s


def _submit(ex, tasks: list[Task], root: Path, options: Options) -> list:
    """Submit ``tasks`` (one array per resource request); return their jobs, in order."""
    from .slurm_job import GraphJob

    s = options.executor.slurm
    groups: dict[tuple, list[Task]] = {}
    for task in tasks:
        key = (task.resources.get("cpus", 1), task.resources.get("gpus", 0))
        groups.setdefault(key, []).append(task)
    jobs = {}
    for (cpus, gpus), group in groups.items():
        ex.update_parameters(cpus_per_task=s.cpus_per_task or cpus,
                             gpus_per_node=s.gpus_per_node if s.gpus_per_node is not None
                             else gpus)
        where = str(root.resolve())
        for task, job in zip(group, ex.submit_array([GraphJob(t, where, options)
                                                     for t in group])):
            jobs[task.id] = job
    return [jobs[t.id] for t in tasks]


def execute(graph: Graph, root: Path, options: Options) -> dict[str, Outcome]:
    """Run ``graph`` as submitit jobs, polling until every task has an outcome."""
    ex, poll_s = _executor(graph, root, options)
    limit = options.executor.slurm.max_requeue
    dispatch = Dispatcher(graph, options, slots=options.executor.slurm.array_parallelism)
    running: dict[str, tuple[Task, object]] = {}
    relaunched: dict[str, int] = {}
    try:
        while not dispatch.finished:
            ready = dispatch.take_ready()
            for task, job in zip(ready, _submit(ex, ready, root, options) if ready else []):
                running[task.id] = (task, job)
            if not running:
                break
            moved = False
            for task_id, (task, job) in list(running.items()):
                if not job.done():
                    continue
                moved = True
                try:
                    outcome = job.result()
                except Exception as exc:  # the job itself died: submit it again
                    if relaunched.get(task_id, 0) < limit:
                        relaunched[task_id] = relaunched.get(task_id, 0) + 1
                        running[task_id] = (task, _submit(ex, [task], root, options)[0])
                        continue
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    outcome = died(root, task, f"its job {job.job_id} died: {first[:300]} "
                                               f"(job log: {job.paths.stderr})")
                running.pop(task_id)
                dispatch.finish(task, outcome)
            if not moved:
                time.sleep(poll_s)
    except BaseException:
        for _, job in running.values():
            job.cancel(check=False)
        raise
    return dispatch.results()
