"""The serial executor: every task in this process, one after another, in graph order."""

from __future__ import annotations

from pathlib import Path

from ..graph import Graph
from .base import Dispatcher, Options, Outcome, execute_task


def execute(graph: Graph, root: Path, options: Options) -> dict[str, Outcome]:
    """Run the tasks of ``graph`` here in dependency order."""
    dispatch = Dispatcher(graph, options, slots=1)
    while not dispatch.finished:
        ready = dispatch.take_ready(limit=1)
        if not ready:  # cannot happen for a valid graph: every pending task has an end
            break
        task = ready[0]
        dispatch.finish(task, execute_task(task, root, options))
    return dispatch.results()
