"""One calibration draw: class-balanced, seeded, the same for QAT's start and PTQ."""

from __future__ import annotations

import torch

from underbudget.config import load_config
from underbudget.data import ImageSet, calibration_indices
from underbudget.methods.precision_setup import calibration_loader


def test_the_draw_is_class_balanced_seeded_and_about_the_size_asked():
    labels = torch.arange(4).repeat_interleave(torch.tensor([40, 30, 20, 10]))
    idx = calibration_indices(labels, 20, seed=3)
    counts = torch.bincount(labels[idx], minlength=4).tolist()
    assert counts == [8, 6, 4, 2]  # a fifth of every class
    assert torch.equal(idx, calibration_indices(labels, 20, seed=3))
    assert not torch.equal(idx, calibration_indices(labels, 20, seed=4))
    assert calibration_indices(labels, 1000, seed=3).numel() == 100


def test_qat_starts_from_the_images_ptq_calibrates_on():
    torch.manual_seed(0)
    labels = torch.arange(3).repeat(20)
    images = ImageSet(torch.arange(60, dtype=torch.uint8).view(60, 1, 1, 1).expand(60, 1, 2, 2)
                      .contiguous(), labels, ["a", "b", "c"])
    cfg = load_config({"name": "calib", "seed": 5, "data": {"name": "synthetic",
                       "batch_size": 64}, "precision": {"mode": "qat", "calib_size": 12}})
    x = torch.cat([b[0] for b in calibration_loader(cfg, images, [0.0], [1.0], "cpu")])
    drawn = calibration_indices(labels, 12, seed=5)
    assert sorted((x[:, 0, 0, 0] * 255).round().long().tolist()) == sorted(drawn.tolist())
