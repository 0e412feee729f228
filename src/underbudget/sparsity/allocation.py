"""How a density budget is shared among layers, and nested top-k selection of masks.

Scopes: ``global`` (one threshold across layers), ``layerwise`` (every layer at the same
density), ``erk`` and ``er`` (RigL's Erdos-Renyi(-Kernel) allocation), or an explicit mapping
``{param_name: density}``. Layer counts are rounded by largest remainder so that the kept count
is exactly ``round(d * N)`` (at least one weight), never more than a layer has alive, so masks
stay nested: pruning never revives a weight.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from underbudget.errors import ConfigError, unknown
from underbudget.sparsity.mask import MaskSet
from underbudget.sparsity.targets import TargetsLike, resolve_targets
from underbudget.utils.seeding import generator

SCOPES = ("global", "layerwise", "erk", "er")
_EXACT_LIMIT = 1 << 20  # below this many values, exact kthvalue is fast enough
_SAMPLE = 1 << 17


def check_density(density: float, what: str = "density") -> float:
    """Return ``density`` as a float or raise ConfigError unless it lies in (0, 1]."""
    try:
        value = float(density)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number in (0, 1], got {density!r}") from None
    if not (0.0 < value <= 1.0) or math.isnan(value):
        raise ConfigError(
            f"{what} must be in (0, 1] (fraction of weights kept; sparsity = 1 - density), "
            f"got {density!r}"
        )
    return value


def _shapes(source: nn.Module | MaskSet | Mapping, targets: TargetsLike) -> dict[str, tuple]:
    if isinstance(source, nn.Module):
        return {n: tuple(p.shape) for n, p in resolve_targets(source, targets).items()}
    if isinstance(source, MaskSet):
        return {n: tuple(m.shape) for n, m in source.items()}
    return {n: tuple(s.shape) if isinstance(s, Tensor) else tuple(s) for n, s in source.items()}


def _raw_er(shape: tuple, kernel: bool) -> float:
    if len(shape) < 2:
        return 1.0
    dims = [shape[0], shape[1]] + (list(shape[2:]) if kernel else [])
    return sum(dims) / math.prod(shape)


def erk_densities(
    source: nn.Module | MaskSet | Mapping,
    density: float,
    targets: TargetsLike = None,
    kernel: bool = True,
    power: float = 1.0,
) -> dict[str, float]:
    """Per-layer densities of the Erdos-Renyi-Kernel allocation (RigL) for a total ``density``.

    A layer of shape (n_out, n_in, k_h, k_w) gets raw score (n_out+n_in+k_h+k_w)/(n_out n_in
    k_h k_w) (ER, ``kernel=False``: (n_out+n_in)/(n_out n_in)), raised to ``power``; eps solves
    sum(eps raw_l N_l) = d sum(N_l); layers with eps raw_l > 1 become dense and eps is solved
    again on the rest. ``source`` is a model (with ``targets``), a MaskSet or ``{name: shape}``.
    """
    density = check_density(density)
    shapes = _shapes(source, targets)
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: _raw_er(s, kernel) ** power for n, s in shapes.items()}
    budget = density * sum(sizes.values())
    dense: set[str] = set()
    while True:
        rest = [n for n in shapes if n not in dense]
        if not rest:
            break
        remaining = budget - sum(sizes[n] for n in dense)
        eps = remaining / sum(raw[n] * sizes[n] for n in rest)
        over = [n for n in rest if eps * raw[n] > 1.0]
        if not over:
            break
        dense.update(over)
    return {n: 1.0 if n in dense else min(1.0, eps * raw[n]) for n in shapes}


def er_densities(
    source: nn.Module | MaskSet | Mapping, density: float, targets: TargetsLike = None
) -> dict[str, float]:
    """Per-layer densities of the Erdos-Renyi allocation (kernel dimensions ignored)."""
    return erk_densities(source, density, targets, kernel=False)


def layer_targets(
    masks: MaskSet, density: float, scope: str | Mapping[str, float]
) -> dict[str, float] | None:
    """Per-layer densities for ``scope`` (None for ``global``: one threshold decides)."""
    if isinstance(scope, Mapping):
        missing = [n for n in masks if n not in scope]
        if missing:
            raise ConfigError(
                f"per-layer densities miss {missing[0]!r} (and {len(missing) - 1} more)"
            )
        return {n: check_density(scope[n], f"density of {n}") for n in masks}
    if scope == "global":
        return None
    if scope in ("layerwise", "uniform"):
        return dict.fromkeys(masks, density)
    if scope == "erk":
        return erk_densities(masks, density)
    if scope == "er":
        return er_densities(masks, density)
    raise unknown("scope", scope, SCOPES)


def round_counts(targets: Sequence[float], caps: Sequence[int], total: int) -> list[int]:
    """Integers close to ``targets`` summing to ``total``, each within [0, cap].

    Largest-remainder rounding: floors first, then one more to the largest fractional parts
    (ties to the earlier layer), then to any layer with room.
    """
    if total > sum(caps):
        raise ConfigError(f"cannot keep {total} weights: only {sum(caps)} are alive")
    counts = [max(0, min(int(math.floor(t)), c)) for t, c in zip(targets, caps)]
    left = total - sum(counts)
    if left < 0:  # only when targets exceed the total; take from the smallest remainders
        order = sorted(range(len(counts)), key=lambda i: (targets[i] - math.floor(targets[i]), i))
        while left < 0:
            for i in order:
                if left == 0:
                    break
                if counts[i] > 0:
                    counts[i] -= 1
                    left += 1
        return counts
    order = sorted(range(len(counts)), key=lambda i: (-(targets[i] - math.floor(targets[i])), i))
    while left > 0:
        progressed = False
        for i in order:
            if left == 0:
                break
            if counts[i] < caps[i]:
                counts[i] += 1
                left -= 1
                progressed = True
        if not progressed:
            break
    return counts


def keep_count(density: float, total: int) -> int:
    """Kept weights for a density: round(d * N), at least one."""
    return max(1, min(total, int(round(density * total))))


def _kth_largest(parts: list[Tensor], k: int, generator: torch.Generator) -> Tensor:
    """The k-th largest value over several flat tensors (no NaN), without sorting them all.

    Large inputs use a random sample to bracket the answer, then an exact kthvalue on the few
    values inside the bracket; the answer is always exact.
    """
    n = sum(p.numel() for p in parts)
    if n <= _EXACT_LIMIT:
        v = torch.cat(parts) if len(parts) > 1 else parts[0]
        return v.kthvalue(n - k + 1).values
    ends = torch.cumsum(torch.tensor([p.numel() for p in parts]), 0)
    idx = torch.randint(n, (_SAMPLE,), generator=generator).sort().values
    cuts = torch.searchsorted(idx, ends).tolist()
    pieces, start, offset = [], 0, 0
    for p, cut, end in zip(parts, cuts, ends.tolist()):
        if cut > start:
            pieces.append(p[(idx[start:cut] - offset).to(p.device)].cpu())
        start, offset = cut, end
    sample = torch.cat(pieces).sort().values
    rank = (n - k) / n * _SAMPLE  # ascending position of the answer in the sample
    slack = int(4 * math.sqrt(_SAMPLE)) + 8
    lo = sample[int(rank) - slack] if int(rank) - slack > 0 else sample.new_tensor(-math.inf)
    hi = (
        sample[int(rank) + slack]
        if int(rank) + slack < _SAMPLE - 1
        else sample.new_tensor(math.inf)
    )
    above = sum(int((p > hi.to(p.device)).count_nonzero()) for p in parts)
    need = k - above  # rank of the answer from the top, inside [lo, hi]
    if need >= 1:
        bottom = math.isinf(float(lo)) and float(lo) < 0
        window = torch.cat(
            [
                p[
                    ((p > lo.to(p.device)) if bottom else (p >= lo.to(p.device)))
                    & (p <= hi.to(p.device))
                ].cpu()
                for p in parts
            ]
        )
        if need <= window.numel():
            return window.kthvalue(window.numel() - need + 1).values
        if bottom:  # everything finite is kept; the rest of the answer sits at -inf
            return lo.clone()
    v = torch.cat([p.cpu() for p in parts])
    return v.kthvalue(n - k + 1).values


def _prepared(scores: Mapping[str, Tensor], masks: MaskSet) -> dict[str, Tensor]:
    """Scores with pruned positions at -inf and NaN treated as the lowest score."""
    out = {}
    for name, mask in masks.items():
        if name not in scores:
            raise ConfigError(f"no score for prunable parameter {name!r}")
        s = scores[name].detach()
        if s.shape != mask.shape:
            raise ConfigError(
                f"score for {name!r} has shape {tuple(s.shape)}, mask {tuple(mask.shape)}"
            )
        if not s.is_floating_point():
            s = s.float()
        if int(mask.count_nonzero()) < mask.numel():
            s = s.masked_fill(~mask.to(s.device), -math.inf)
        if bool(torch.isnan(s).any()):
            s = s.nan_to_num(nan=-math.inf, posinf=math.inf, neginf=-math.inf)
        out[name] = s
    return out


def _keep_top(
    prepared: dict[str, Tensor],
    masks: MaskSet,
    names: list[str],
    k: int,
    generator: torch.Generator,
) -> dict[str, Tensor]:
    """New masks keeping the k best alive weights among ``names`` (ties: earliest position)."""
    alive = sum(int(masks[n].count_nonzero()) for n in names)
    if k >= alive:
        return {n: masks[n].clone() for n in names}
    flats = [prepared[n].reshape(-1) for n in names]
    dtype = torch.float64 if any(f.dtype == torch.float64 for f in flats) else torch.float32
    flats = [f.to(dtype) for f in flats]
    thr = _kth_largest(flats, k, generator) if k > 0 else None
    out = {}
    kept = 0
    for n in names:
        s = prepared[n]
        if thr is None:
            new = torch.zeros_like(masks[n])
        else:
            new = s > thr.to(device=s.device, dtype=s.dtype)
            new &= masks[n].to(s.device)
        kept += int(new.count_nonzero())
        out[n] = new
    need = k - kept
    if need > 0:  # ties at the threshold: keep the earliest alive ones
        for n in names:
            if need == 0:
                break
            s = prepared[n]
            ties = (s == thr.to(device=s.device, dtype=s.dtype)) & masks[n].to(s.device)
            pos = torch.nonzero(ties.reshape(-1)).reshape(-1)[:need]
            out[n].view(-1)[pos] = True
            need -= pos.numel()
    return {n: m.to(masks[n].device) for n, m in out.items()}


def select(
    scores: Mapping[str, Tensor],
    masks: MaskSet,
    density: float,
    scope: str | Mapping[str, float] = "global",
    seed: int = 0,
) -> dict[str, Tensor]:
    """Nested masks keeping the highest-scoring alive weights at ``density``.

    Only alive weights compete, so pruning from d1 to d2 < d1 removes exactly the
    lowest-scoring alive weights. Returns ``{name: bool mask}``; the input is not changed.
    """
    density = check_density(density)
    gen = generator(seed, "select")
    prepared = _prepared(scores, masks)
    names = masks.names()
    total = masks.numel()
    alive = masks.layer_nonzeros()
    k_total = keep_count(density, total)
    if k_total > sum(alive.values()):
        raise ConfigError(
            f"cannot prune to density {density:.4g}: the masks keep only "
            f"{masks.density():.4g} and pruning never revives weights; ask for a density at or "
            "below the current one, or start from fresh masks"
        )
    per_layer = layer_targets(masks, density, scope)
    if per_layer is None:
        return _keep_top(prepared, masks, names, k_total, gen)
    wanted = [per_layer[n] * masks[n].numel() for n in names]
    if isinstance(scope, Mapping):  # explicit per-layer densities set the total
        k_total = max(1, min(int(round(sum(wanted))), sum(alive.values())))
    counts = round_counts(wanted, [alive[n] for n in names], k_total)
    out = {}
    for n, k in zip(names, counts):
        out.update(_keep_top(prepared, masks, [n], k, gen))
    return out
