"""Experiment trackers (TensorBoard, Weights & Biases, MLflow) as a mirror of the run store.

Set ``track.backends`` in a config; each tracker is an optional extra
(``pip install 'underbudget[tensorboard]'``, ``[wandb]``, ``[mlflow]``, or ``[track]`` for
all three), imported only when asked for. The run directory stays the record of truth: the
trackers see its resolved config, every event it logs, its summary and its report's plots.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..config import TRACK_BACKENDS, TrackConfig
from .session import Run, Tracking

__all__ = ["TRACK_BACKENDS", "Tracking", "tracking"]


@contextlib.contextmanager
def tracking(cfg: TrackConfig, run: Run, quiet: bool = False) -> Iterator[Tracking | None]:
    """Mirror ``run`` and its children to ``cfg.backends`` while the block runs.

    Yields None when no tracker is asked for. Every tracker package is imported on entry, so
    a missing one fails before any training.
    """
    if not cfg.backends:
        yield None
        return
    session = Tracking(cfg, run, quiet=quiet)
    run.listeners.append(session)
    ok = False
    try:
        yield session
        ok = True
    finally:
        run.listeners.remove(session)
        session.close(ok=ok)
