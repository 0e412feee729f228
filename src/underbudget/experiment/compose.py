"""Compile configs whose constraints add stages after the source: PTQ and transfer.

A config with ``transfer.target`` set or ``precision.mode: ptq`` (any method but
``compress_transfer``, which transfers its own variants) becomes::

    source (kind run) -> quantize (PTQ, each deployed model) -> transfer (each model x
    method x budget x seed) -> report (at the experiment's directory)

The ``report`` kind writes a composed experiment's report with
:func:`underbudget.stages.write_compose_report`.

The stages and their directories are planned by :func:`underbudget.stages.plan_stages`
(see :mod:`underbudget.stages.plan` for the directory rule); tasks are keyed by directory,
so two configs sharing a stage share its task.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..stages import composes, plan_stages, run_quantize, run_transfer, write_compose_report
from .compile import register_compiler, resources_of
from .graph import Graph, Task
from .tasks import register_task_kind

__all__ = ["compile_composed", "write_compose_report"]


@register_compiler
def compile_composed(cfg, graph: Graph, path: str, deps: list[str]) -> list[str] | None:
    """The tasks of a composed config (None when ``cfg`` asks for no stage after training)."""
    if not composes(cfg):
        return None
    if cfg.method.name == "compress_transfer":
        raise ConfigError("compress_transfer quantizes and transfers by its own settings "
                          "(method.quant, method.target, method.methods); leave the transfer "
                          "and precision sections out, or use another method as the source")
    ids: dict[str, str] = {}
    for stage in plan_stages(cfg, path, deps):
        task = graph.add(Task(id=stage.path, kind=stage.kind, path=stage.path,
                              config=stage.config,
                              deps=[ids.get(d, d) for d in stage.deps],
                              resources=resources_of(cfg), label=stage.label))
        ids[stage.path] = task.id
    return [ids[path]]


@register_task_kind("quantize")
def _quantize(task: Task, root: Path) -> dict:
    return run_quantize(task.config, root)


@register_task_kind("transfer")
def _transfer(task: Task, root: Path) -> dict:
    return run_transfer(task.config, root)
