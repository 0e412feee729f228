"""In-memory labelled images (uint8, N x C x H x W) and a dataset's train/test splits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from underbudget.errors import DataError


def as_index(indices: Any, size: int, what: str = "indices") -> torch.Tensor:
    """Turn a list, array or tensor of indices into a CPU LongTensor checked against ``size``."""
    idx = torch.as_tensor(indices).reshape(-1)
    if idx.dtype == torch.bool:
        if idx.numel() != size:
            raise DataError(f"boolean {what} has {idx.numel()} entries, expected {size}")
        return idx.nonzero().reshape(-1)
    if idx.is_floating_point() or idx.is_complex():
        raise DataError(f"{what} must be integers, got dtype {idx.dtype}")
    idx = idx.to(device="cpu", dtype=torch.long)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= size):
        raise DataError(
            f"{what} out of range: min {int(idx.min())}, max {int(idx.max())}, "
            f"but the data holds {size} examples"
        )
    return idx


@dataclass
class ImageSet:
    """Labelled images held in memory: uint8 ``images`` (N, C, H, W), int64 ``labels`` (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.uint8:
            got = getattr(self.images, "dtype", type(self.images).__name__)
            raise DataError(f"ImageSet images must be a uint8 tensor, got {got}")
        if self.images.dim() != 4:
            raise DataError(
                f"ImageSet images must have shape (N, C, H, W), got {tuple(self.images.shape)}"
            )
        labels = torch.as_tensor(self.labels)
        if labels.is_floating_point() or labels.dim() != 1:
            raise DataError(
                f"ImageSet labels must be a 1-D integer tensor, got {labels.dtype} "
                f"with shape {tuple(labels.shape)}"
            )
        self.labels = labels.to(torch.long)
        if self.labels.numel() != self.images.shape[0]:
            raise DataError(
                f"{self.images.shape[0]} images but {self.labels.numel()} labels; they must match"
            )
        self.classes = [str(c) for c in self.classes]
        if self.labels.numel():
            low, high = int(self.labels.min()), int(self.labels.max())
            if low < 0 or high >= len(self.classes):
                raise DataError(
                    f"labels range over [{low}, {high}] but there are {len(self.classes)} classes"
                )

    def __len__(self) -> int:
        return int(self.labels.numel())

    @property
    def num_classes(self) -> int:
        """Number of class names (some classes may have no example in a subset)."""
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, indices: Any) -> ImageSet:
        """A new ImageSet holding the examples at ``indices`` (ints or a boolean mask)."""
        idx = as_index(indices, len(self))
        return ImageSet(
            self.images.index_select(0, idx), self.labels.index_select(0, idx), list(self.classes)
        )

    def class_counts(self) -> torch.Tensor:
        """Examples per class, a LongTensor of length ``num_classes``."""
        return torch.bincount(self.labels, minlength=self.num_classes)


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], ...]:
    """Per-channel mean and std of uint8 images on the [0, 1] scale (population std)."""
    if images.shape[0] == 0:
        raise DataError("cannot compute normalization statistics of an empty image set")
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].to(torch.float64).div_(255.0)
        part = part.transpose(0, 1).reshape(c, -1)
        total += part.sum(dim=1)
        total_sq += part.square().sum(dim=1)
    count = images.numel() / c
    mean = total / count
    var = (total_sq / count - mean.square()).clamp_min(0.0)
    std = var.sqrt().clamp_min(1e-6)
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


@dataclass
class Splits:
    """A dataset as read: train and test ImageSets plus how to normalize and augment them.

    ``flip`` says whether horizontal flipping is a label-preserving augmentation (off for digits
    and characters, on for natural images and clothing). ``val`` is only set when the source
    ships its own validation split (e.g. an image folder with ``val/``).
    """

    name: str
    train: ImageSet
    test: ImageSet
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool
    source: str
    val: ImageSet | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.classes = [str(c) for c in self.classes]
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        channels = self.train.image_shape[0]
        parts = [("test", self.test)] + ([("val", self.val)] if self.val is not None else [])
        for part_name, part in parts:
            if part.image_shape != self.train.image_shape:
                raise DataError(
                    f"{self.name}: {part_name} images have shape {part.image_shape} but train "
                    f"images have {self.train.image_shape}; pass image_size= to resize them"
                )
        if len(self.mean) != channels or len(self.std) != channels:
            raise DataError(
                f"{self.name}: mean/std have {len(self.mean)}/{len(self.std)} entries "
                f"for {channels}-channel images"
            )

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return self.train.image_shape

    def info(self) -> dict[str, Any]:
        """A JSON-able summary to record with a run."""
        out: dict[str, Any] = {
            "name": self.name,
            "source": self.source,
            "train_size": len(self.train),
            "test_size": len(self.test),
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
            "classes": list(self.classes),
            "mean": list(self.mean),
            "std": list(self.std),
            "flip": self.flip,
        }
        if self.val is not None:
            out["val_size"] = len(self.val)
        out.update(self.extra)
        return out
