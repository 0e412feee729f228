"""The data layer: readers and registry, in-memory image sets, batched augmentation and
loaders, data budgets, and megabatch streams for anytime learning."""

from underbudget.data.augment import Augment
from underbudget.data.budget import (
    calibration_indices,
    fraction_indices,
    kshot_indices,
    split_validation,
)
from underbudget.data.convert import convert_channels, resize_images
from underbudget.data.imageset import ImageSet, Splits, channel_stats
from underbudget.data.loader import BatchPipeline, Loader
from underbudget.data.sources import (
    DATA_ENV,
    conform,
    list_datasets,
    load_dataset,
    make_synthetic,
    register_dataset,
)
from underbudget.data.stream import (
    Replay,
    ReservoirBuffer,
    partition,
    replay_indices,
    split_megabatch,
)
from underbudget.data.streaming import StreamingImageFolder

__all__ = [
    "DATA_ENV",
    "Augment",
    "BatchPipeline",
    "ImageSet",
    "Loader",
    "Replay",
    "ReservoirBuffer",
    "Splits",
    "StreamingImageFolder",
    "channel_stats",
    "conform",
    "convert_channels",
    "calibration_indices",
    "fraction_indices",
    "kshot_indices",
    "list_datasets",
    "load_dataset",
    "make_synthetic",
    "partition",
    "register_dataset",
    "replay_indices",
    "resize_images",
    "split_megabatch",
    "split_validation",
]
