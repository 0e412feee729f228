"""D2-Sparse: a fast and a slow dynamic sparse network for tiny data budgets.

Methods registered here: ``d2sparse`` (one training of the pair, S deployed alone) and
``d2sparse-grid`` (budgets x densities x seeds x arms as ordinary child runs, with the
comparison report). See ``docs/d2sparse.md`` for what follows the published abstract and what
is our reconstruction.
"""

from .anytime_strategy import d2sparse_strategy
from .build import DualSetup, build_dual
from .config import D2SparseConfig
from .coupling import DualLoss, consistency
from .dynamic import NetDynamic, SharedDynamic, Timescale, initial_masks
from .ema import SlowEMA, ema_decay
from .evolution import MaskEvolution
from .grid import D2GridConfig, arm_settings, grid_children, run_grid
from .method import FastEval, costs, run_d2sparse
from .networks import DualNet, SharedDual, extract

__all__ = [
    "D2GridConfig",
    "D2SparseConfig",
    "DualLoss",
    "DualNet",
    "DualSetup",
    "FastEval",
    "MaskEvolution",
    "NetDynamic",
    "SharedDual",
    "SharedDynamic",
    "SlowEMA",
    "Timescale",
    "arm_settings",
    "build_dual",
    "consistency",
    "costs",
    "d2sparse_strategy",
    "ema_decay",
    "extract",
    "grid_children",
    "initial_masks",
    "run_d2sparse",
    "run_grid",
]
