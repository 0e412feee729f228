"""Find finished runs under directories and group those that differ only by seed.

A seed counts once per setting: when the same setting finished more than once with the same
seed (a run repeated into another folder, a sweep holding a duplicate), the run that finished
last is used and the others are listed by :func:`duplicate_lines`. A run finished at its
recorded start (``env.json``) plus its wall time, else when its ``summary.json`` was written.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from ..config import flatten, is_platform_key
from ..errors import UnderbudgetError
from ..runs import Run
from .costs import run_costs


@dataclass
class Record:
    """One finished run: where it is, its resolved config and its summary."""

    path: Path
    config: dict
    summary: dict
    _events: list[dict] | None = field(default=None, repr=False)

    @property
    def seed(self) -> int | None:
        """The run's seed (from its config, else its summary)."""
        seed = self.config.get("seed", self.summary.get("seed"))
        return None if seed is None else int(seed)

    @property
    def finished(self) -> float:
        """When the run finished (seconds since the epoch)."""
        wall = self.summary.get("wall_time")
        try:
            env = json.loads((self.path / "env.json").read_text(encoding="utf-8"))
            start = datetime.strptime(env["time"], "%Y-%m-%dT%H:%M:%S%z").timestamp()
        except (OSError, ValueError, KeyError, TypeError):
            start = None
        if start is not None and isinstance(wall, int | float):
            return start + float(wall)
        return (self.path / "summary.json").stat().st_mtime

    @property
    def costs(self) -> dict:
        """The run's costs on the common axes (``summary["costs"]``); a run written before
        summaries carried them gets them here, from its record (kept in memory only)."""
        if not isinstance(self.summary.get("costs"), dict):
            self.summary["costs"] = run_costs(self.summary, self.config, self.path)
        return self.summary["costs"]

    @property
    def method(self) -> str:
        """The method whose report sections show this run: a run over a stream is an
        anytime run whichever method's config spelled it (``train`` with a schedule)."""
        if (self.config.get("stream") or {}).get("megabatches", 0) > 0:
            return "anytime"
        return str(self.summary.get("method") or self.config.get("method", {}).get("name"))

    def events(self, event: str | None = None) -> list[dict]:
        """Events of this run's metrics.jsonl (cached)."""
        if self._events is None:
            self._events = Run(self.path).events()
        return [e for e in self._events if event is None or e.get("event") == event]


def _read(path: Path) -> Record | None:
    summary_path = path / "summary.json"
    if not summary_path.exists():
        return None
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        config_path = path / "config.yaml"
        config = yaml.safe_load(config_path.read_text()) if config_path.exists() else {}
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise UnderbudgetError(f"cannot read run {path}: {exc}") from None
    return Record(path=path, config=config or {}, summary=summary)


def collect(paths: list[str | Path], nested: bool = False) -> list[Record]:
    """Finished runs at or below ``paths`` (sorted by path).

    A finished run's own sub-runs (e.g. IMP levels) are not collected unless ``nested``.
    """
    records: list[Record] = []
    seen: set[Path] = set()
    for raw in paths:
        root = Path(raw)
        if not root.exists():
            raise UnderbudgetError(f"no run or directory at {root}")
        stack = [root]
        while stack:
            here = stack.pop()
            rec = _read(here)
            if rec is not None and here.resolve() not in seen:
                seen.add(here.resolve())
                records.append(rec)
                if not nested:
                    continue
            stack.extend(sorted((p for p in here.iterdir() if p.is_dir()
                                 and p.name not in ("artifacts", "report")), reverse=True))
    return sorted(records, key=lambda r: str(r.path))


def _ignored(key: str) -> bool:
    """The seed and the platform settings (where and how a run executed) are not a setting."""
    return key == "seed" or is_platform_key(key) or key.startswith("sweep.")


def setting_of(rec: Record) -> str:
    """The run's setting: its flattened config without the seed and what cannot change the
    result (progress bars, device, the sweep that generated it)."""
    flat = {k: v for k, v in flatten(rec.config).items() if not _ignored(k)}
    return json.dumps(flat, sort_keys=True, default=str)


@dataclass
class Duplicate:
    """Runs of one setting and seed: ``kept`` (finished last) is counted, ``dropped`` not."""

    seed: int | None
    kept: Record
    dropped: list[Record]


def pool_seeds(records: list[Record]) -> tuple[list[Record], list[Duplicate]]:
    """One run per (setting, seed), the one that finished last (ties: the later path); the
    order of ``records`` is kept. Returns the runs to count and the duplicates left out."""
    by_key: dict[tuple[str, int | None], list[Record]] = {}
    for rec in records:
        by_key.setdefault((setting_of(rec), rec.seed), []).append(rec)
    keep: set[int] = set()
    dups = []
    for (_, seed), recs in by_key.items():
        ranked = sorted(recs, key=lambda r: (r.finished, str(r.path)))
        keep.add(id(ranked[-1]))
        if len(ranked) > 1:
            dups.append(Duplicate(seed, ranked[-1], ranked[:-1][::-1]))
    return [r for r in records if id(r) in keep], dups


def duplicate_lines(dups: list[Duplicate]) -> list[str]:
    """Markdown: a short section listing the duplicates a report did not count."""
    if not dups:
        return []

    def when(rec: Record) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(rec.finished))

    lines = ["## Duplicate runs (not counted)", "",
             "The same setting finished more than once with the same seed; each seed counts "
             "once, with the run that finished last.", ""]
    for d in sorted(dups, key=lambda d: str(d.kept.path)):
        gone = "; ".join(f"`{r.path}` ({when(r)})" for r in d.dropped)
        lines.append(f"- seed {d.seed}: counted `{d.kept.path}` ({when(d.kept)}); "
                     f"not counted: {gone}")
    return lines + [""]


def group_by_setting(records: list[Record]) -> list[tuple[str, list[Record]]]:
    """Groups of runs whose configs differ only by seed, labelled by what sets them apart.

    Each seed counts once per group (see :func:`pool_seeds`)."""
    records, _ = pool_seeds(records)
    flats = [flatten(r.config) for r in records]
    keys = sorted(k for k in {k for f in flats for k in f} if not _ignored(k))
    varying = [k for k in keys if len({json.dumps(f.get(k), default=str) for f in flats}) > 1]
    varying = [k for k in varying if not k.startswith("sweep.")]
    groups: dict[str, list[Record]] = {}
    for rec, flat in zip(records, flats):
        label = ", ".join(f"{k.split('.')[-1] if _unique_tail(k, varying) else k}={flat.get(k)}"
                          for k in varying) or rec.config.get("name", rec.path.name)
        groups.setdefault(label, []).append(rec)
    return list(groups.items())


def _unique_tail(key: str, keys: list[str]) -> bool:
    tail = key.split(".")[-1]
    return sum(k.split(".")[-1] == tail for k in keys) == 1
