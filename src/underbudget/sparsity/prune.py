"""One call to score, allocate and apply: ``prune(model, density, criterion, scope)``; one IMP
level (prune, rewind): :func:`imp_step`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from underbudget.errors import ConfigError, unknown
from underbudget.sparsity.allocation import SCOPES, check_density, select
from underbudget.sparsity.criteria import CRITERIA, LossFn, SynFlowScorer, _input_shape, score
from underbudget.sparsity.mask import MaskSet
from underbudget.sparsity.targets import TargetsLike, unwrap

#: SynFlow's default number of rounds when pruning at initialisation (Tanaka et al., 2020)
SYNFLOW_ITERATIONS = 100


def prune(
    model: nn.Module,
    density: float,
    criterion: str = "magnitude",
    scope: str | Mapping[str, float] = "global",
    data: Iterable | None = None,
    targets: TargetsLike = None,
    masks: MaskSet | None = None,
    loss_fn: LossFn | None = None,
    seed: int = 0,
    iterations: int | None = None,
    scores: Mapping[str, Tensor] | None = None,
    **criterion_kwargs: Any,
) -> MaskSet:
    """Prune ``model`` to ``density`` (fraction of prunable weights kept) and apply the masks.

    With ``masks`` the pruning is nested: only alive weights are scored and the same MaskSet is
    updated in place (so enforcers see the change). ``iterations`` > 1 prunes in rounds on the
    exponential schedule d0 (d/d0)^(r/R), rescoring each round (SynFlow's default is 100
    rounds; every other criterion defaults to one). ``scores`` bypasses the criterion.
    """
    density = check_density(density)
    if criterion not in CRITERIA and scores is None:
        raise unknown("criterion", criterion, CRITERIA)
    if not isinstance(scope, Mapping) and scope not in SCOPES and scope != "uniform":
        raise unknown("scope", scope, SCOPES)
    if criterion in ("snip", "grasp") and data is None and scores is None:
        raise ConfigError(
            f"criterion {criterion!r} needs data: pass data=<iterable of (x, y) batches> "
            "(e.g. a small scoring subset of the training set); 'magnitude', 'random' and "
            "'synflow' need none"
        )
    base = unwrap(model)
    if masks is None:
        masks = MaskSet.from_model(base, targets)  # all kept: nothing to apply yet
    else:
        masks.validate(base)
        masks.apply(base)  # nested pruning starts from exactly zero pruned weights
    masks.bind(model)
    if iterations is None:
        iterations = SYNFLOW_ITERATIONS if criterion == "synflow" and scores is None else 1
    if int(iterations) < 1:
        raise ConfigError(f"iterations must be >= 1, got {iterations}")
    start = masks.density()
    if density > start + 1e-12:
        raise ConfigError(
            f"cannot prune to density {density:.4g}: the masks keep only {start:.4g} and "
            "pruning never revives weights; ask for a density at or below the current one"
        )
    scorer = None
    if criterion == "synflow" and scores is None:
        shape = _input_shape(criterion_kwargs.pop("input_shape", None), data)
        dtype = criterion_kwargs.pop("dtype", None)
        if criterion_kwargs:
            key = next(iter(criterion_kwargs))
            raise ConfigError(
                f"criterion 'synflow' has no option {key!r}; it accepts: input_shape, dtype"
            )
        scorer = SynFlowScorer(base, shape, **({"dtype": dtype} if dtype is not None else {}))
    for r in range(1, int(iterations) + 1):
        target = start * (density / start) ** (r / int(iterations))
        if r == int(iterations):
            target = density
        if scores is not None:
            round_scores = scores
        elif scorer is not None:
            round_scores = score_synflow(scorer, masks)
        else:
            round_scores = score(
                criterion, base, masks, data=data, loss_fn=loss_fn, seed=seed, **criterion_kwargs
            )
        new = select(round_scores, masks, target, scope, seed=seed)
        del round_scores  # free the scores before the device masks are built
        masks.update(new)
        del new
        masks.apply(base)
    return masks


def score_synflow(scorer: SynFlowScorer, masks: MaskSet) -> dict[str, Tensor]:
    """SynFlow scores of one round with pruned positions at -inf."""
    import math

    out = {}
    for name, s in scorer(masks).items():
        out[name] = s.masked_fill(~masks[name].to(s.device), -math.inf).nan_to_num(
            nan=-math.inf, posinf=math.inf, neginf=-math.inf
        )
    return out


def imp_step(model: nn.Module, density: float, rewind: Mapping[str, Tensor],
             criterion: str = "magnitude", **prune_kwargs: Any) -> MaskSet:
    """One level of iterative magnitude pruning: prune the trained ``model`` to ``density``
    (nested in ``masks`` when given, see :func:`prune`), rewind every tensor of its state to
    ``rewind`` (a state dict: the initialisation or a late-rewinding point) and apply the
    masks to the rewound weights. Returns the masks. The lottery method, the anytime ``imp``
    strategy and compress_transfer's IMP variants all take this step."""
    masks = prune(model, density, criterion, **prune_kwargs)
    state = model.state_dict()
    with torch.no_grad():
        for key, value in rewind.items():
            state[key].copy_(value)
    masks.apply(model)
    return masks
