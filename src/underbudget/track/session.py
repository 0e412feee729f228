"""A tracking session: a listener on a top run that mirrors it and its children to trackers.

Every run directory under the top run becomes one tracker run, opened when it starts (its
resolved config as hyper-parameters) and closed when it writes its summary. Each event the
run logs (``epoch``, ``stage_end``, ``mask_update``, ``anytime_stage``, ...) becomes scalars
named ``<event>/<field>`` (nested fields as ``<event>/<field>/<key>``) at the event's
optimizer step; the summary becomes ``summary/<field>``. Names default to the directories:
the group is the top run's directory name, a run's name its path inside it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Protocol

from ..config import TrackConfig
from .backends import BACKENDS, Backend, Handle, RunInfo


class Run(Protocol):
    """What a tracker reads of a run directory (:class:`underbudget.runs.Run` is one)."""

    path: Path
    listeners: list

    @property
    def config_path(self) -> Path: ...

    def read_config(self) -> dict: ...

    def read_summary(self) -> dict | None: ...

    def is_finished(self) -> bool: ...

# Added to every event by Trainer.log; the step is the x axis, stage and epoch are not metrics.
_BOOKKEEPING = frozenset({"step", "stage", "epoch"})


def _clean(key: str) -> str:
    return re.sub(r"[^\w./\- ]", "_", str(key))


def scalars(values: dict, prefix: str, skip: frozenset = frozenset()) -> dict[str, float]:
    """Numeric fields of ``values`` (nested dicts included) as ``{prefix/key: float}``."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if key in skip:
            continue
        name = f"{prefix}/{_clean(key)}"
        if isinstance(value, dict):
            out.update(scalars(value, name))
        elif isinstance(value, (bool, int, float)):
            out[name] = float(value)
    return out


class _Tracked:
    """One run directory's tracker runs (one handle per backend), config and last step."""

    def __init__(self, handles: dict[str, Handle], config: dict):
        self.handles, self.config = handles, config
        self.step = 0


def _is_experiment(config: dict) -> bool:
    return isinstance(config.get("method"), dict) and isinstance(config.get("train"), dict)


class Tracking:
    """Mirrors a top run and its children to the trackers in ``cfg.backends``.

    Attach it to the top :class:`~underbudget.runs.Run` (``run.listeners``); close it at the
    end. A tracker that fails while the run trains is turned off with one warning: the run
    directory, not the tracker, is the record.
    """

    def __init__(self, cfg: TrackConfig, top: Run, quiet: bool = False):
        self.cfg, self.top, self.quiet = cfg, top, quiet
        self.dir = Path(cfg.dir) if cfg.dir else top.path / "track"
        self.group = cfg.group or top.path.name
        self.backends: dict[str, Backend] = {n: BACKENDS[n](cfg, self.dir) for n in cfg.backends}
        self.runs: dict[Path, _Tracked] = {}
        self.done: set[Path] = set()

    # ------------------------------------------------------------------ naming
    def name_of(self, path: Path) -> str:
        """The tracker run name of a run directory."""
        if path == self.top.path:
            return self.cfg.name or path.name
        try:
            return path.relative_to(self.top.path).as_posix()
        except ValueError:
            return path.name

    # ------------------------------------------------------------------ RunListener
    def run_started(self, run: Run, config: dict | None) -> None:
        self._tracked(run, config)

    def run_logged(self, run: Run, event: str, values: dict) -> None:
        tracked = self._tracked(run)
        if tracked is None:
            return
        step = values.get("step")
        if isinstance(step, int) and not isinstance(step, bool):
            tracked.step = step
        numbers = scalars(values, _clean(event), _BOOKKEEPING)
        if numbers:
            self._each(tracked, "metrics", numbers, tracked.step)

    def run_finished(self, run: Run, summary: dict) -> None:
        tracked = self._tracked(run)
        if tracked is None:
            return
        numbers = scalars(summary, "summary")
        texts = {f"summary/{_clean(k)}": v for k, v in summary.items() if isinstance(v, str)}
        if numbers:
            self._each(tracked, "metrics", numbers, tracked.step)
        if texts:
            self._each(tracked, "texts", texts, tracked.step)
        if run.path != self.top.path:  # the top run still gets the report's plots
            self._close(run.path, ok=summary.get("status", "ok") == "ok")

    # ------------------------------------------------------------------ session
    def send_plots(self, report_dir: Path) -> None:
        """Send the PNG plots of ``report_dir`` to the top run's tracker runs."""
        tracked = self.runs.get(self.top.path)
        plots = sorted(Path(report_dir).glob("*.png")) if self.cfg.plots else []
        if tracked is not None and plots:
            self._each(tracked, "images", plots, tracked.step)

    def close(self, ok: bool = True) -> None:
        """Close every tracker run still open (children first)."""
        status = None
        if self.top.is_finished():
            status = (self.top.read_summary() or {}).get("status", "ok")
        for path in sorted(self.runs, key=lambda p: -len(p.parts)):
            self._close(path, ok=ok and status in (None, "ok"))
        if not self.quiet and self.done:
            for line in filter(None, (b.where() for b in self.backends.values())):
                print(f"tracked: {line}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ internals
    def _tracked(self, run: Run, config: dict | None = None) -> _Tracked | None:
        path = run.path
        if path in self.runs or path in self.done:
            return self.runs.get(path)
        if config is None and run.config_path.exists():
            config = run.read_config()
        config = config or {}
        parent = self._parent(path)
        if parent is not None and not _is_experiment(config):
            # a child that records only what it is: the experiment's config, plus that
            config = {**parent.config, "child": config}
        handles = {}
        for name, backend in list(self.backends.items()):
            info = RunInfo(project=self.cfg.project, group=self.group, name=self.name_of(path),
                           path=path, config=config,
                           parent=parent.handles.get(name) if parent is not None else None)
            handle = self._safely(name, backend.open, info)
            if handle is not None:
                handles[name] = handle
        self.runs[path] = tracked = _Tracked(handles, config)
        return tracked

    def _parent(self, path: Path) -> _Tracked | None:
        for ancestor in path.parents:
            if ancestor in self.runs:
                return self.runs[ancestor]
        return None

    def _each(self, tracked: _Tracked, method: str, *args: Any) -> None:
        for name, handle in list(tracked.handles.items()):
            if name in self.backends:
                self._safely(name, getattr(handle, method), *args)

    def _close(self, path: Path, ok: bool) -> None:
        tracked = self.runs.pop(path, None)
        if tracked is None:
            return
        self.done.add(path)
        self._each(tracked, "close", ok)

    def _safely(self, name: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            self.backends.pop(name, None)
            cause = f"{type(exc).__name__}: {exc}".splitlines()[0]
            print(f"underbudget: tracker {name} failed ({cause}); it is off for the rest of "
                  "this run (the run directory keeps every number)", file=sys.stderr, flush=True)
            return None
