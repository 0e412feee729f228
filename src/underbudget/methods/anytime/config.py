"""Settings of the anytime (ALMA) method; the APP paper's choices are the defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from ...config import ConfigError, ExperimentConfig, MethodConfig
from ...data.stream import Replay
from ...errors import unknown
from ...sections import StreamConfig
from .strategies import STRATEGIES

REPLAY_HELP = "full | none | window:K | buffer:N"
SCORE_SOURCES = ("newest", "replay")
PRUNE_LAYERS = ("all", "conv")
#: settings of the stream itself, read from the top-level ``stream`` section when it is set
STREAM_FIELDS = ("megabatches", "replay", "warm_start", "class_balanced", "val_fraction")


@dataclass
class AnytimeConfig(MethodConfig):
    """Anytime learning over a stream of megabatches.

    Per-stage epochs, selection (``train.select``) and early stopping (``train.patience``)
    come from the ``train`` section; the LR schedule in ``optim`` restarts every stage.
    docs/anytime.md says which defaults are the APP paper's (or its code's) and which ours.
    """

    name: str = "anytime"
    honours: ClassVar[tuple[str, ...]] = ("stream", "qat", "sections")
    strategy: str = "app"  # dense | osp | app | gmp | rigl | set | imp | d2sparse
    megabatches: int = 8  # T
    tau: float = 4.5  # final density 0.8**tau (APP); ignored when d_final is set
    d_final: float | None = None
    d_start: float | None = None  # APP's first-stage density (default 0.8 = 0.8**1)
    shape: str = "geometric"  # geometric | linear | cubic (APP schedule shape)
    class_balanced: bool = False  # class-balanced megabatches
    val_fraction: float = 0.1  # of each megabatch, never augmented
    replay: str = "full"  # full | none | window:K | buffer:N
    warm_start: bool = True  # False: a fresh seeded init every stage (masks kept)
    reset_optimizer: bool = False  # fresh optimizer state every stage (APP kept one)
    criterion: str = "snip"  # scoring criterion for osp/app (any of the sparsity engine's)
    scope: str = "global"  # global | layerwise | erk | er
    prune_layers: str = "all"  # all: conv + linear weights | conv: conv weights (APP code)
    score_fraction: float = 0.2  # of the scoring pool (see score_source)
    score_count: int | None = None  # a fixed number of scoring examples instead of a fraction
    score_source: str = "replay"  # replay (all data trained on this stage, APP code) | newest
    score_batch_size: int = 256
    exclude_first: bool = False
    exclude_last: bool = False
    interval: int = 100  # steps between mask updates (gmp, rigl, set)
    alpha: float = 0.3  # rigl/set drop fraction
    t_end: float = 0.75  # rigl/set: fraction of the stream after which masks freeze
    gmp_end: float = 0.75  # gmp: fraction of the stream where the final density is reached
    eval_train: bool = True  # clean training accuracy (for the generalization gap)
    save_masks: bool = True
    d2sparse: dict = field(default_factory=dict)  # d2sparse strategy: D2-Sparse settings

    def validate(self, cfg) -> None:
        """Reject impossible streams and unknown names early, with the fix.

        With a ``stream`` section the stream fields are checked as resolved from it (and a
        disagreement between the two is one error).
        """
        resolved_stream(cfg, self).check(cfg)

    def check(self, cfg) -> None:
        """The checks of :meth:`validate` on these (already resolved) settings."""
        if self.strategy not in STRATEGIES:
            raise unknown("anytime strategy (method.strategy)", self.strategy, STRATEGIES)
        if self.megabatches < 1:
            raise ConfigError(f"method.megabatches (T) must be >= 1, got {self.megabatches}")
        if self.d_final is None and self.tau <= 0:
            raise ConfigError(f"method.tau must be > 0 (final density 0.8**tau), got {self.tau}")
        if self.d_final is not None and not 0 < self.d_final <= 1:
            raise ConfigError(f"method.d_final must be in (0, 1], got {self.d_final}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"method.val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 < self.score_fraction <= 1:
            raise ConfigError(
                f"method.score_fraction must be in (0, 1], got {self.score_fraction}")
        if self.score_count is not None and (
                isinstance(self.score_count, bool) or not isinstance(self.score_count, int)
                or self.score_count < 1):
            raise ConfigError(
                f"method.score_count must be a positive integer (or null to use "
                f"method.score_fraction), got {self.score_count!r}")
        if self.prune_layers not in PRUNE_LAYERS:
            raise unknown("set of pruned layers (method.prune_layers)", self.prune_layers,
                          PRUNE_LAYERS)
        if self.prune_layers != "all" and self.strategy == "d2sparse":
            raise ConfigError(
                "the anytime d2sparse strategy chooses its own prunable layers: "
                "set method.prune_layers=all")
        if self.score_source not in SCORE_SOURCES:
            raise unknown("score source (method.score_source)", self.score_source,
                          SCORE_SOURCES)
        Replay.parse(self.replay)
        if cfg.train.select == "best" and self.val_fraction == 0:
            raise ConfigError("train.select=best needs method.val_fraction > 0")
        if cfg.data.val_fraction:
            raise ConfigError(
                "a stream splits validation data from each megabatch: set "
                "stream.val_fraction (or method.val_fraction) instead of data.val_fraction")

    def final_density(self) -> float:
        """Target density at the end of the stream."""
        return self.d_final if self.d_final is not None else 0.8 ** self.tau


def resolved_stream(cfg: ExperimentConfig, acfg: AnytimeConfig) -> AnytimeConfig:
    """``acfg`` with its stream fields resolved against ``cfg.stream`` when the section is set.

    A field set on one side only (the other at its default) takes that value; set on both
    sides to two different values it is one ConfigError; ``stream.megabatches`` always wins
    over a default ``method.megabatches``.
    """
    stream = cfg.stream
    if not stream.enabled:
        return acfg
    mine_default, theirs_default = AnytimeConfig(), StreamConfig()
    values = {}
    for name in STREAM_FIELDS:
        mine, theirs = getattr(acfg, name), getattr(stream, name)
        given_mine = mine != getattr(mine_default, name)
        given_theirs = theirs != getattr(theirs_default, name)
        if given_mine and given_theirs and mine != theirs:
            raise ConfigError(
                f"method.{name}={mine!r} and stream.{name}={theirs!r} disagree; the stream "
                f"section sets the stream: drop method.{name} (or make the two equal)"
            )
        values[name] = theirs if given_theirs or not given_mine else mine
    return dataclasses.replace(acfg, **values)
