"""Run directories: one owner for every path a run writes.

A run directory holds::

    config.yaml      the resolved config
    env.json         versions, device, git commit, command line
    metrics.jsonl    one JSON object per event (step/epoch/stage/...)
    summary.json     written last; its presence marks the run finished
    checkpoint.safetensors  latest training state (tensors + JSON metadata), removed when done
    artifacts/       weights, masks, indices, plots a method chooses to keep
    <child>/         nested runs (levels, variants, sweep members)

Everything is written atomically; ``metrics.jsonl`` is append-only and truncated back to
the checkpointed length when an interrupted run resumes, so no event is counted twice.

A run may carry listeners (:class:`RunListener`, e.g. experiment trackers): each sees the
config when the run starts, every event it logs and its summary; child runs share them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import yaml

from ..errors import ConfigError
from ..train.distributed import may_write
from ..utils.atomic import dumps, write_json, write_text
from .env import environment
from .tree import load_tree, save_tree, tree_exists


def runs_root(root: str | Path | None = None) -> Path:
    """Where runs go: explicit root, else $UNDERBUDGET_RUNS, else ./runs."""
    if isinstance(root, str) and not root.strip():
        raise ConfigError("--out is empty; name a folder for the runs, or leave --out out to "
                          "use $UNDERBUDGET_RUNS or ./runs")
    return Path(root or os.environ.get("UNDERBUDGET_RUNS") or "runs")


class RunListener(Protocol):
    """Sees what a run (and each of its children) writes, after it is written."""

    def run_started(self, run: Run, config: dict | None) -> None: ...

    def run_logged(self, run: Run, event: str, values: dict) -> None: ...

    def run_finished(self, run: Run, summary: dict) -> None: ...


class Run:
    """A run directory (created on first write)."""

    def __init__(self, path: str | Path, listeners: Iterable[RunListener] = ()):
        self.path = Path(path)
        self.listeners: list[RunListener] = list(listeners)

    def __getstate__(self) -> dict:  # listeners stay in the process that attached them
        return {"path": self.path, "listeners": []}

    def _notify(self, hook: str, *args: Any) -> None:
        for listener in self.listeners:
            getattr(listener, hook)(self, *args)

    # ----------------------------------------------------------------- paths
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint"

    def artifact(self, name: str) -> Path:
        """Path of an artifact file (the directory is created)."""
        path = self.path / "artifacts" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def child(self, name: str) -> Run:
        """A nested run directory (with this run's listeners)."""
        return Run(self.path / name, self.listeners)

    @property
    def writable(self) -> bool:
        """False on torchrun ranks > 0 (outside their private root): only rank 0 writes."""
        return may_write(self.path)

    # ----------------------------------------------------------------- state
    def is_finished(self) -> bool:
        """A finished run has a summary."""
        return self.summary_path.exists()

    def start(self, config: dict | None = None, device: Any = None) -> None:
        """Create the directory and write config and environment."""
        if not self.writable:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        if config is not None:
            write_text(self.config_path, yaml.safe_dump(config, sort_keys=False))
        write_json(self.path / "env.json", environment(device))
        self._notify("run_started", config)

    def read_config(self) -> dict:
        """The saved resolved config."""
        return yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}

    def write_summary(self, summary: dict) -> None:
        """Write the summary (marks the run finished) and drop the resume checkpoint."""
        if not self.writable:
            return
        write_json(self.summary_path, summary)
        self.clear_checkpoint()
        self._notify("run_finished", summary)

    def read_summary(self) -> dict | None:
        """The summary, or None when the run has not finished."""
        if not self.summary_path.exists():
            return None
        return json.loads(self.summary_path.read_text(encoding="utf-8"))

    def write_json(self, name: str, obj: Any) -> Path:
        """Write a JSON file inside the run directory atomically."""
        path = self.path / name
        if self.writable:
            write_json(path, obj)
        return path

    # ----------------------------------------------------------------- metrics
    def log(self, event: str, **values: Any) -> None:
        """Append one event to metrics.jsonl."""
        if not self.writable:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        line = dumps({"event": event, **values})
        with open(self.metrics_path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        self._notify("run_logged", event, values)

    def metrics_size(self) -> int:
        """Bytes in metrics.jsonl (recorded in checkpoints)."""
        return self.metrics_path.stat().st_size if self.metrics_path.exists() else 0

    def truncate_metrics(self, size: int) -> None:
        """Cut metrics.jsonl back to ``size`` bytes (events after the last checkpoint)."""
        if not self.writable:
            return
        if self.metrics_path.exists() and self.metrics_path.stat().st_size > size:
            with open(self.metrics_path, "r+b") as fh:
                fh.truncate(size)

    def events(self, event: str | None = None) -> list[dict]:
        """All logged events (optionally only those named ``event``)."""
        if not self.metrics_path.exists():
            return []
        out = []
        with open(self.metrics_path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
                if event is None or record.get("event") == event:
                    out.append(record)
        return out

    # ----------------------------------------------------------------- checkpoints
    def save_checkpoint(self, tree: dict) -> None:
        """Write the resume state atomically, with the metrics length it matches."""
        if not self.writable:
            return
        with open(self.metrics_path, "a", encoding="utf-8") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        save_tree(self.checkpoint_path, {"metrics_size": self.metrics_size(), "state": tree})

    def load_checkpoint(self) -> dict | None:
        """The resume state (metrics truncated to match), or None."""
        if not tree_exists(self.checkpoint_path):
            return None
        saved = load_tree(self.checkpoint_path)
        self.truncate_metrics(int(saved["metrics_size"]))
        return saved["state"]

    def clear_checkpoint(self) -> None:
        """Remove the resume state."""
        if not self.writable:
            return
        self.checkpoint_path.with_suffix(".safetensors").unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"


def last_checkpoint(path: str | Path) -> tuple[Path, dict] | None:
    """The newest checkpoint at or below ``path`` and its position (``stage``, ``epoch``,
    ``stage_done``), read from the file's header only; None when there is none."""
    from safetensors import safe_open

    found = sorted(Path(path).rglob("checkpoint.safetensors"),
                   key=lambda p: p.stat().st_mtime) if Path(path).is_dir() else []
    for ckpt in reversed(found):
        try:
            with safe_open(str(ckpt), framework="pt") as fh:
                state = json.loads((fh.metadata() or {})["underbudget_tree"])["state"]
            return ckpt.parent, {k: state.get(k) for k in ("stage", "epoch", "stage_done")}
        except Exception:  # a checkpoint cut short: look at an older one
            continue
    return None
