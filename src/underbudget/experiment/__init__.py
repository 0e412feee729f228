"""The experiment graph: stages compiled from a config, then executed by an executor.

:mod:`.graph` is the plain data structure (tasks with dependencies), :mod:`.tasks` the
registry of task kinds (what a task of each kind runs) and :mod:`.compile` turns a config
into a graph before anything runs.
"""

from .graph import Graph, Task

__all__ = ["Graph", "Task"]
