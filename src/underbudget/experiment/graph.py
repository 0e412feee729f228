"""The experiment graph: a plain data structure of stage tasks and their dependencies.

A :class:`Task` names one run directory (relative to the results root), the kind of stage
it is, the resolved config it runs and the tasks it waits for. A :class:`Graph` is a mapping
of tasks; it holds no code, so it pickles, serialises to JSON and prints (``--dry-run``).
Executors walk it in dependency order; two tasks with the same ``path`` are one task.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ConfigError


@dataclass
class Task:
    """One stage of an experiment: a run directory and what produces it."""

    id: str  # unique in the graph, e.g. "lr-0.1" or "source" or "transfer/lp-10shot"
    kind: str  # a registered task kind (see :mod:`.tasks`): run, report, ...
    path: str  # run directory relative to the results root
    config: dict = field(default_factory=dict)  # resolved config (plain data)
    deps: list[str] = field(default_factory=list)  # ids of the tasks it waits for
    resources: dict = field(default_factory=lambda: {"cpus": 1, "gpus": 0})
    label: str = ""  # one line for progress and --dry-run


@dataclass
class Graph:
    """Tasks keyed by id, with the run directory of the whole experiment."""

    path: str  # the experiment's top run directory (relative to the results root)
    tasks: dict[str, Task] = field(default_factory=dict)

    def add(self, task: Task) -> Task:
        """Add ``task``; a task for an already-planned run directory is that task."""
        for other in self.tasks.values():
            if other.path == task.path and other.kind == task.kind:
                return other
        if task.id in self.tasks:
            raise ConfigError(f"experiment graph: two different tasks named {task.id!r}")
        self.tasks[task.id] = task
        return task

    def order(self) -> list[Task]:
        """Tasks in a dependency order (Kahn's algorithm, ties in insertion order)."""
        missing = {d for t in self.tasks.values() for d in t.deps if d not in self.tasks}
        if missing:
            raise ConfigError(f"experiment graph: unknown dependencies {sorted(missing)}")
        done: set[str] = set()
        out: list[Task] = []
        pending = list(self.tasks.values())
        while pending:
            ready = [t for t in pending if all(d in done for d in t.deps)]
            if not ready:
                raise ConfigError("experiment graph: dependency cycle among "
                                  + ", ".join(t.id for t in pending))
            for t in ready:
                done.add(t.id)
                out.append(t)
            pending = [t for t in pending if t.id not in done]
        return out

    def ready(self, done: set[str], started: set[str]) -> list[Task]:
        """Tasks not yet started whose dependencies are all in ``done``."""
        return [t for t in self.tasks.values()
                if t.id not in started and all(d in done for d in t.deps)]

    def dependents(self, task_id: str) -> set[str]:
        """Ids of every task that (transitively) waits for ``task_id``."""
        out: set[str] = set()
        frontier = [task_id]
        while frontier:
            current = frontier.pop()
            for t in self.tasks.values():
                if current in t.deps and t.id not in out:
                    out.add(t.id)
                    frontier.append(t.id)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "tasks": [asdict(t) for t in self.tasks.values()]}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Graph:
        graph = cls(values["path"])
        for t in values.get("tasks", []):
            graph.tasks[t["id"]] = Task(**t)
        return graph

    def describe(self) -> str:
        """The graph as text, one task per line in dependency order (for ``--dry-run``)."""
        lines = [f"experiment graph: {len(self.tasks)} task(s) in {self.path}"]
        for t in self.order():
            after = f"  after {', '.join(t.deps)}" if t.deps else ""
            what = f" {t.label}" if t.label else ""
            lines.append(f"  [{t.kind}] {t.id}{what} -> {t.path}{after}")
        return "\n".join(lines)
