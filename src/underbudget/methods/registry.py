"""The method registry: a method is a config section plus a function that runs it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import unknown


@dataclass
class Method:
    """A registered research protocol."""

    name: str
    config_cls: type
    run: Callable[[Any, Any], dict]
    report: Callable[[list[Path], Path], dict] | None = None
    description: str = ""


_METHODS: dict[str, Method] = {}


def register_method(name: str, config_cls: type, description: str = "",
                    report: Callable | None = None):
    """Decorator registering ``fn(cfg, run) -> summary`` as method ``name``."""

    def wrap(fn: Callable) -> Callable:
        _METHODS[name] = Method(name, config_cls, fn, report, description)
        return fn

    return wrap


def _load_all() -> None:
    from .. import methods  # noqa: F401  (importing the package registers every method)


def get_method(name: str) -> Method:
    """The method registered as ``name`` (clear error with a suggestion otherwise)."""
    _load_all()
    if name not in _METHODS:
        raise unknown("method", name, _METHODS)
    return _METHODS[name]


def list_methods() -> dict[str, str]:
    """Method names with their one-line descriptions."""
    _load_all()
    return {name: m.description for name, m in sorted(_METHODS.items())}
