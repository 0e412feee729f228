"""Classification metrics over a whole evaluation set.

Every function counts over all samples at once (never a mean of per-batch means, which
over-weights a short last batch). Inputs may be one tensor or a list of per-batch tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from underbudget.metrics._inputs import (
    ArrayLike,
    MetricInputError,
    check_labels,
    check_scores,
    predictions,
)


def _preds_and_labels(
    logits_or_preds: ArrayLike, labels: ArrayLike, fn: str, num_classes: int | None = None
) -> tuple[Tensor, Tensor, int | None]:
    preds, width = predictions(logits_or_preds, fn)
    if num_classes is not None and width is not None and width != num_classes:
        raise MetricInputError(
            f"{fn}: scores have {width} classes but num_classes={num_classes}; make them agree"
        )
    classes = num_classes if num_classes is not None else width
    y = check_labels(labels, preds.shape[0], fn, num_classes=classes).to(preds.device)
    if classes is not None and int(preds.max()) >= classes:
        raise MetricInputError(
            f"{fn}: a prediction is {int(preds.max())}, outside [0, {classes}); check num_classes"
        )
    return preds, y, classes


def error_count(logits_or_preds: ArrayLike, labels: ArrayLike) -> int:
    """Number of misclassified samples (argmax of 2-D scores, or 1-D integer predictions)."""
    preds, y, _ = _preds_and_labels(logits_or_preds, labels, "error_count")
    return int((preds != y).sum())


def accuracy(logits_or_preds: ArrayLike, labels: ArrayLike) -> float:
    """Top-1 accuracy in [0, 1]: correct samples / all samples.

    Accepts 2-D scores (logits or probabilities; argmax, ties to the lowest class index) or
    1-D integer predictions.
    """
    preds, y, _ = _preds_and_labels(logits_or_preds, labels, "accuracy")
    return int((preds == y).sum()) / preds.shape[0]


def topk_accuracy(logits: ArrayLike, labels: ArrayLike, k: int = 5) -> float:
    """Fraction of samples whose label is among the ``k`` highest scores.

    Ties at the k-th score are broken by :func:`torch.topk`.
    """
    fn = "topk_accuracy"
    scores = check_scores(logits, "logits", fn)
    num_classes = scores.shape[1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_classes:
        raise MetricInputError(f"{fn}: k must be an integer in [1, {num_classes}], got {k!r}")
    y = check_labels(labels, scores.shape[0], fn, num_classes=num_classes).to(scores.device)
    top = scores.topk(k, dim=1).indices
    return int((top == y[:, None]).any(dim=1).sum()) / scores.shape[0]


def confusion_matrix(preds: ArrayLike, labels: ArrayLike, num_classes: int | None = None) -> Tensor:
    """Counts ``M[true, predicted]`` as an int64 (C, C) CPU tensor (rows: true labels).

    ``preds`` may be 1-D class indices or 2-D scores. ``num_classes`` defaults to the score
    width, else to ``max(label, prediction) + 1``.
    """
    p, y, classes = _preds_and_labels(preds, labels, "confusion_matrix", num_classes)
    if classes is None:
        classes = int(max(int(p.max()), int(y.max()))) + 1
    flat = torch.bincount(y * classes + p, minlength=classes * classes)
    return flat.reshape(classes, classes).cpu()


def per_class_accuracy(
    logits_or_preds: ArrayLike, labels: ArrayLike, num_classes: int | None = None
) -> Tensor:
    """Accuracy on the samples of each true class (per-class recall), float64 (C,) on CPU.

    A class with no samples has NaN (undefined, not 0).
    """
    cm = confusion_matrix(logits_or_preds, labels, num_classes).to(torch.float64)
    support = cm.sum(dim=1)
    return torch.where(
        support > 0, cm.diagonal() / support.clamp_min(1), torch.full_like(support, float("nan"))
    )
