"""The method registry: a method is a config section plus a function that runs it.

Registering a method also registers its config section with :mod:`underbudget.config` and its
report with :mod:`underbudget.report.registry`; importing :mod:`underbudget` (which imports
:mod:`underbudget.methods`) registers them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import register_method_config
from ..errors import unknown
from ..report.registry import register_report


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
        register_method_config(name, config_cls)
        if report is not None:
            register_report(name, report)
        return fn

    return wrap


def get_method(name: str) -> Method:
    """The method registered as ``name`` (clear error with a suggestion otherwise)."""
    if name not in _METHODS:
        raise unknown("method", name, _METHODS)
    return _METHODS[name]


def list_methods() -> dict[str, str]:
    """Method names with their one-line descriptions."""
    return {name: m.description for name, m in sorted(_METHODS.items())}
