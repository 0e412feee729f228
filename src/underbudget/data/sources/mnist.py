"""MNIST and Fashion-MNIST from their four idx files (gz or raw)."""

from __future__ import annotations

from pathlib import Path

from underbudget.data.imageset import ImageSet, Splits
from underbudget.data.sources import download as dl
from underbudget.data.sources.checks import check_all_classes, check_labels, check_pair
from underbudget.data.sources.idx import read_idx
from underbudget.data.sources.locate import locate
from underbudget.data.sources.registry import register_dataset
from underbudget.errors import DataError

FILES = {
    "train_images": ("train-images", "idx3"),
    "train_labels": ("train-labels", "idx1"),
    "test_images": ("t10k-images", "idx3"),
    "test_labels": ("t10k-labels", "idx1"),
}
EXPECTED = ", ".join(f"{stem}-{kind}-ubyte[.gz]" for stem, kind in FILES.values())

FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DIGIT_CLASSES = [str(i) for i in range(10)]


def _file(folder: Path, stem: str, kind: str) -> Path | None:
    for name in (f"{stem}-{kind}-ubyte", f"{stem}.{kind}-ubyte"):
        for suffix in (".gz", ""):
            path = folder / (name + suffix)
            if path.is_file():
                return path
    return None


def find_idx_files(folder: Path) -> dict[str, Path] | None:
    """The four idx files in ``folder`` (or its ``raw/``); None if none are there."""
    for candidate in (folder, folder / "raw"):
        found = {role: _file(candidate, *parts) for role, parts in FILES.items()}
        present = {role: path for role, path in found.items() if path is not None}
        if len(present) == len(FILES):
            return present
        if present:
            missing = [f"{FILES[r][0]}-{FILES[r][1]}-ubyte[.gz]" for r in FILES if r not in present]
            raise DataError(f"{candidate} holds only part of the dataset; missing: {missing}")
    return None


def _read_split(files: dict[str, Path], split: str, classes: list[str]) -> ImageSet:
    images = read_idx(files[f"{split}_images"], ndim=3)
    labels = read_idx(files[f"{split}_labels"], ndim=1).long()
    where = f"{files[f'{split}_images'].name} / {files[f'{split}_labels'].name}"
    check_pair(images, labels, where)
    check_labels(labels, len(classes), str(files[f"{split}_labels"]))
    return ImageSet(images.unsqueeze(1), labels, list(classes))


def read_idx_dataset(
    name: str,
    root: str | None,
    download: bool,
    classes: list[str],
    mean: float,
    std: float,
    flip: bool,
) -> Splits:
    """Locate, read and validate an MNIST-style dataset."""
    files, folder = locate(
        name,
        root,
        find_idx_files,
        download=download,
        fetch=lambda target: dl.fetch(name, target),
        expected=EXPECTED,
    )
    train = _read_split(files, "train", classes)
    test = _read_split(files, "test", classes)
    check_all_classes(train.labels, classes, str(files["train_labels"]))
    return Splits(name, train, test, list(classes), (mean,), (std,), flip, str(folder))


@register_dataset("fashion-mnist")
def fashion_mnist(_arg, *, root=None, download=False, seed=0, image_size=None, channels=None):
    """Fashion-MNIST (Zalando): 60k/10k 28x28 gray clothing images; flipping is label-safe."""
    return read_idx_dataset(
        name="fashion-mnist",
        root=root,
        download=download,
        classes=FASHION_CLASSES,
        mean=0.2860,
        std=0.3530,
        flip=True,
    )


@register_dataset("mnist")
def mnist(_arg, *, root=None, download=False, seed=0, image_size=None, channels=None):
    """MNIST handwritten digits: 60k/10k 28x28 gray; no flipping (digits are not symmetric)."""
    return read_idx_dataset(
        name="mnist",
        root=root,
        download=download,
        classes=DIGIT_CLASSES,
        mean=0.1307,
        std=0.3081,
        flip=False,
    )
