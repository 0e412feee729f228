"""Argument checks for model builders: each bad value becomes one ConfigError naming the fix."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from underbudget.errors import ConfigError, closest


def check_int(model: str, name: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` as an int >= ``minimum`` or raise a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"model {model!r}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_float(model: str, name: str, value: Any, low: float, high: float) -> float:
    """Return ``value`` as a float in [low, high] or raise a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(
            f"model {model!r}: {name} must be a number in [{low}, {high}], got {value!r}"
        )
    return float(value)


def check_positive(model: str, name: str, value: Any) -> float:
    """Return ``value`` as a float > 0 or raise a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"model {model!r}: {name} must be a number > 0, got {value!r}")
    return float(value)


def check_ints(model: str, name: str, value: Any, minimum: int = 1, allow_empty: bool = False):
    """Return ``value`` as a tuple of ints >= ``minimum`` (lists from YAML are accepted)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    ok = isinstance(value, Sequence) and not isinstance(value, str)
    ok = ok and (allow_empty or len(value) > 0)
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value)
    if not ok:
        kind = "a list" if allow_empty else "a non-empty list"
        raise ConfigError(
            f"model {model!r}: {name} must be {kind} of integers >= {minimum}, got {value!r}"
        )
    return tuple(int(v) for v in value)


def check_choice(model: str, name: str, value: Any, choices: Iterable[str]) -> str:
    """Return ``value`` (case-insensitive match) if it is one of ``choices``."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    if isinstance(value, str) and value.lower() in lowered:
        return lowered[value.lower()]
    raise ConfigError(
        f"model {model!r}: {name}={value!r} is not valid{closest(str(value), choices)}; "
        f"choose one of: {', '.join(choices)}"
    )


def check_bool(model: str, name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool (not a truthy string) or raise a ConfigError."""
    if not isinstance(value, bool):
        raise ConfigError(f"model {model!r}: {name} must be true or false, got {value!r}")
    return value
