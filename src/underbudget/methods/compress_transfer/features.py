"""Linear probing on cached features.

The probe's backbone is frozen and in eval mode, so when the training loader draws no random
augmentation every image has one fixed feature vector. Computing those once and training the
head on them is the same optimization as running the backbone at every step, an epoch's
batches included (the order is drawn exactly as :class:`~underbudget.data.Loader` draws it),
at the cost of one forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from ...data import Loader
from ...utils.seeding import generator


class TensorLoader:
    """Batches of in-memory ``(x, y)`` tensors with the Loader contract (``set_epoch``)."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, shuffle: bool, seed: int = 0):
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(self.y.numel() / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = self.y.numel()
        if self.shuffle:
            order = torch.randperm(n, generator=generator(self.seed, "order", self.epoch))
        else:
            order = torch.arange(n)
        order = order.to(self.x.device)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self.x.index_select(0, idx), self.y.index_select(0, idx)


def cacheable(loader: Loader) -> bool:
    """True when ``loader`` draws no random augmentation (fixed images every epoch)."""
    return loader.augment is None or not loader.augment.random


@torch.no_grad()
def extract(probe, loader: Loader) -> tuple[Tensor, Tensor]:
    """Penultimate features of every image of an UNSHUFFLED pass, with the labels."""
    was = probe.training
    probe.eval()
    feats, labels = [], []
    try:
        for x, y in loader.batches(0):
            feats.append(torch.flatten(probe.features(x), 1))
            labels.append(y)
    finally:
        probe.train(was)
    return torch.cat(feats), torch.cat(labels)


def feature_loaders(probe, train: Loader, val: Loader) -> tuple[TensorLoader, TensorLoader]:
    """Feature loaders mirroring ``train`` (same seeded order) and ``val`` (ordered)."""
    plain = Loader(
        train.data,
        train.batch_size,
        shuffle=False,
        augment=train.augment,
        mean=train.mean,
        std=train.std,
        normalize=train.normalize,
        device=train.device,
    )
    x, y = extract(probe, plain)
    vx, vy = extract(probe, val)
    return (
        TensorLoader(x, y, train.batch_size, shuffle=train.shuffle, seed=train.seed),
        TensorLoader(vx, vy, val.batch_size, shuffle=False),
    )
