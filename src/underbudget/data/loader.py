"""Batched loaders: the whole dataset as uint8 on the device, indexed, augmented and normalized
one batch at a time. The order and augmentation of epoch e are a pure function of (seed, e)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

from underbudget.data.augment import Augment
from underbudget.data.imageset import ImageSet, channel_stats
from underbudget.errors import ConfigError, DataError
from underbudget.utils.seeding import generator

Batch = tuple[torch.Tensor, torch.Tensor]


def _per_channel(values: float | Sequence[float], channels: int, what: str) -> list[float]:
    vals = [float(values)] if isinstance(values, (int, float)) else [float(v) for v in values]
    if len(vals) == 1:
        vals = vals * channels
    if len(vals) != channels:
        raise ConfigError(f"{what} has {len(vals)} values for {channels}-channel images")
    return vals


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous slice ``[lo, hi)`` of a batch of ``n`` among ``world``
    processes: equal parts when ``world`` divides ``n``, else the later ranks get one fewer."""
    if not 0 <= rank < world:
        raise ConfigError(f"rank {rank} is outside 0..{world - 1}")
    base, extra = divmod(int(n), int(world))
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


class BatchPipeline:
    """What every loader shares: epoch order, batch count, augmentation and normalization.

    Subclasses provide ``_fetch(indices) -> (uint8 images, labels)`` on ``self.device``.
    """

    def __init__(
        self,
        num_examples: int,
        channels: int,
        batch_size: int,
        *,
        shuffle: bool,
        augment: Augment | None,
        mean,
        std,
        normalize: bool,
        device,
        seed: int,
        drop_last: bool,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if num_examples == 0:
            raise DataError("cannot load batches from an empty dataset")
        if drop_last and num_examples < batch_size:
            raise DataError(
                f"drop_last=True with {num_examples} examples and batch_size={batch_size} gives "
                "no batch at all; lower batch_size or set drop_last=False"
            )
        if (mean is None) != (std is None):
            raise ConfigError("give both mean and std, or neither")
        self.num_examples = int(num_examples)
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.augment = augment
        self.normalize = bool(normalize)
        self.device = torch.device(device)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.mean: tuple[float, ...] | None = None
        self.std: tuple[float, ...] | None = None
        self._channels = channels
        if mean is not None:
            self._set_stats(mean, std)

    def _set_stats(self, mean, std) -> None:
        mean = _per_channel(mean, self._channels, "mean")
        std = _per_channel(std, self._channels, "std")
        if min(std) <= 0:
            raise ConfigError(f"std must be positive, got {std}")
        self.mean, self.std = tuple(mean), tuple(std)
        m = torch.tensor(mean, dtype=torch.float32)
        s = torch.tensor(std, dtype=torch.float32)
        self._scale = (1.0 / (255.0 * s)).view(1, -1, 1, 1).to(self.device)
        self._shift = (m / s).view(1, -1, 1, 1).to(self.device)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order and augmentation the next iteration replays."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_examples // self.batch_size
        return math.ceil(self.num_examples / self.batch_size)

    def order(self, epoch: int | None = None) -> torch.Tensor:
        """Example order of ``epoch`` (CPU LongTensor): seeded permutation, or 0..N-1."""
        epoch = self.epoch if epoch is None else int(epoch)
        if not self.shuffle:
            return torch.arange(self.num_examples)
        return torch.randperm(self.num_examples, generator=generator(self.seed, "order", epoch))

    def _place(self, order: torch.Tensor) -> torch.Tensor:
        """Where the epoch order lives while batches are cut from it."""
        return order

    def _fetch(self, indices: torch.Tensor) -> Batch:  # pragma: no cover - abstract
        raise NotImplementedError

    def _finish(self, images: torch.Tensor, epoch: int, batch: int,
                keep: slice | None = None) -> torch.Tensor:
        if self.augment is not None:
            images = self.augment(images, generator(self.seed, "augment", epoch, batch))
        if keep is not None:
            images = images[keep]
        x = images.to(torch.float32)
        if self.normalize:
            return x.mul_(self._scale).sub_(self._shift)
        return x.mul_(1.0 / 255.0)

    def batches(self, epoch: int | None = None, start: int = 0,
                shard: tuple[int, int] | None = None) -> Iterator[Batch]:
        """Batches of ``epoch`` from batch number ``start`` on (for exact mid-epoch resume).

        ``shard=(rank, world)`` yields only that rank's slice (:func:`shard_bounds`) of each
        batch, augmented exactly as the whole batch would be: with random augmentation the
        whole batch is fetched and augmented (one draw per image, in order), then sliced.
        """
        epoch = self.epoch if epoch is None else int(epoch)
        order = self._place(self.order(epoch))
        whole = shard is None or (self.augment is not None and self.augment.random)
        for b in range(int(start), len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            keep = None if shard is None else slice(*shard_bounds(idx.numel(), *shard))
            images, labels = self._fetch(idx if whole else idx[keep])
            if keep is not None and whole:
                labels = labels[keep]
            yield self._finish(images, epoch, b, keep if whole else None), labels

    def __iter__(self) -> Iterator[Batch]:
        return self.batches(self.epoch)


class Loader(BatchPipeline):
    """In-memory loader over an :class:`ImageSet` kept on ``device`` as uint8.

    Yields ``(x, y)``: x float32 (B, C, H, W) in [0, 1] then normalized with ``mean``/``std``
    (computed from ``data`` when not given; pass the training split's for test loaders),
    y int64. Call :meth:`set_epoch` each epoch: the order (``shuffle``) and the augmentation
    of epoch e depend only on (seed, e), so a resumed run sees the same batches.
    """

    def __init__(
        self,
        data: ImageSet,
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
    ):
        if not isinstance(data, ImageSet):
            raise ConfigError(f"Loader needs an ImageSet, got {type(data).__name__}")
        super().__init__(
            len(data),
            data.image_shape[0],
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
        self.data = data
        if self.normalize and self.mean is None:
            self._set_stats(*channel_stats(data.images))
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)

    def _place(self, order: torch.Tensor) -> torch.Tensor:
        return order.to(self.device)

    def _fetch(self, indices: torch.Tensor) -> Batch:
        return self.images.index_select(0, indices), self.labels.index_select(0, indices)
