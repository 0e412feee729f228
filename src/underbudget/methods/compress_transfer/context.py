"""What every stage of the study shares: the config, the parent run, the device and the data."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ...config import DataConfig, ExperimentConfig, TrainConfig
from ...data import Loader, Splits, fraction_indices
from ...errors import ConfigError, DataError
from ...runs import Run
from ...train import resolve_device
from ...transfer.label_mapping import check_class_counts
from ...utils.seeding import derive_seed, seed_everything
from ..common import PreparedData, eval_loader, load_splits, prepare_data, train_loader
from .config import CompressTransferConfig, parse_method


@dataclass
class Context:
    """Source data (after limit/validation/budget), target pool and test set, device."""

    cfg: ExperimentConfig
    run: Run
    device: torch.device
    source: PreparedData
    target: Splits  # train = the target pool (after method.target.limit), test after test_limit
    target_cfg: DataConfig  # method.target with image_size/channels filled in

    @property
    def method(self) -> CompressTransferConfig:
        return self.cfg.method

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) the source model takes."""
        return self.source.image_shape

    def train_config(self, progress: bool | None = None) -> TrainConfig:
        """The loop settings (``cfg.train``), optionally with progress output changed."""
        if progress is None:
            return self.cfg.train
        return dataclasses.replace(self.cfg.train, progress=progress)

    def source_train_loader(self, key: str) -> Loader:
        """Shuffled, augmented loader of the source training data; order seeded by ``key``."""
        return train_loader(self.cfg, self.source.train, self.source.splits, self.device, key=key)

    def source_eval_loader(self, part: str = "test") -> Loader:
        """Ordered loader of the source ``test`` (or ``train``/``val``) images."""
        data = getattr(self.source, part)
        return eval_loader(self.cfg, data, self.source.splits, self.device)

    def child_config(self, part: str, **info) -> dict:
        """The config a child run records: what it is (the parent holds the full config)."""
        return {"part": part, **info, "parent": self.run.path.name, "seed": self.cfg.seed}

    def start_child(self, child: Run, part: str, **info) -> None:
        """Start ``child`` and seed the global RNGs from its identity, so that its result does
        not depend on which other children ran before it in this process."""
        child.start(self.child_config(part, **info), device=self.device)
        seed_everything(derive_seed(self.cfg.seed, part, *sorted(info.items())))


def make_context(cfg: ExperimentConfig, run: Run) -> Context:
    """Load the source and target data and check that the transfer is possible at all."""
    m: CompressTransferConfig = cfg.method
    device = resolve_device(cfg.train.device)
    source = prepare_data(cfg, run)
    c, h, w = source.image_shape
    tcfg = dataclasses.replace(
        m.target, image_size=m.target.image_size or h, channels=m.target.channels or c
    )
    try:
        splits = load_splits(cfg, tcfg)
    except DataError as exc:
        raise DataError(
            f"target dataset (method.target): {exc}\nFor the target, set method.target.root "
            "or method.target.download=true instead of data.root / data.download."
        ) from None
    specs = [parse_method(x) for x in m.methods]
    if any(s.kind == "vp" for s in specs):
        check_class_counts(splits.num_classes, source.num_classes)
    if any(s.kind != "vp" for s in specs) and splits.image_shape != (c, h, w):
        raise ConfigError(
            f"linear probing and fine-tuning feed target images to the source model, which "
            f"takes {c}x{h}x{w}, but method.target gives {'x'.join(map(str, splits.image_shape))}"
            f": leave method.target.image_size/channels unset (they default to the source's) "
            f"or set them to {h} and {c}"
        )
    pool = _subset(splits.train.labels, tcfg.limit, cfg.seed, "target-limit")
    test = _subset(splits.test.labels, tcfg.test_limit, cfg.seed, "target-test-limit")
    target = dataclasses.replace(
        splits, train=splits.train.subset(pool), test=splits.test.subset(test)
    )
    return Context(cfg=cfg, run=run, device=device, source=source, target=target, target_cfg=tcfg)


def _subset(labels: torch.Tensor, limit: int | None, seed: int, key: str) -> torch.Tensor:
    """A seeded class-balanced subset of about ``limit`` examples (all when None)."""
    n = labels.numel()
    if limit is None or limit >= n:
        return torch.arange(n)
    return fraction_indices(labels, limit / n, derive_seed(seed, key))
