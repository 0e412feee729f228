"""YAML that refuses a key given twice in one mapping (plain PyYAML keeps the last one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError


class DuplicateKeyError(yaml.YAMLError):
    """A mapping names the same key twice."""

    def __init__(self, key: Any, line: int, first: int):
        super().__init__(f"key {key!r} is given twice (lines {first} and {line}); keep one")
        self.key, self.line, self.first = key, line, first


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose mappings raise :class:`DuplicateKeyError` on a repeated key.

    Keys brought in by a merge (``<<: *anchor``) may be overridden, as YAML intends.
    """


def _construct_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            if key in seen:
                raise DuplicateKeyError(key, line, seen[key])
        except TypeError:  # an unhashable key: the constructor reports it
            continue
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_unique(text: str) -> Any:
    """Parse YAML ``text`` like ``yaml.safe_load``, refusing duplicate keys."""
    return yaml.load(text, Loader=UniqueKeyLoader)


def load_yaml(path: str | Path, allow_empty: bool = True) -> dict:
    """Read a YAML mapping with one clear error for every way a file can be unusable."""
    path = Path(path)
    if path.is_dir():
        hint = (f"; to run it again give its config: {path / 'config.yaml'}"
                if (path / "config.yaml").is_file() else "")
        raise ConfigError(f"{path} is a directory, not a YAML config file{hint}")
    try:
        values = load_unique(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except DuplicateKeyError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file; give a YAML config") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path} ({exc.strerror or exc}); check the path and "
                          "its permissions") from None
    if values is None:
        if not allow_empty:
            raise ConfigError(f"{path} is empty; write the settings to change (see "
                              "'underbudget run tiny --dry-run'), or '{}' for all defaults")
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return values
