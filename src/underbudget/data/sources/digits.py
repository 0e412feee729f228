"""scikit-learn's bundled 8x8 digits (1,797 images): tiny, real, offline; seeded split."""

from __future__ import annotations

import numpy as np
import torch

from underbudget.data.budget import split_validation
from underbudget.data.imageset import ImageSet, Splits, channel_stats
from underbudget.data.sources.registry import register_dataset
from underbudget.errors import ConfigError, MissingDependencyError


def _load_sklearn_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise MissingDependencyError(
            "the 'digits' dataset is bundled with scikit-learn, which is not installed: "
            "pip install scikit-learn (or pip install 'underbudget[test]')"
        ) from exc
    return load_digits()


@register_dataset("digits")
def digits(
    _arg, *, root=None, download=False, seed=0, image_size=None, channels=None, test_fraction=0.25
):
    """8x8 gray digits, values 0..16 scaled to 0..255, split stratified by class with ``seed``."""
    if not 0.0 < float(test_fraction) < 1.0:
        raise ConfigError(f"digits test_fraction must be in (0, 1), got {test_fraction}")
    bunch = _load_sklearn_digits()
    values = np.asarray(bunch.images, dtype=np.float64)
    images = torch.from_numpy(np.rint(values * (255.0 / 16.0)).clip(0, 255).astype(np.uint8))
    images = images.unsqueeze(1)
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    classes = [str(i) for i in range(10)]
    train_idx, test_idx = split_validation(labels, fraction=float(test_fraction), seed=seed)
    train = ImageSet(images[train_idx], labels[train_idx], classes)
    test = ImageSet(images[test_idx], labels[test_idx], classes)
    mean, std = channel_stats(train.images)
    return Splits(
        "digits",
        train,
        test,
        classes,
        mean,
        std,
        False,
        "sklearn.datasets.load_digits",
        extra={"split_seed": int(seed), "test_fraction": float(test_fraction)},
    )
