"""Validation shared by the readers: label range, counts, classes present."""

from __future__ import annotations

import torch

from underbudget.errors import DataError


def check_pair(images: torch.Tensor, labels: torch.Tensor, where: str) -> None:
    """Images and labels must describe the same number of examples."""
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{where}: {images.shape[0]} images but {labels.shape[0]} labels; "
            "the files do not belong together or one is corrupt"
        )


def check_labels(labels: torch.Tensor, num_classes: int, where: str) -> None:
    """Every label must be an integer in [0, num_classes)."""
    if labels.numel() == 0:
        raise DataError(f"{where}: no examples")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        bad = labels[(labels < 0) | (labels >= num_classes)]
        raise DataError(
            f"{where}: label {int(bad[0])} out of range for {num_classes} classes "
            f"(labels span [{low}, {high}]); the file is corrupt or not this dataset"
        )


def check_all_classes(labels: torch.Tensor, classes: list[str], where: str) -> None:
    """Every class must have at least one training example."""
    counts = torch.bincount(labels, minlength=len(classes))
    missing = [classes[i] for i in range(len(classes)) if int(counts[i]) == 0]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:10])
        raise DataError(f"{where}: no example of class(es) {shown}; the data is incomplete")
