"""Pieces every method shares: data preparation, model creation, loaders and trainers."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from safetensors.torch import save_file

from ..config import ExperimentConfig
from ..data import Augment, ImageSet, Loader, Splits, load_dataset
from ..data.budget import fraction_indices, kshot_indices, split_validation
from ..errors import DataError
from ..models import create_model, load_weights
from ..runs import Run
from ..train import Trainer
from ..utils.atomic import atomic_path
from ..utils.seeding import derive_seed


@dataclass
class PreparedData:
    """The splits a method trains and evaluates on, with the indices that chose them."""

    splits: Splits
    train: ImageSet
    val: ImageSet | None
    test: ImageSet
    indices: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.splits.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])


def _limit(labels: torch.Tensor, limit: int | None, seed: int, what: str) -> torch.Tensor:
    n = labels.numel()
    if limit is None or limit >= n:
        return torch.arange(n)
    return fraction_indices(labels, limit / n, derive_seed(seed, what))


def load_splits(cfg: ExperimentConfig, data_cfg=None) -> Splits:
    """Read the configured dataset (one clear DataError when missing or corrupt)."""
    d = data_cfg or cfg.data
    return load_dataset(d.name, d.root, download=d.download, seed=cfg.seed,
                        image_size=d.image_size, channels=d.channels, **d.options)


def prepare_data(cfg: ExperimentConfig, run: Run | None = None, data_cfg=None,
                 splits: Splits | None = None) -> PreparedData:
    """Load the dataset and apply, in order: ``limit`` (compute subset), the validation
    split, then the data budget (``fraction`` or ``kshot``) on what remains. The test set is
    only ever subset by ``test_limit``. All choices are seeded; indices are saved in the run.
    """
    d = data_cfg or cfg.data
    splits = splits or load_splits(cfg, d)
    seed = cfg.seed
    train_all = splits.train
    base = _limit(train_all.labels, d.limit, seed, "limit")
    labels = train_all.labels[base]
    val_idx = torch.empty(0, dtype=torch.long)
    if d.val_fraction > 0:
        keep, val_local = split_validation(labels, fraction=d.val_fraction,
                                           seed=derive_seed(seed, "val"))
        val_idx, base = base[val_local], base[keep]
        labels = train_all.labels[base]
    if d.kshot is not None:
        base = base[kshot_indices(labels, d.kshot, derive_seed(seed, "budget"))]
    elif d.fraction is not None and d.fraction < 1:
        base = base[fraction_indices(labels, d.fraction, derive_seed(seed, "budget"))]
    if base.numel() == 0:
        raise DataError(f"the data budget leaves no training examples of {d.name}")
    test_idx = _limit(splits.test.labels, d.test_limit, seed, "test_limit")
    indices = {"train": base, "val": val_idx, "test": test_idx}
    if run is not None:
        with atomic_path(run.artifact("data_indices.safetensors")) as tmp:
            save_file({k: v.contiguous() for k, v in indices.items()}, str(tmp))
    return PreparedData(
        splits=splits,
        train=train_all.subset(base),
        val=train_all.subset(val_idx) if val_idx.numel() else None,
        test=splits.test.subset(test_idx),
        indices=indices,
    )


def train_loader(cfg: ExperimentConfig, data: ImageSet, splits: Splits, device,
                 key: str = "train", data_cfg=None, normalize: bool = True) -> Loader:
    """Shuffled, augmented loader; its order is a function of (seed, key, epoch)."""
    d = data_cfg or cfg.data
    flip = splits.flip if d.flip is None else d.flip
    augment = Augment(crop_padding=d.crop_padding, flip=flip)
    return Loader(data, d.batch_size, shuffle=True, augment=augment, mean=splits.mean,
                  std=splits.std, normalize=normalize, device=device,
                  seed=derive_seed(cfg.seed, key), drop_last=False)


def eval_loader(cfg: ExperimentConfig, data: ImageSet, splits: Splits, device,
                data_cfg=None, normalize: bool = True) -> Loader:
    """Ordered, un-augmented loader for evaluation."""
    d = data_cfg or cfg.data
    return Loader(data, d.eval_batch_size, shuffle=False, augment=None, mean=splits.mean,
                  std=splits.std, normalize=normalize, device=device, seed=0)


def build_model(cfg: ExperimentConfig, data: PreparedData | Splits, model_cfg=None,
                seed_key: str = "init") -> torch.nn.Module:
    """Create the configured architecture for the data's shape, seeded; load weights if set."""
    m = model_cfg or cfg.model
    splits = data.splits if isinstance(data, PreparedData) else data
    c, h, _ = splits.train.images.shape[1:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, seed_key))
        model = create_model(m.name, num_classes=len(splits.classes), in_channels=c,
                             image_size=h, **m.kwargs)
    if m.weights:
        load_weights(model, m.weights)
    return model


def make_trainer(cfg: ExperimentConfig, model: torch.nn.Module, run: Run | None,
                 callbacks=(), **kwargs) -> Trainer:
    """A Trainer configured from ``cfg.optim`` and ``cfg.train``, with the callbacks of
    every registered constraint section in ``cfg`` (``training_callbacks(cfg, trainer)``)."""
    trainer = Trainer(model, cfg.optim, cfg.train, run=run, callbacks=callbacks, **kwargs)
    for section in cfg.sections.values():
        make = getattr(section, "training_callbacks", None)
        for cb in (make(cfg, trainer) if callable(make) else []):
            trainer.add_callback(cb)
    return trainer
