"""A sweep's grid expanded into child configs, and the checks made before anything runs.

Everything a user can get wrong is checked before the first directory is created: the config
and every sweep child, the names, files and devices they use
(:mod:`underbudget.runs.preflight`).
"""

from __future__ import annotations

import hashlib
import itertools

from ..config import apply_overrides, from_dict, to_dict
from ..runs.preflight import preflight

MAX_SLUG = 120


def _slug(assignments: dict) -> str:
    parts = []
    for key, value in assignments.items():
        short = key.split(".")[-1]
        text = "-".join(map(str, value)) if isinstance(value, list) else str(value)
        parts.append(f"{short}-{text}")
    raw = "_".join(parts) or "run"
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in raw)
    if len(slug) > MAX_SLUG:  # file names are limited to 255 bytes
        slug = f"{slug[:MAX_SLUG - 9]}-{hashlib.sha256(slug.encode()).hexdigest()[:8]}"
    return slug


def expand_sweep(cfg) -> list[tuple[str, object]]:
    """Child configs of a sweep, one per grid point, as ``(directory name, config)``."""
    keys = list(cfg.sweep)
    base = to_dict(cfg)
    base["sweep"] = {}
    children = []
    for combo in itertools.product(*(cfg.sweep[k] for k in keys)):
        assignment = dict(zip(keys, combo))
        child = from_dict(apply_overrides(base, assignment))
        children.append((_slug(assignment), child))
    return children


def check_experiment(cfg) -> list[tuple[str, object]]:
    """Validate ``cfg`` and every sweep child (config, names, files, devices) without
    creating anything; return the sweep's children (empty for a single run)."""
    children = expand_sweep(cfg) if cfg.sweep else []
    seen: set[str] = set()
    for child in [c for _, c in children] or [cfg]:
        key = repr((child.data, child.model, child.train.device, child.method))
        if key not in seen:
            seen.add(key)
            preflight(child)
    return children
