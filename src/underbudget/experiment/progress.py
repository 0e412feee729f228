"""One progress line for a whole experiment graph, printed to stderr as tasks change state.

::

    graph: 2/5 done, 2 running, 0 failed | eta 0:41 | running: lr-0.1, lr-0.2

The ETA is the mean time of the tasks finished so far times the tasks left, divided by the
tasks that run side by side.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

MAX_NAMES = 4


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Counts of a graph's tasks by state, and the line that shows them."""

    def __init__(self, total: int, *, quiet: bool = False, slots: int = 1,
                 stream: TextIO | None = None):
        self.total = total
        self.quiet = quiet
        self.slots = max(1, slots)
        self.stream = stream
        self.running: dict[str, float] = {}  # task id -> start time
        self.done = self.failed = self.skipped = 0
        self.times: list[float] = []

    def started(self, task_id: str) -> None:
        self.running[task_id] = time.perf_counter()
        self._show()

    def retrying(self, task_id: str, reason: str) -> None:
        self.running.pop(task_id, None)
        self._say(f"graph: {task_id} failed ({reason}); trying again")

    def finished(self, task_id: str, status: str, seconds: float) -> None:
        start = self.running.pop(task_id, None)
        if status == "done":
            self.done += 1
            if start is not None:
                self.times.append(seconds or time.perf_counter() - start)
        elif status == "failed":
            self.failed += 1
        else:
            self.skipped += 1
        self._show()

    def eta(self) -> float | None:
        """Seconds left by the mean task time so far (None before the first task ends)."""
        if not self.times:
            return None
        left = self.total - self.done - self.failed - self.skipped
        parallel = min(self.slots, max(1, left))
        return sum(self.times) / len(self.times) * left / parallel

    def line(self) -> str:
        """The progress line."""
        text = (f"graph: {self.done}/{self.total} done, {len(self.running)} running, "
                f"{self.failed} failed")
        if self.skipped:
            text += f", {self.skipped} skipped"
        eta = self.eta()
        text += f" | eta {_clock(eta)}" if eta is not None else " | eta ?"
        if self.running:
            names = list(self.running)
            more = f" (+{len(names) - MAX_NAMES})" if len(names) > MAX_NAMES else ""
            text += f" | running: {', '.join(names[:MAX_NAMES])}{more}"
        return text

    def _show(self) -> None:
        self._say(self.line())

    def _say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stream or sys.stderr, flush=True)
