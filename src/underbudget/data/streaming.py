"""A loader for image folders too large for memory: decodes each batch from disk with PIL
(in threads, one batch ahead), then applies the same Augment and normalization as Loader."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from underbudget.data.augment import Augment
from underbudget.data.imageset import as_index, channel_stats
from underbudget.data.loader import Batch, BatchPipeline
from underbudget.data.sources.imagefolder import decode_images, read_image, scan_image_folder
from underbudget.errors import DataError
from underbudget.utils.seeding import generator


class StreamingImageFolder(BatchPipeline):
    """Batches from ``folder/<class>/<image>`` read from disk, same ``(x, y)`` as Loader.

    ``image_size`` and ``channels`` default to those of the first image; every image is decoded
    to that many channels and, when ``image_size`` is given, resized to it. ``classes`` fixes the
    class list (pass the training split's for a test folder); ``indices`` selects a subset (e.g.
    a budget). Without ``mean``/``std`` they are estimated from a seeded sample of
    ``stats_sample`` images.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: Augment | None = None,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        normalize: bool = True,
        device: str | torch.device = "cpu",
        seed: int = 0,
        drop_last: bool = False,
        image_size: int | None = None,
        channels: int | None = None,
        classes: list[str] | None = None,
        indices: Any = None,
        workers: int = 0,
        stats_sample: int = 1024,
    ):
        files, labels, self.classes = scan_image_folder(folder, classes)
        all_labels = torch.tensor(labels, dtype=torch.long)
        if indices is not None:
            idx = as_index(indices, len(files))
            files = [files[i] for i in idx.tolist()]
            all_labels = all_labels[idx]
        self.folder = Path(folder)
        self.files: list[Path] = files
        self.labels = all_labels
        first = read_image(files[0], image_size, channels) if files else None
        if first is None:
            raise DataError(f"{folder}: no images selected")
        self.image_size = image_size
        self.image_shape = tuple(int(s) for s in first.shape)
        self.channels = int(first.shape[0])
        self.workers = workers or min(8, os.cpu_count() or 1)
        super().__init__(
            len(files),
            self.channels,
            batch_size,
            shuffle=shuffle,
            augment=augment,
            mean=mean,
            std=std,
            normalize=normalize,
            device=device,
            seed=seed,
            drop_last=drop_last,
        )
        if self.normalize and self.mean is None:
            n = min(int(stats_sample), len(files))
            pick = torch.randperm(len(files), generator=generator(seed, "stats"))[:n]
            self._set_stats(*channel_stats(self._decode(pick)))

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def _decode(
        self, indices: torch.Tensor, pool: ThreadPoolExecutor | None = None
    ) -> torch.Tensor:
        files = [self.files[i] for i in indices.tolist()]
        images = decode_images(files, self.image_size, self.channels, self.workers, pool)
        if tuple(images.shape[1:]) != self.image_shape:
            raise DataError(
                f"{self.folder}: images of shape {tuple(images.shape[1:])} among ones of "
                f"shape {self.image_shape}; pass image_size=N to resize them all"
            )
        return images

    def _fetch(self, indices: torch.Tensor) -> Batch:
        images = self._decode(indices)
        return images.to(self.device), self.labels[indices].to(self.device)

    def batches(self, epoch: int | None = None, start: int = 0) -> Iterator[Batch]:
        """Like :meth:`BatchPipeline.batches`, decoding the next batch while this one is used."""
        epoch = self.epoch if epoch is None else int(epoch)
        order = self.order(epoch)
        spans = [order[b * self.batch_size : (b + 1) * self.batch_size] for b in range(len(self))]
        with ThreadPoolExecutor(self.workers) as pool, ThreadPoolExecutor(1) as ahead:
            pending = None
            for b in range(int(start), len(self)):
                if pending is None:
                    pending = ahead.submit(self._decode, spans[b], pool)
                images = pending.result()
                pending = (
                    ahead.submit(self._decode, spans[b + 1], pool) if b + 1 < len(self) else None
                )
                labels = self.labels[spans[b]].to(self.device)
                yield self._finish(images.to(self.device), epoch, b), labels
