"""The top-level ``stream`` section (and, for the ``train`` method, the ``sparsity`` section)
mapped onto the anytime machinery.

With ``stream.megabatches > 0`` the experiment runs over that stream:

- the ``anytime`` method reads ``megabatches``, ``replay``, ``warm_start``,
  ``class_balanced`` and ``val_fraction`` from ``stream``. Its own fields of the same names
  still work without the section; a field given on both sides (a value other than the
  default) with two different values is one ConfigError. A method field left at its default
  yields to the section, so the section is the one source of truth when it is set.
- the ``train`` method trains over the stream as the anytime strategy that realises its
  ``sparsity`` section: ``none`` -> ``dense``, ``prune_at_init`` -> ``osp`` (its criterion
  and scope), ``static`` -> ``osp`` with random scores allocated by ``sparsity.init``,
  ``gradual`` -> ``gmp`` (final density at ``sparsity.end`` of the stream), ``set``/``rigl``
  -> ``set``/``rigl`` (``interval``, ``alpha``, ``t_end``), ``progressive`` -> ``app``
  (its criterion and scope; ``sparsity.progressive`` sets ``tau``, ``d_start``, ``shape``,
  ``score_*``, ``prune_layers``, ``reset_optimizer``), ``iterative`` -> ``imp`` (one
  prune-and-rewind per megabatch on the stream's schedule), ``dual_dynamic`` -> ``d2sparse``
  (``interval``, ``t_end``; ``sparsity.dual_dynamic`` holds D2-Sparse's own settings), all at
  ``sparsity.density``.
"""

from __future__ import annotations

import dataclasses
import math

from ...config import ExperimentConfig
from ...errors import ConfigError, unknown
from ...sparsity.schedules import tau_to_density
from .config import AnytimeConfig, resolved_stream

SPARSITY_STRATEGIES = {"none": "dense", "prune_at_init": "osp", "static": "osp",
                       "gradual": "gmp", "set": "set", "rigl": "rigl", "progressive": "app",
                       "iterative": "imp", "dual_dynamic": "d2sparse"}
#: ``sparsity.progressive`` settings passed on to the APP strategy
PROGRESSIVE_KEYS = ("tau", "d_start", "shape", "score_fraction", "score_count", "score_source",
                    "score_batch_size", "prune_layers", "reset_optimizer")


def _refuse(condition: bool, what: str) -> None:
    if condition:
        raise ConfigError(f"the train method over a stream (stream.megabatches > 0) {what}")


def anytime_from_train(cfg: ExperimentConfig) -> AnytimeConfig:
    """The anytime settings that run the ``train`` method's ``sparsity`` over ``cfg.stream``."""
    s = cfg.sparsity
    strategy = SPARSITY_STRATEGIES.get(s.method)
    if strategy is None:  # check_sparsity names the valid methods
        raise ConfigError(f"unknown sparsity.method {s.method!r}")
    _refuse(bool(s.include or s.exclude),
            "prunes every Conv/Linear weight: leave sparsity.include/exclude empty "
            "(exclude_first/exclude_last are supported)")
    _refuse(s.method == "gradual" and s.start != 0.0,
            "prunes gradually from the first step: set sparsity.start=0")
    _refuse(s.method in ("set", "rigl") and s.init != "erk",
            "starts SET/RigL from ERK masks: set sparsity.init=erk")
    _refuse(s.iterations is not None, "scores in one round: leave sparsity.iterations unset")
    _refuse(bool(s.iterative), "prunes and rewinds once per megabatch, to the stream's "
            "schedule: leave sparsity.iterative (rate, levels, rewind) unset")
    method = {
        "strategy": strategy,
        "d_final": s.density,
        "exclude_first": s.exclude_first,
        "exclude_last": s.exclude_last,
        "interval": s.interval,
        "alpha": s.alpha,
        "t_end": s.t_end,
        "gmp_end": s.end,
        "eval_train": bool(getattr(cfg.method, "eval_train", True)),
        "save_masks": bool(getattr(cfg.method, "save_weights", True)),
    }
    if s.method == "prune_at_init":
        method.update(criterion=s.criterion, scope=s.scope, score_source="newest",
                      score_count=s.score_batches * cfg.data.batch_size)
    elif s.method == "static":
        method.update(criterion="random", scope=s.init)
    if s.method == "progressive":
        method.update(criterion=s.criterion, scope=s.scope, **_progressive(s))
    elif s.method == "dual_dynamic":
        method["d2sparse"] = dict(s.dual_dynamic)
    if s.method == "none":
        method["d_final"] = None
    return resolved_stream(cfg, AnytimeConfig(**method))


def _progressive(s) -> dict:
    """APP's own settings from ``sparsity.progressive``; with ``tau`` the schedule is APP's
    0.8^tau form, and ``sparsity.density`` must be its final density."""
    opts = dict(s.progressive)
    for key in opts:
        if key not in PROGRESSIVE_KEYS:
            raise unknown("sparsity.progressive setting", key, PROGRESSIVE_KEYS)
    if "tau" in opts:
        final = tau_to_density(float(opts["tau"]))
        if not math.isclose(final, s.density, rel_tol=1e-3):
            raise ConfigError(
                f"sparsity.progressive.tau={opts['tau']} ends at density {final:.6g}, but "
                f"sparsity.density={s.density}; make them agree (or drop tau)")
        opts["d_final"] = None
    return opts


def anytime_experiment(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with its ``method`` replaced by the resolved anytime settings it runs with."""
    if isinstance(cfg.method, AnytimeConfig):
        acfg = resolved_stream(cfg, cfg.method)
    else:
        acfg = anytime_from_train(cfg)
    return dataclasses.replace(cfg, method=acfg)
