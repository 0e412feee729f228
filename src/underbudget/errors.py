"""Errors a user can cause. Each carries one clear message that names the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UnderbudgetError(Exception):
    """Base class of every error caused by user input (config, data, checkpoints)."""


class ConfigError(UnderbudgetError, ValueError):
    """A config value or key is invalid."""


class DataError(UnderbudgetError):
    """A dataset is missing, corrupt, or too small for what was asked."""


class CheckpointError(UnderbudgetError):
    """A checkpoint or mask file does not fit the model, or is corrupt."""


class MissingDependencyError(UnderbudgetError, ImportError):
    """An optional package is needed but not installed."""


def closest(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean X?)' for the closest choice, or '' when none is close."""
    match = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def unknown(kind: str, name: str, choices: Iterable[str]) -> ConfigError:
    """Build the standard 'unknown X' error listing the valid names."""
    choices = sorted(str(c) for c in choices)
    return ConfigError(
        f"unknown {kind} {name!r}{closest(name, choices)}; choose one of: {', '.join(choices)}"
    )


def require(package: str, extra: str, purpose: str, dist: str | None = None,
            hint: str = ""):
    """Import an optional package or raise one clear MissingDependencyError.

    Any failure counts, not only ImportError: a binary built for another torch raises
    RuntimeError or OSError, a half-installed package AttributeError. The message names the
    extra to install and the cause. ``dist`` is the name to ``pip install`` when it differs
    from the import name; ``hint`` is appended (e.g. which version fits this torch).
    """
    import importlib

    try:
        return importlib.import_module(package)
    except Exception as exc:
        absent = isinstance(exc, ModuleNotFoundError) and exc.name in (
            package, package.split(".")[0])
        install = f"pip install 'underbudget[{extra}]' (or pip install {dist or package})"
        if absent:
            text = f"{purpose} needs the optional package {package!r}: {install}"
        else:
            cause = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
            text = (f"{purpose} needs the optional package {package!r}, which is installed but "
                    f"fails to import ({cause}); reinstall it with {install}")
        raise MissingDependencyError(text + (f"; {hint}" if hint else "")) from exc
