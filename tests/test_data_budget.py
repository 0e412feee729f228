"""Data budgets: class-balanced fractions, exact k-shot, stratified validation; all nested,
seeded and validated."""

from __future__ import annotations

import math

import pytest
import torch

from underbudget.data import fraction_indices, kshot_indices, split_validation
from underbudget.errors import ConfigError, DataError

# imbalanced labels: class c has 20 + 7c examples, shuffled
LABELS = torch.cat([torch.full((20 + 7 * c,), c) for c in range(5)])
LABELS = LABELS[torch.randperm(LABELS.numel(), generator=torch.Generator().manual_seed(0))]
COUNTS = torch.bincount(LABELS).tolist()


def per_class(idx: torch.Tensor) -> list[int]:
    return torch.bincount(LABELS[idx], minlength=5).tolist()


def test_fraction_is_class_balanced_sorted_and_unique():
    for fraction in (1 / 16, 0.1, 0.25, 0.5, 1.0):
        idx = fraction_indices(LABELS, fraction, seed=0)
        assert idx.dtype == torch.int64 and torch.equal(idx, idx.unique())
        expected = [max(1, math.floor(fraction * n + 0.5)) for n in COUNTS]
        assert per_class(idx) == expected
    assert torch.equal(fraction_indices(LABELS, 1.0, seed=3), torch.arange(LABELS.numel()))


def test_fractions_are_nested_and_reproducible():
    fractions = [1 / 16, 1 / 8, 1 / 4, 1 / 2, 1]
    for seed in (0, 1):
        sets = [set(fraction_indices(LABELS, f, seed).tolist()) for f in fractions]
        assert all(small <= big for small, big in zip(sets, sets[1:]))
    assert torch.equal(fraction_indices(LABELS, 0.3, 4), fraction_indices(LABELS, 0.3, 4))
    assert not torch.equal(fraction_indices(LABELS, 0.3, 4), fraction_indices(LABELS, 0.3, 5))


def test_kshot_exact_nested_and_inside_the_matching_fraction():
    prev: set[int] = set()
    for k in (1, 2, 5, 10, 20):
        idx = kshot_indices(LABELS, k, seed=2)
        assert per_class(idx) == [k] * 5
        assert prev <= set(idx.tolist())
        prev = set(idx.tolist())
    # the same seeded per-class order serves both budgets
    assert set(kshot_indices(LABELS, 5, 2).tolist()) <= set(
        fraction_indices(LABELS, 0.25, 2).tolist()
    )
    assert not torch.equal(kshot_indices(LABELS, 5, 2), kshot_indices(LABELS, 5, 3))


def test_kshot_errors_name_the_class():
    with pytest.raises(DataError, match=r"class 0 \('airplane'\) has only 20"):
        kshot_indices(LABELS, 21, classes=["airplane", "b", "c", "d", "e"])
    with pytest.raises(DataError, match="class 5 has only 0"):
        kshot_indices(LABELS, 1, num_classes=6)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="k"):
            kshot_indices(LABELS, bad)


def test_fraction_argument_errors():
    for bad in (0, -0.1, 1.01, "half", None):
        with pytest.raises(ConfigError, match="fraction"):
            fraction_indices(LABELS, bad)
    with pytest.raises(DataError, match=">= 0"):
        fraction_indices(torch.tensor([0, -1, 1]), 0.5)
    with pytest.raises(DataError, match="1-D integer"):
        fraction_indices(torch.rand(5), 0.5)


def test_split_validation_is_stratified_disjoint_and_covering():
    train, val = split_validation(LABELS, fraction=0.2, seed=1)
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(LABELS.numel()))
    assert per_class(val) == [math.floor(0.2 * n + 0.5) for n in COUNTS]
    again = split_validation(LABELS, fraction=0.2, seed=1)
    assert torch.equal(again[1], val)
    assert not torch.equal(split_validation(LABELS, fraction=0.2, seed=2)[1], val)
    train, val = split_validation(LABELS, per_class=3, seed=0)
    assert per_class(val) == [3] * 5 and len(train) == LABELS.numel() - 15


def test_split_validation_errors():
    with pytest.raises(DataError, match="class 0 has 20 example.*none for training"):
        split_validation(LABELS, per_class=20)
    tiny = torch.tensor([0, 0, 1])
    with pytest.raises(DataError, match="class 1"):
        split_validation(tiny, fraction=0.5)
    with pytest.raises(ConfigError, match="exactly one"):
        split_validation(LABELS)
    with pytest.raises(ConfigError, match="exactly one"):
        split_validation(LABELS, fraction=0.1, per_class=2)
    with pytest.raises(ConfigError, match="fraction"):
        split_validation(LABELS, fraction=1.0)
    with pytest.raises(ConfigError, match="per_class"):
        split_validation(LABELS, per_class=0)
