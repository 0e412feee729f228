"""Find finished runs under directories and group those that differ only by seed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import flatten
from ..errors import UnderbudgetError


@dataclass
class Record:
    """One finished run: where it is, its resolved config and its summary."""

    path: Path
    config: dict
    summary: dict
    _events: list[dict] | None = field(default=None, repr=False)

    @property
    def method(self) -> str:
        return str(self.summary.get("method") or self.config.get("method", {}).get("name"))

    def events(self, event: str | None = None) -> list[dict]:
        """Events of this run's metrics.jsonl (cached)."""
        if self._events is None:
            from ..runs import Run

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


IGNORED = {"seed", "train.progress", "train.device"}


def group_by_setting(records: list[Record]) -> list[tuple[str, list[Record]]]:
    """Groups of runs whose configs differ only by seed, labelled by what sets them apart."""
    flats = [flatten(r.config) for r in records]
    keys = sorted({k for f in flats for k in f} - IGNORED)
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
