"""Compile a config into an experiment graph before anything runs.

A single run is one ``run`` task. A sweep is one ``run`` task per grid point, side by side,
and a ``report`` task that waits for all of them. Other stage kinds (sources, quantization,
transfers) are added by the compilers registered with :func:`register_compiler`: each is
asked, in order, whether it handles a config and, if so, builds that config's tasks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..config import from_dict, run_name, to_dict
from ..report import write_report
from ..runs.store import Run
from .graph import Graph, Task
from .single import run_single
from .sweep import expand_sweep
from .tasks import register_task_kind

#: ``fn(cfg, graph, path, deps) -> list of the ids of the tasks that finish cfg`` or None
#: when the compiler does not handle ``cfg``
Compiler = Callable[[object, Graph, str, list[str]], "list[str] | None"]
_COMPILERS: list[Compiler] = []


def register_compiler(fn: Compiler) -> Compiler:
    """Register a compiler that expands some configs into several stage tasks."""
    _COMPILERS.append(fn)
    return fn


def resources_of(cfg) -> dict:
    """CPU and GPU requests of a task from the config's ``resources`` (defaults 1 CPU)."""
    res = getattr(cfg, "resources", None)
    if res is None:
        return {"cpus": 1, "gpus": 0}
    return {"cpus": res.cpus, "gpus": res.gpus}


def add_config(graph: Graph, cfg, path: str, deps: list[str] | None = None,
               task_id: str | None = None, label: str = "") -> list[str]:
    """Add the task(s) of one (non-sweep) config at run directory ``path``; return the ids of
    the tasks that finish it."""
    deps = list(deps or [])
    for compiler in _COMPILERS:
        ends = compiler(cfg, graph, path, deps)
        if ends is not None:
            return ends
    task = graph.add(Task(id=task_id or path, kind="run", path=path, config=to_dict(cfg),
                          deps=deps, resources=resources_of(cfg),
                          label=label or f"{cfg.method.name} seed {cfg.seed}"))
    return [task.id]


def compile_experiment(cfg, children: list | None = None) -> Graph:
    """The graph of ``cfg``: its tasks, their run directories and dependencies."""
    top = run_name(cfg)
    graph = Graph(top)
    if not cfg.sweep:
        add_config(graph, cfg, top, task_id=top)
        return graph
    children = expand_sweep(cfg) if children is None else children
    ends: list[str] = []
    for slug, child in children:
        ends += add_config(graph, child, f"{top}/{slug}", task_id=slug, label=slug)
    graph.add(Task(id="report", kind="report", path=top, config=to_dict(cfg), deps=ends,
                   label="sweep report"))
    return graph


@register_task_kind("run")
def _run(task: Task, root: Path) -> dict:
    path = run_single(from_dict(task.config), Run(root / task.path))
    return Run(path).read_summary() or {}


@register_task_kind("report")
def _report(task: Task, root: Path) -> dict:
    if task.config.get("stage") == "report":  # a composed experiment's (see .compose)
        return _compose.write_compose_report(task.config, root)
    cfg = from_dict(task.config)
    write_report([root / task.path], root / task.path / "report", options=cfg.report)
    return {"status": "ok"}


# the stages that compose with any method (PTQ, transfer) and the D2-Sparse grid register
# their compilers and kinds
from . import compose as _compose  # noqa: E402,F401
from . import grid as _grid  # noqa: E402,F401
