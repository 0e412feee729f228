"""Where a config's values come from: shipped presets, YAML files, ``key.sub=value`` overrides.

All of it works on plain nested mappings, before any typed config is built
(:func:`underbudget.config.load_config` puts the pieces together).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, closest
from .utils.yamlfile import DuplicateKeyError, load_unique, load_yaml


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key.sub=value``; the value is read as YAML (numbers, lists, true/null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = load_unique(raw) if raw.strip() else None
    except DuplicateKeyError as exc:
        raise ConfigError(f"override {text!r}: {exc.args[0].split(' (lines')[0]}") from None
    except yaml.YAMLError:
        value = raw
    return key, value


def check_repeated(keys: list[str], where: str = "on the command line") -> None:
    """Refuse a key given twice (or a key and a section holding it): one of them would be lost.
    """
    seen: list[str] = []
    for key in keys:
        for other in seen:
            if key == other or key.startswith(other + ".") or other.startswith(key + "."):
                same = "is given twice" if key == other else f"overlaps {other}"
                raise ConfigError(f"{key} {same} {where}; keep one")
        seen.append(key)


def set_dotted(values: dict, key: str, value: Any) -> None:
    """Set ``values['a']['b'] = value`` for ``key='a.b'``, creating mappings as needed."""
    parts = key.split(".")
    node = values
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif isinstance(child, str) and part == "method":
            child = node[part] = {"name": child}
        elif not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def get_dotted(values: dict, key: str) -> Any:
    """Read a dotted key from a nested mapping (None when absent)."""
    node: Any = values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def apply_overrides(values: dict, overrides: list[str] | dict) -> dict:
    """Apply ``key=value`` strings (or a mapping of dotted keys) to a nested mapping copy."""
    values = json.loads(json.dumps(values))
    items = (list(overrides.items()) if isinstance(overrides, dict)
             else [parse_override(o) for o in overrides])
    check_repeated([k for k, _ in items])
    for key, value in items:
        set_dotted(values, key, value)
    return values


# --------------------------------------------------------------------------- presets and names


def presets_dir() -> Path:
    """Directory of the shipped YAML presets."""
    return Path(__file__).parent / "presets"


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def resolve_source(source: str) -> dict:
    """Read a preset name or a YAML file path into a nested mapping."""
    path = Path(source)
    preset_named = (presets_dir() / f"{source}.yaml").is_file()
    if path.suffix in (".yaml", ".yml") or (path.exists() and not (path.is_dir() and preset_named)):
        values = load_yaml(path, allow_empty=False)
        values.setdefault("name", path.stem)
        return values
    preset = presets_dir() / f"{source}.yaml"
    if not preset.exists():
        names = list_presets()
        raise ConfigError(
            f"unknown preset {source!r}{closest(source, names)} and no such file; "
            f"presets: {', '.join(names)}"
        )
    values = load_yaml(preset)
    values.setdefault("name", source)
    return values
