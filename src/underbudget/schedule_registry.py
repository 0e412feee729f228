"""Sparsity schedules that run as a method of their own on one training.

``sparsity.method`` is one spec for every schedule (see :class:`underbudget.config.SparsityConfig`).
Most schedules are callbacks of the ``train`` method's one training; over a stream every
schedule is a strategy of the stream loop. Two schedules need a protocol of their own on one
training: ``iterative`` (IMP: levels of train, prune, rewind) and ``dual_dynamic``
(D2-Sparse: two coupled networks). The methods that implement them register here, and
:func:`lower_schedule` swaps a ``train`` config asking for one of them for that method's
config, so everything downstream (the experiment graph, the transfer of every IMP level,
the reports) sees the method that actually runs.

A method applies a stream or QAT only when it says so (``MethodConfig.honours``);
:func:`check_honoured` refuses a config asking another method for one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from .errors import ConfigError

#: sparsity schedule -> fn(cfg) giving the method config that runs it on one training
_SCHEDULES: dict[str, Callable[[Any], Any]] = {}


def register_schedule(name: str, lower: Callable[[Any], Any]) -> None:
    """Make ``sparsity.method: <name>`` under the ``train`` method (without a stream) run as
    the method config ``lower(cfg)`` returns."""
    _SCHEDULES[name] = lower


def schedule_methods() -> tuple[str, ...]:
    """The schedules that run as a method of their own (registered so far)."""
    return tuple(_SCHEDULES)


def lower_schedule(cfg: Any) -> Any:
    """``cfg`` with its ``train`` method replaced by the config of the method that runs its
    sparsity schedule, when that schedule has one and no stream is set; otherwise ``cfg``.

    A sweep's parent is left as written: every child is lowered with its own values.
    """
    lower = _SCHEDULES.get(cfg.sparsity.method)
    if lower is None or cfg.method.name != "train" or cfg.stream.enabled or cfg.sweep:
        return cfg
    return dataclasses.replace(cfg, method=lower(cfg))


def check_honoured(cfg: Any) -> None:
    """Refuse a stream or QAT asked of a method that does not apply it."""
    honours = type(cfg.method).honours
    if cfg.sections and "sections" not in honours:
        raise ConfigError(
            f"method {cfg.method.name!r} does not apply registered constraint sections "
            f"({', '.join(sorted(cfg.sections))}); the methods that train through "
            f"methods.common.make_trainer do: train, anytime, lottery, d2sparse")
    for what, on in {"stream": cfg.stream.enabled, "qat": cfg.precision.mode == "qat"}.items():
        if not on or what in honours:
            continue
        key = "stream.megabatches" if what == "stream" else "precision.mode=qat"
        if cfg.sparsity.method in _SCHEDULES and what == "qat":
            raise ConfigError(
                f"sparsity.method={cfg.sparsity.method} on one training runs as method "
                f"{cfg.method.name!r}, which does not apply {key}; remove {key}, or run the "
                f"schedule over a stream (stream.megabatches), where every schedule applies it")
        raise ConfigError(
            f"method {cfg.method.name!r} does not apply {key}; the 'train' method does, with "
            f"any sparsity.method (and 'anytime' with method.strategy) — remove {key} or use "
            f"method.name=train with the sparsity schedule")
