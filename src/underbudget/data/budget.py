"""Data budgets: class-balanced fractions, k-shot subsets, stratified validation splits.

Every subset is a pure function of (labels, size, seed). Fractions and k-shot subsets share one
seeded per-class order and take a prefix of it, so smaller budgets are nested in larger ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from underbudget.errors import ConfigError, DataError
from underbudget.utils.seeding import derive_seed, generator


def as_labels(labels: Any) -> torch.Tensor:
    """Labels as a 1-D int64 CPU tensor."""
    lab = torch.as_tensor(labels)
    if lab.dim() != 1 or lab.is_floating_point():
        raise DataError(f"labels must be a 1-D integer tensor, got {lab.dtype} {tuple(lab.shape)}")
    lab = lab.to(device="cpu", dtype=torch.long)
    if lab.numel() and int(lab.min()) < 0:
        raise DataError(f"labels must be >= 0, found {int(lab.min())}")
    return lab


def class_orders(labels: Any, seed: int, key: str = "budget") -> dict[int, torch.Tensor]:
    """For each class present, its example indices in a seeded random order."""
    lab = as_labels(labels)
    perm = torch.randperm(lab.numel(), generator=generator(seed, key))
    grouped = perm[torch.sort(lab[perm], stable=True).indices]
    classes, counts = torch.unique(lab, return_counts=True)
    return {int(c): part for c, part in zip(classes, torch.split(grouped, counts.tolist()))}


def _name(c: int, classes: Sequence[str] | None) -> str:
    return (
        f"class {c} ({classes[c]!r})" if classes is not None and c < len(classes) else f"class {c}"
    )


def _round(x: float) -> int:
    """Round half up (monotone, so nested budgets stay nested)."""
    return math.floor(x + 0.5)


def _sorted_cat(parts: list[torch.Tensor]) -> torch.Tensor:
    if not parts:
        return torch.empty(0, dtype=torch.long)
    return torch.sort(torch.cat(parts)).values


def fraction_indices(labels: Any, fraction: float, seed: int = 0) -> torch.Tensor:
    """Sorted indices of a class-balanced ``fraction`` of the data (at least one per class).

    Each class keeps round(fraction * its size) examples; for one seed the subsets are nested:
    fraction 1/16 is inside 1/8, which is inside 1/4, ... up to all the data at 1.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise ConfigError(f"fraction must be a number in (0, 1], got {fraction!r}")
    if not 0.0 < float(fraction) <= 1.0:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
    orders = class_orders(labels, seed)
    return _sorted_cat(
        [idx[: max(1, _round(float(fraction) * idx.numel()))] for idx in orders.values()]
    )


def calibration_indices(labels: Any, size: int, seed: int) -> torch.Tensor:
    """The calibration draw: about ``size`` examples (class-balanced, at least one per class,
    seeded by ``seed``) that activation ranges and steps start from, in PTQ and QAT alike."""
    labels = torch.as_tensor(labels)
    return fraction_indices(labels, min(1.0, size / max(1, labels.numel())),
                            derive_seed(seed, "calibration"))


def kshot_indices(
    labels: Any,
    k: int,
    seed: int = 0,
    *,
    num_classes: int | None = None,
    classes: Sequence[str] | None = None,
) -> torch.Tensor:
    """Sorted indices of exactly ``k`` examples per class, nested across k for one seed.

    With ``num_classes``, classes absent from ``labels`` count as having zero examples.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k (images per class) must be an integer >= 1, got {k!r}")
    orders = class_orders(labels, seed)
    wanted = range(num_classes) if num_classes is not None else sorted(orders)
    parts = []
    for c in wanted:
        have = orders.get(c, torch.empty(0, dtype=torch.long))
        if have.numel() < k:
            raise DataError(
                f"{_name(c, classes)} has only {have.numel()} example(s), fewer than k={k}; "
                "lower k or use a larger training set"
            )
        parts.append(have[:k])
    return _sorted_cat(parts)


def split_validation(
    labels: Any,
    fraction: float | None = None,
    per_class: int | None = None,
    seed: int = 0,
    *,
    classes: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified (train_idx, val_idx), disjoint and covering, each sorted.

    Give either ``fraction`` (per class, rounded) or ``per_class`` (exact). Every class must keep
    at least one training example.
    """
    if (fraction is None) == (per_class is None):
        raise ConfigError("split_validation needs exactly one of fraction= or per_class=")
    if fraction is not None and not (
        isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 < fraction < 1
    ):
        raise ConfigError(f"validation fraction must be in (0, 1), got {fraction!r}")
    if per_class is not None and (
        isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1
    ):
        raise ConfigError(f"validation per_class must be an integer >= 1, got {per_class!r}")
    train, val = [], []
    for c, idx in class_orders(labels, seed, key="validation").items():
        n_val = per_class if per_class is not None else _round(float(fraction) * idx.numel())
        if idx.numel() - n_val < 1:
            raise DataError(
                f"{_name(c, classes)} has {idx.numel()} example(s); holding out {n_val} for "
                "validation would leave none for training. Lower the validation size."
            )
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return _sorted_cat(train), _sorted_cat(val)
