"""Classification metrics against hand counts and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from underbudget.errors import UnderbudgetError
from underbudget.metrics import (
    MetricInputError,
    accuracy,
    confusion_matrix,
    error_count,
    per_class_accuracy,
    topk_accuracy,
)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(203, 7, generator=g)
    labels = torch.randint(0, 7, (203,), generator=g)
    return logits, labels


def test_hand_example_from_logits_and_preds():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.5, 0.2, 0.9], [1.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])  # correct, correct, wrong (pred 2), wrong (pred 0)
    assert accuracy(logits, labels) == 0.5
    assert error_count(logits, labels) == 2
    assert accuracy(torch.tensor([0, 1, 2, 0]), labels) == 0.5
    assert accuracy(np.array([0, 1, 2, 0]), [0, 1, 1, 2]) == 0.5


def test_matches_sklearn(data):
    logits, labels = data
    preds = logits.argmax(1)
    assert accuracy(logits, labels) == pytest.approx(skm.accuracy_score(labels, preds), abs=0)
    assert error_count(logits, labels) == int((preds != labels).sum())
    for k in (1, 3, 5):
        ref = skm.top_k_accuracy_score(labels, logits.numpy(), k=k, labels=list(range(7)))
        assert topk_accuracy(logits, labels, k) == pytest.approx(ref, abs=1e-12)
    cm = confusion_matrix(preds, labels, 7)
    assert cm.dtype == torch.int64
    np.testing.assert_array_equal(cm.numpy(), skm.confusion_matrix(labels, preds, labels=range(7)))
    recall = skm.recall_score(labels, preds, average=None, labels=list(range(7)), zero_division=0)
    np.testing.assert_allclose(per_class_accuracy(logits, labels).numpy(), recall, atol=1e-12)


def test_whole_set_not_batch_mean(data):
    logits, labels = data
    chunks = list(logits.split(50))  # 50, 50, 50, 50, 3: a short last batch
    label_chunks = list(labels.split(50))
    whole = accuracy(logits, labels)
    assert accuracy(chunks, label_chunks) == whole
    batch_mean = sum(accuracy(c, y) for c, y in zip(chunks, label_chunks)) / len(chunks)
    assert abs(batch_mean - whole) > 1e-3


def test_topk_full_width_is_one_and_k1_is_accuracy(data):
    logits, labels = data
    assert topk_accuracy(logits, labels, 7) == 1.0
    assert topk_accuracy(logits, labels, 1) == accuracy(logits, labels)


def test_per_class_accuracy_absent_class_is_nan():
    preds = torch.tensor([0, 0, 1, 1])
    labels = torch.tensor([0, 1, 1, 1])
    acc = per_class_accuracy(preds, labels, num_classes=3)
    assert acc[0] == 1.0 and acc[1] == pytest.approx(2 / 3)
    assert math.isnan(acc[2])
    cm = confusion_matrix(preds, labels)  # num_classes inferred: 2
    assert cm.tolist() == [[1, 0], [1, 2]]  # rows are true labels


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((torch.randn(4, 3), torch.tensor([0, 1, 2])), "4 predictions but 3 labels"),
        ((torch.randn(4, 3), torch.tensor([0.0, 1.0, 2.0, 1.0])), "integer class indices"),
        ((torch.tensor([0.0, 1.0]), torch.tensor([0, 1])), "1-D integer predictions"),
        ((torch.randn(3, 3), torch.tensor([0, 1, 3])), "must lie in [0, 3)"),
        ((torch.randn(2, 3), torch.tensor([0, -100])), "label -100"),
        ((torch.empty(0, 3), torch.empty(0, dtype=torch.long)), "zero samples"),
        ((torch.tensor([[float("nan"), 0.0]]), torch.tensor([0])), "NaN"),
    ],
)
def test_clear_errors(args, fragment):
    with pytest.raises(MetricInputError) as info:
        accuracy(*args)
    assert fragment in str(info.value)
    assert isinstance(info.value, UnderbudgetError)


def test_topk_rejects_bad_k(data):
    logits, labels = data
    with pytest.raises(MetricInputError, match="k must be an integer in"):
        topk_accuracy(logits, labels, 8)


def test_confusion_matrix_rejects_prediction_beyond_num_classes():
    with pytest.raises(MetricInputError, match="check num_classes"):
        confusion_matrix(torch.tensor([0, 4]), torch.tensor([0, 1]), num_classes=3)
