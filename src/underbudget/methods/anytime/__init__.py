"""Anytime learning at macroscale (ALMA) with Anytime Progressive Pruning and baselines."""

from ..registry import register_method
from .config import AnytimeConfig
from .plan import StreamPlan, plan_stream
from .report import anytime_report
from .run import run_anytime
from .strategies import STRATEGIES, StrategySetup, StreamContext, register_strategy

register_method("anytime", AnytimeConfig,
                "anytime learning over megabatches: dense, OSP, APP, GMP, RigL, SET, IMP",
                report=anytime_report)(run_anytime)

__all__ = ["AnytimeConfig", "StreamPlan", "plan_stream", "run_anytime", "anytime_report",
           "STRATEGIES", "StrategySetup", "StreamContext", "register_strategy"]
