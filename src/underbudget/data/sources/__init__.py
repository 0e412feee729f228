"""Dataset readers and their registry. Importing this package registers every built-in reader."""

from underbudget.data.sources import cifar, digits, imagefolder, mnist, npz, synthetic  # noqa: F401
from underbudget.data.sources.locate import DATA_ENV, SYSTEM_LOCATIONS, cache_root
from underbudget.data.sources.registry import conform, list_datasets, load_dataset, register_dataset
from underbudget.data.sources.synthetic import make_synthetic

__all__ = [
    "DATA_ENV",
    "SYSTEM_LOCATIONS",
    "cache_root",
    "conform",
    "list_datasets",
    "load_dataset",
    "make_synthetic",
    "register_dataset",
]
