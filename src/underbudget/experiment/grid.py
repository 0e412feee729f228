"""Compile the D2-Sparse grid (``method.name: d2sparse-grid``) into its child runs.

Every grid point (:func:`underbudget.methods.d2sparse.grid.grid_children`) becomes an
ordinary task at ``<grid>/<child slug>``, side by side, so an executor runs them in parallel;
the grid's own ``run`` task waits for all of them and summarises them (its method reads the
finished children). The directory layout is the grid's: one parent, one child per point.
"""

from __future__ import annotations

from ..config import to_dict
from ..methods.d2sparse.grid import GRID_METHOD, grid_children
from .compile import add_config, register_compiler, resources_of
from .graph import Graph, Task


@register_compiler
def compile_grid(cfg, graph: Graph, path: str, deps: list[str]) -> list[str] | None:
    """The tasks of a D2-Sparse grid (None for any other config)."""
    if cfg.method.name != GRID_METHOD:
        return None
    ends: list[str] = []
    for slug, child in grid_children(cfg):
        ends += add_config(graph, child, f"{path}/{slug}", deps, task_id=f"{path}/{slug}",
                           label=slug)
    task = graph.add(Task(id=path, kind="run", path=path, config=to_dict(cfg), deps=ends,
                          resources=resources_of(cfg), label=f"{GRID_METHOD} summary"))
    return [task.id]

