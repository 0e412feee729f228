"""Equal-width and equal-mass bins of top-label confidences (ECE, MCE, reliability rows).

The binning rules, ``default`` and ``legacy`` equal-width bins and equal-mass bins, are written
down in :mod:`underbudget.metrics.calibration`; this module computes them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from underbudget.metrics._inputs import (
    ArrayLike,
    MetricInputError,
    as_tensor,
    check_bins,
    check_finite,
    check_nonempty,
)

SCHEMES = ("width", "mass")
BINNINGS = ("default", "legacy")


def bin_edges(n_bins: int = 15, dtype: torch.dtype = torch.float64) -> Tensor:
    """The ``n_bins + 1`` equal-width edges ``k / n_bins``, rounded to ``dtype``, as float64."""
    n = check_bins(n_bins, "bin_edges")
    return (torch.arange(n + 1, dtype=torch.float64) / n).to(dtype).to(torch.float64)


def legacy_bin_edges(n_bins: int = 15) -> Tensor:
    """The legacy edges: float32 ``torch.linspace(0, 1, n_bins + 1)``, as float64."""
    n = check_bins(n_bins, "legacy_bin_edges")
    return torch.linspace(0.0, 1.0, n + 1, dtype=torch.float32).to(torch.float64)


def check_binning(binning: str, fn: str) -> None:
    if binning not in BINNINGS:
        raise MetricInputError(
            f"{fn}: binning must be one of {BINNINGS} ('legacy' reproduces Guo et al. 2017's "
            f"reference code), got {binning!r}"
        )


def _confidences(conf: ArrayLike, correct: ArrayLike, fn: str) -> tuple[Tensor, Tensor, Any]:
    """Validated CPU float64 confidences and 0/1 correctness, plus the confidences' dtype."""
    c = as_tensor(conf, "conf", fn)
    ok = as_tensor(correct, "correct", fn)
    if c.dim() != 1 or ok.dim() != 1 or c.shape[0] != ok.shape[0]:
        raise MetricInputError(
            f"{fn}: conf and correct must be 1-D of the same length, got shapes "
            f"{tuple(c.shape)} and {tuple(ok.shape)}"
        )
    check_nonempty(c.shape[0], fn)
    if not c.is_floating_point():
        raise MetricInputError(f"{fn}: conf must be floating point, got {c.dtype}")
    low, high = check_finite(c, "conf", fn)
    if low < 0.0 or high > 1.0:
        raise MetricInputError(
            f"{fn}: confidences must lie in [0, 1], got [{low:.4g}, {high:.4g}]; "
            "pass probabilities, not logits"
        )
    dtype = c.dtype
    c = c.detach().cpu().to(torch.float64)
    ok = ok.detach().cpu()
    if ok.dtype != torch.bool:
        ok_f = ok.to(torch.float64)
        if not bool(((ok_f == 0) | (ok_f == 1)).all()):
            raise MetricInputError(f"{fn}: correct must be booleans or 0/1 values")
        ok = ok_f != 0
    return c, ok.to(torch.float64), dtype


def _bin_ids(conf: Tensor, n_bins: int, scheme: str, dtype: Any, binning: str) -> Tensor:
    """Bin index of every sample (rules in :mod:`~underbudget.metrics.calibration`); ``n_bins``
    means "in no bin"."""
    if scheme == "width" and binning == "legacy":
        ids = torch.bucketize(conf, legacy_bin_edges(n_bins)[1:-1], right=False)
        return torch.where(conf > 0, ids, torch.full_like(ids, n_bins))
    if scheme == "width":
        inner = bin_edges(n_bins, dtype)[1:-1]
        return torch.bucketize(conf, inner, right=False)
    n = conf.shape[0]
    order = torch.argsort(conf, stable=True)
    sizes = [n // n_bins + (1 if b < n % n_bins else 0) for b in range(n_bins)]
    ids = torch.empty(n, dtype=torch.long)
    ids[order] = torch.repeat_interleave(torch.arange(n_bins), torch.tensor(sizes))
    return ids


def bin_stats(
    conf: ArrayLike,
    correct: ArrayLike,
    n_bins: int,
    scheme: str,
    fn: str,
    binning: str = "default",
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-bin count, confidence sum, correct sum, lower and upper edge; and N."""
    n_bins = check_bins(n_bins, fn)
    if scheme not in SCHEMES:
        raise MetricInputError(f"{fn}: scheme must be one of {SCHEMES}, got {scheme!r}")
    check_binning(binning, fn)
    c, ok, dtype = _confidences(conf, correct, fn)
    ids = _bin_ids(c, n_bins, scheme, dtype, binning)
    count = torch.bincount(ids, minlength=n_bins + 1)[:n_bins]
    conf_sum = torch.bincount(ids, weights=c, minlength=n_bins + 1)[:n_bins]
    correct_sum = torch.bincount(ids, weights=ok, minlength=n_bins + 1)[:n_bins]
    if scheme == "width":
        edges = legacy_bin_edges(n_bins) if binning == "legacy" else bin_edges(n_bins)
        lo, hi = edges[:-1], edges[1:]
    else:
        lo = torch.full((n_bins,), float("nan"), dtype=torch.float64)
        hi = lo.clone()
        lo.scatter_reduce_(0, ids, c, reduce="amin", include_self=False)
        hi.scatter_reduce_(0, ids, c, reduce="amax", include_self=False)
    return count, conf_sum, correct_sum, lo, hi, torch.tensor(c.shape[0])
