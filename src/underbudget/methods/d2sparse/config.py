"""Settings of the ``d2sparse`` method: every choice the published abstract leaves open.

The defaults are our reconstruction (see ``docs/d2sparse.md``): two networks F (fast) and S
(slow) of one architecture, ERK masks at the target density, RigL on two timescales, coupled
through MSE between logits (each to the other's detached logits), S deployed alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...config import MethodConfig, _build, register_schedule
from ...errors import ConfigError, unknown
from ...sparsity import SCOPES
from ...sparsity.dynamic import DECAYS

FAST_GROWTH = ("rigl", "set")
SLOW_GROWTH = ("rigl", "set", "fast")  # fast: grow where F is alive and large
CONSISTENCY = ("mse", "kl")
SLOW_MODES = ("sgd", "ema")


@dataclass
class D2SparseConfig(MethodConfig):
    """D2-Sparse: a fast and a slow dynamic sparse network, coupled through their outputs."""

    name: str = "d2sparse"
    honours: ClassVar[tuple[str, ...]] = ("sections",)
    density: float = 0.1  # fraction of prunable weights kept, in each network
    init: str = "erk"  # initial per-layer allocation of both masks: erk | er | layerwise
    exclude_first: bool = False  # keep the first prunable layer dense
    exclude_last: bool = False  # keep the classifier dense
    # F: the fast, plastic learner (frequent mask updates, large drop fraction)
    fast_growth: str = "rigl"  # rigl (largest dense gradient) | set (random)
    fast_interval: int = 100  # optimizer steps between F's mask updates
    fast_alpha: float = 0.4  # F's initial drop fraction
    fast_t_end: float = 0.75  # fraction of training after which F's mask is frozen
    fast_decay: str = "cosine"  # cosine | constant decay of the drop fraction
    # S: the slow, stable learner (rare mask updates, small drop fraction); deployed alone
    slow_growth: str = "rigl"  # rigl | set | fast (grow where F is alive and large)
    slow_interval: int = 500
    slow_alpha: float = 0.1
    slow_t_end: float = 0.75
    slow_decay: str = "cosine"
    interval_floor: bool = True  # an interval is never shorter than one pass over the data
    # coupling through outputs: each network's loss is CE + lambda * consistency to the
    # other's detached logits
    consistency: str = "mse"  # mse (on logits) | kl (temperature-scaled, times T^2)
    temperature: float = 2.0  # for kl
    lambda_fast: float = 0.1  # weight of F's consistency to S
    lambda_slow: float = 0.3  # weight of S's consistency to F (S learns more from F)
    # variants
    slow_mode: str = "sgd"  # sgd: S trained by its own loss | ema: S = EMA of F under S's mask
    #                         (S then starts as F, mask included; slow_growth=fast suits it)
    ema_decay: float = 0.999  # EMA decay alpha (CLS-ER style)
    ema_rate: float = 1.0  # probability r of an EMA update at each step (seeded)
    ema_warmup: bool = True  # decay min(alpha, 1 - 1/(t+1)) at step t, as CLS-ER does
    shared_weights: bool = False  # one set of weights, two masks
    same_init: bool = False  # S starts as an exact copy of F (weights and mask)
    single: bool = False  # ablation: S alone (no F, no coupling)
    # outputs
    eval_train: bool = True  # clean training accuracy of S (generalization gap)
    save_fast: bool = False  # also keep F's weights and masks as artifacts

    def validate(self, cfg=None) -> None:
        """Reject impossible settings with one message naming the fix."""
        if not 0 < self.density <= 1:
            raise ConfigError(
                f"method.density must be in (0, 1] (fraction of weights kept), got {self.density}"
            )
        if self.init not in SCOPES or self.init == "global":
            raise unknown("initial allocation (method.init)", self.init, ("erk", "er", "layerwise"))
        if self.fast_growth not in FAST_GROWTH:
            raise unknown("growth of F (method.fast_growth)", self.fast_growth, FAST_GROWTH)
        if self.slow_growth not in SLOW_GROWTH:
            raise unknown("growth of S (method.slow_growth)", self.slow_growth, SLOW_GROWTH)
        for who in ("fast", "slow"):
            interval = getattr(self, f"{who}_interval")
            alpha = getattr(self, f"{who}_alpha")
            t_end = getattr(self, f"{who}_t_end")
            decay = getattr(self, f"{who}_decay")
            if interval < 1:
                raise ConfigError(f"method.{who}_interval must be >= 1 step, got {interval}")
            if not 0 < alpha <= 1:
                raise ConfigError(
                    f"method.{who}_alpha (drop fraction) must be in (0, 1], got {alpha}"
                )
            if not 0 < t_end <= 1:
                raise ConfigError(
                    f"method.{who}_t_end is a fraction of training in (0, 1], got {t_end}"
                )
            if decay not in DECAYS:
                raise unknown(f"drop-fraction decay (method.{who}_decay)", decay, DECAYS)
        if self.consistency not in CONSISTENCY:
            raise unknown("consistency (method.consistency)", self.consistency, CONSISTENCY)
        if self.temperature <= 0:
            raise ConfigError(f"method.temperature must be > 0, got {self.temperature}")
        if self.lambda_fast < 0 or self.lambda_slow < 0:
            raise ConfigError("method.lambda_fast and method.lambda_slow must be >= 0")
        if self.slow_mode not in SLOW_MODES:
            raise unknown("slow-network mode (method.slow_mode)", self.slow_mode, SLOW_MODES)
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"method.ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0 < self.ema_rate <= 1:
            raise ConfigError(f"method.ema_rate must be in (0, 1], got {self.ema_rate}")
        if self.single and (
            self.shared_weights or self.slow_mode == "ema" or self.slow_growth == "fast"
        ):
            raise ConfigError(
                "method.single trains S alone: it cannot be combined with shared_weights, "
                "slow_mode=ema or slow_growth=fast (they need F); unset one of them"
            )
        if self.shared_weights and self.slow_mode == "ema":
            raise ConfigError(
                "method.shared_weights and method.slow_mode=ema exclude each other (with "
                "shared weights S has no weights of its own to average); choose one"
            )

    @property
    def mode(self) -> str:
        """single | shared | ema | dual (the network layout this config trains)."""
        if self.single:
            return "single"
        if self.shared_weights:
            return "shared"
        return "ema" if self.slow_mode == "ema" else "dual"


def d2sparse_from_sparsity(cfg) -> D2SparseConfig:
    """The D2-Sparse settings that run ``sparsity.method: dual_dynamic`` on one training:
    ``density``, ``init`` and ``exclude_first``/``exclude_last`` from the ``sparsity``
    section, every other setting from ``sparsity.dual_dynamic`` (D2-Sparse's defaults
    otherwise)."""
    s = cfg.sparsity
    values = {"density": s.density, "init": s.init, "exclude_first": s.exclude_first,
              "exclude_last": s.exclude_last,
              "eval_train": bool(getattr(cfg.method, "eval_train", False))}
    return _build(D2SparseConfig, {**values, **s.dual_dynamic}, "sparsity.dual_dynamic")


register_schedule("dual_dynamic", d2sparse_from_sparsity)
