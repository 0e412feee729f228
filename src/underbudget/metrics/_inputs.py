"""Input checks shared by the metrics: one clear error instead of a wrong number.

Every metric accepts a tensor, a numpy array, or a list/tuple of per-batch tensors (which is
concatenated first), so a whole evaluation set collected batch by batch is scored as one set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from underbudget.errors import UnderbudgetError

#: what the metrics accept for one array argument
ArrayLike = Tensor | np.ndarray | Sequence[Any]


class MetricInputError(UnderbudgetError, ValueError):
    """Inputs to a metric have the wrong shape, type or values."""


def as_tensor(x: ArrayLike, name: str, fn: str) -> Tensor:
    """Return ``x`` as one tensor, concatenating a list/tuple of per-batch tensors or arrays."""
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, (list, tuple)):
        if len(x) > 0 and isinstance(x[0], (Tensor, np.ndarray)):
            parts = [as_tensor(p, name, fn) for p in x]
            devices = {p.device for p in parts}
            if len(devices) > 1:
                raise MetricInputError(
                    f"{fn}: the batches of {name} live on several devices "
                    f"{sorted(map(str, devices))}; move them to one device (e.g. .cpu()) first"
                )
            try:
                return torch.cat(parts, dim=0)
            except RuntimeError as exc:
                shapes = sorted({tuple(p.shape[1:]) for p in parts})
                raise MetricInputError(
                    f"{fn}: the batches of {name} cannot be concatenated (trailing shapes "
                    f"{shapes}); every batch must have the same number of classes"
                ) from exc
        try:
            return torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise MetricInputError(
                f"{fn}: {name} must be a tensor, a numpy array or a list of numbers/tensors"
            ) from exc
    raise MetricInputError(
        f"{fn}: {name} must be a tensor, a numpy array or a list of per-batch tensors, "
        f"not {type(x).__name__}"
    )


def to_float64(t: Tensor) -> Tensor:
    """``t`` as float64, on CPU when its device has no float64 support (MPS)."""
    if t.device.type == "mps":
        t = t.cpu()
    return t.to(torch.float64)


def check_finite(t: Tensor, name: str, fn: str) -> tuple[float, float]:
    """Reject NaN and infinity, which would silently poison every average; return (min, max).

    NaN propagates through min/max and infinity shows up in one of them, so one pass suffices.
    """
    lo, hi = (float(v) for v in torch.aminmax(t))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise MetricInputError(
            f"{fn}: {name} contains NaN or infinity; check the model outputs "
            "(a diverged run or an overflow in half precision)"
        )
    return lo, hi


def check_nonempty(n: int, fn: str) -> None:
    """A metric over zero samples is undefined."""
    if n == 0:
        raise MetricInputError(f"{fn}: got zero samples; evaluate on a non-empty set")


def check_scores(x: ArrayLike, name: str, fn: str) -> Tensor:
    """A finite 2-D (N, C) tensor of logits or probabilities."""
    return _scores(x, name, fn)[0]


def _scores(x: ArrayLike, name: str, fn: str) -> tuple[Tensor, float, float]:
    """:func:`check_scores` plus the smallest and largest value."""
    t = as_tensor(x, name, fn)
    if t.dim() != 2:
        raise MetricInputError(
            f"{fn}: {name} must be 2-D (samples, classes), got shape {tuple(t.shape)}; "
            "for binary outputs p pass torch.stack([1 - p, p], dim=1)"
        )
    if not t.is_floating_point():
        raise MetricInputError(f"{fn}: {name} must be floating point, got {t.dtype}")
    check_nonempty(t.shape[0], fn)
    if t.shape[1] == 0:
        raise MetricInputError(f"{fn}: {name} has zero classes")
    return (t, *check_finite(t, name, fn))


def check_probs(x: ArrayLike, fn: str) -> Tensor:
    """A 2-D tensor of probabilities: values in [0, 1], rows summing to 1.

    The row-sum tolerance is 1e-3 for 16-bit floats and 1e-4 otherwise. Raw logits fail this
    check, which is the point: calibration is defined on probabilities.
    """
    p, low, high = _scores(x, "probs", fn)
    sums = p.sum(dim=1, dtype=torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else None)
    tol = 1e-3 if p.dtype in (torch.float16, torch.bfloat16) else 1e-4
    worst = float((sums - 1.0).abs().max())
    if low < 0.0 or high > 1.0 + tol or worst > tol:
        raise MetricInputError(
            f"{fn}: probs must be probabilities (values in [0, 1], each row summing to 1); got "
            f"values in [{low:.4g}, {high:.4g}] and row sums off by up to {worst:.3g}. Pass "
            "logits.softmax(dim=1), or use calibration_report(logits, labels) for logits"
        )
    return p


def check_labels(
    x: ArrayLike, n: int, fn: str, num_classes: int | None = None, name: str = "labels"
) -> Tensor:
    """A 1-D int64 tensor of ``n`` class indices in ``[0, num_classes)``."""
    y = as_tensor(x, name, fn)
    if y.dim() != 1:
        raise MetricInputError(
            f"{fn}: {name} must be 1-D class indices, got shape {tuple(y.shape)}; "
            "for one-hot labels pass labels.argmax(dim=1)"
        )
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise MetricInputError(
            f"{fn}: {name} must be integer class indices, got {y.dtype}; convert with .long()"
        )
    if y.shape[0] != n:
        raise MetricInputError(
            f"{fn}: {n} predictions but {y.shape[0]} {name}; pass the {name} of the same samples"
        )
    check_nonempty(n, fn)
    y = y.long()
    low, high = int(y.min()), int(y.max())
    if low < 0 or (num_classes is not None and high >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else "[0, ...)"
        raise MetricInputError(
            f"{fn}: {name} must lie in {bound}, got values in [{low}, {high}]; "
            "drop ignored samples (e.g. label -100) before scoring"
        )
    return y


def predictions(x: ArrayLike, fn: str) -> tuple[Tensor, int | None]:
    """Class predictions from 2-D scores (argmax) or 1-D integer predictions.

    Returns the int64 predictions and the number of classes when scores reveal it.
    """
    t = as_tensor(x, "logits_or_preds", fn)
    if t.dim() == 2:
        t = check_scores(t, "logits_or_preds", fn)
        return t.argmax(dim=1), t.shape[1]
    if t.dim() == 1 and not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
        check_nonempty(t.shape[0], fn)
        if int(t.min()) < 0:
            raise MetricInputError(f"{fn}: predicted class indices must be >= 0")
        return t.long(), None
    raise MetricInputError(
        f"{fn}: pass 2-D scores (samples, classes) or 1-D integer predictions, got "
        f"shape {tuple(t.shape)} and dtype {t.dtype}"
    )


def check_bins(n_bins: int, fn: str) -> int:
    """A positive integer number of bins."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise MetricInputError(f"{fn}: n_bins must be a positive integer, got {n_bins!r}")
    return int(n_bins)
