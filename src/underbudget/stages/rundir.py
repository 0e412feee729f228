"""A stage's run directory while it runs: locked, an earlier failure forgotten (retried);
a finished stage read back instead of run again."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from ..runs.failures import forget_failure
from ..runs.lock import hold_run
from ..runs.store import Run


@contextlib.contextmanager
def stage_run(directory: str | Path) -> Iterator[Run]:
    """Hold the lock of ``directory`` (another launcher running it is waited for, or skipped,
    by the lock policy in force) and drop the record of an earlier failure, so the stage is
    retried; yields the :class:`Run`."""
    with hold_run(directory):
        run = Run(directory)
        forget_failure(run)
        yield run


def run_stage(config: dict, root: str | Path,
              body: Callable[[dict, Path, Run], dict]) -> dict:
    """The summary of the stage at ``root / config["path"]``: read back when the stage has
    finished, else ``body(config, root, run)`` under :func:`stage_run`."""
    root = Path(root)
    with stage_run(root / config["path"]) as run:
        if run.is_finished():
            return run.read_summary()
        return body(config, root, run)
