"""CIFAR-10 / CIFAR-100: official python batches (restricted unpickling), class folders or npz."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from underbudget.data.imageset import ImageSet, Splits
from underbudget.data.sources import download as dl
from underbudget.data.sources.checks import check_all_classes, check_labels, check_pair
from underbudget.data.sources.imagefolder import read_image_folder
from underbudget.data.sources.locate import locate
from underbudget.data.sources.npz import read_npz
from underbudget.data.sources.registry import register_dataset
from underbudget.data.sources.safe_pickle import RefusedGlobal, safe_load
from underbudget.errors import ConfigError, DataError

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]

_LAYOUT = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2470, 0.2435, 0.2616),
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "mean": (0.5071, 0.4865, 0.4409),
        "std": (0.2673, 0.2564, 0.2762),
    },
}


def _expected(name: str) -> str:
    lay = _LAYOUT[name]
    files = ", ".join(lay["train"] + lay["test"] + [lay["meta"]])
    return (
        f"{lay['folder']}/ with {files} (the official python version), or train/<class>/ and "
        f"test/<class>/ image folders, or {name}.npz"
    )


def _find(name: str):
    lay = _LAYOUT[name]

    def find(folder: Path) -> tuple[str, Path] | None:
        for candidate in (folder / lay["folder"], folder):
            if (candidate / lay["train"][0]).is_file():
                return "pickle", candidate
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            return "folder", folder
        if (folder / f"{name}.npz").is_file():
            return "npz", folder / f"{name}.npz"
        return None

    return find


def load_pickle(path: Path) -> dict[str, Any]:
    """Load one CIFAR pickle with the restricted unpickler; keys decoded to str."""
    try:
        obj = safe_load(path.read_bytes())
    except RefusedGlobal as exc:
        raise DataError(
            f"{path} is not an official CIFAR batch: it asks to load code ({exc}); "
            "refusing to unpickle it. Replace it with the official file."
        ) from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    except Exception as exc:  # truncated or garbled pickles fail in many ways
        raise DataError(f"{path} is corrupt or truncated ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a CIFAR batch (holds {type(obj).__name__}, not a dict)")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _names(values: Any) -> list[str]:
    return [v.decode("latin1") if isinstance(v, bytes) else str(v) for v in values]


def _read_batches(
    folder: Path, files: list[str], label_key: str, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for fname in files:
        path = folder / fname
        if not path.is_file():
            raise DataError(f"{folder} is missing {fname}; the CIFAR copy is incomplete")
        batch = load_pickle(path)
        if "data" not in batch or label_key not in batch:
            raise DataError(f"{path} has no {'data' if 'data' not in batch else label_key!r} entry")
        data = batch["data"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
            raise DataError(f"{path}: 'data' must be a uint8 array (N, 3072)")
        if data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{path}: 'data' rows have {data.shape[1]} values, expected 3072")
        lab = torch.as_tensor(np.asarray(batch[label_key], dtype=np.int64))
        img = torch.from_numpy(np.ascontiguousarray(data)).view(-1, 3, 32, 32)
        check_pair(img, lab, str(path))
        check_labels(lab, num_classes, str(path))
        images.append(img)
        labels.append(lab)
    return torch.cat(images), torch.cat(labels)


def _read_cifar(name: str, folder: Path, label_type: str) -> Splits:
    lay = _LAYOUT[name]
    meta_path = folder / lay["meta"]
    if name == "cifar10":
        label_key, names_key = "labels", "label_names"
    else:
        label_key, names_key = f"{label_type}_labels", f"{label_type}_label_names"
    if meta_path.is_file():
        meta = load_pickle(meta_path)
        if names_key not in meta:
            raise DataError(f"{meta_path} has no {names_key!r} entry")
        classes = _names(meta[names_key])
    elif name == "cifar10":
        classes = list(CIFAR10_CLASSES)
    else:
        raise DataError(f"{folder} is missing {lay['meta']} (the class names)")
    tr_img, tr_lab = _read_batches(folder, lay["train"], label_key, len(classes))
    te_img, te_lab = _read_batches(folder, lay["test"], label_key, len(classes))
    check_all_classes(tr_lab, classes, str(folder))
    train = ImageSet(tr_img, tr_lab, classes)
    test = ImageSet(te_img, te_lab, classes)
    extra = {"label_type": label_type} if name == "cifar100" else {}
    return Splits(
        name, train, test, classes, lay["mean"], lay["std"], True, str(folder), extra=extra
    )


def read_cifar(name: str, root, download: bool, image_size, label_type: str = "fine") -> Splits:
    """Locate CIFAR in any supported layout and read it."""
    if label_type not in ("fine", "coarse"):
        raise ConfigError(f"label_type must be 'fine' or 'coarse', got {label_type!r}")
    (kind, path), _ = locate(
        name,
        root,
        _find(name),
        download=download,
        fetch=lambda target: dl.fetch(name, target),
        expected=_expected(name),
    )
    lay = _LAYOUT[name]
    if kind == "pickle":
        return _read_cifar(name, path, label_type)
    if kind == "folder":
        splits = read_image_folder(path, image_size=image_size, flip=True)
    else:
        splits = read_npz(path, flip=True)
    if splits.image_shape == (3, 32, 32):
        return replace(splits, name=name, mean=lay["mean"], std=lay["std"])
    return replace(splits, name=name)


@register_dataset("cifar10")
def cifar10(_arg, *, root=None, download=False, seed=0, image_size=None, channels=None):
    """CIFAR-10: 50k/10k 32x32 RGB natural images, 10 classes."""
    return read_cifar("cifar10", root, download, image_size)


@register_dataset("cifar100")
def cifar100(
    _arg, *, root=None, download=False, seed=0, image_size=None, channels=None, label_type="fine"
):
    """CIFAR-100: 50k/10k 32x32 RGB, 100 fine classes (or 20 coarse with label_type='coarse')."""
    return read_cifar("cifar100", root, download, image_size, label_type)
