"""Unstructured weight sparsity for any ``torch.nn.Module``.

    from underbudget import sparsity
    masks = sparsity.prune(model, density=0.2, criterion="magnitude", scope="global")
    optimizer = sparsity.MaskedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), masks)

Masks are plain bool tensors keyed by parameter name (:class:`MaskSet`); see
``/work/shared/specs/sparsity.md`` for the contract.
"""

from underbudget.sparsity.allocation import (
    SCOPES,
    check_density,
    er_densities,
    erk_densities,
    keep_count,
    layer_targets,
    round_counts,
    select,
)
from underbudget.sparsity.cost import FlopProfile, cost, profile_flops, training_flops
from underbudget.sparsity.criteria import (
    CRITERIA,
    NEEDS,
    SynFlowScorer,
    TaylorScore,
    grasp,
    magnitude,
    random,
    register_criterion,
    score,
    snip,
    synflow,
    taylor,
)
from underbudget.sparsity.dynamic import SET, DynamicSparse, RigL
from underbudget.sparsity.enforce import MaskCallback, MaskedOptimizer, MaskEnforcer, reset_state
from underbudget.sparsity.gradual import GradualMagnitude
from underbudget.sparsity.interop import from_torch_prune, to_torch_prune
from underbudget.sparsity.mask import MaskSet
from underbudget.sparsity.measure import mask_report
from underbudget.sparsity.prune import imp_step, prune
from underbudget.sparsity.schedules import (
    SCHEDULES,
    cubic,
    cubic_density,
    gradual_densities,
    gradual_steps,
    imp_densities,
    progressive_densities,
    register_shape,
    schedule_densities,
    tau_to_density,
)
from underbudget.sparsity.targets import Targets, as_targets, prunable_parameters, resolve_targets

__all__ = [
    "CRITERIA",
    "NEEDS",
    "SCHEDULES",
    "SCOPES",
    "SET",
    "DynamicSparse",
    "FlopProfile",
    "GradualMagnitude",
    "MaskCallback",
    "MaskEnforcer",
    "MaskSet",
    "MaskedOptimizer",
    "RigL",
    "SynFlowScorer",
    "Targets",
    "TaylorScore",
    "as_targets",
    "check_density",
    "cost",
    "cubic",
    "cubic_density",
    "er_densities",
    "erk_densities",
    "from_torch_prune",
    "gradual_densities",
    "gradual_steps",
    "grasp",
    "imp_densities",
    "keep_count",
    "layer_targets",
    "magnitude",
    "mask_report",
    "profile_flops",
    "progressive_densities",
    "prunable_parameters",
    "imp_step",
    "prune",
    "random",
    "register_criterion",
    "register_shape",
    "reset_state",
    "resolve_targets",
    "round_counts",
    "schedule_densities",
    "score",
    "select",
    "snip",
    "synflow",
    "tau_to_density",
    "taylor",
    "to_torch_prune",
    "training_flops",
]
