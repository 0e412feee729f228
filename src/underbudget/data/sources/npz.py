"""``npz:PATH``: arrays x_train, y_train, x_test, y_test (uint8 NHWC or NCHW), optional classes."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from underbudget.data.imageset import ImageSet, Splits, channel_stats
from underbudget.data.sources.checks import check_labels, check_pair
from underbudget.data.sources.registry import register_dataset
from underbudget.errors import ConfigError, DataError

REQUIRED = ("x_train", "y_train", "x_test", "y_test")


def _to_nchw(x: np.ndarray, key: str, path: Path, layout: str) -> torch.Tensor:
    if x.dtype != np.uint8:
        raise DataError(
            f"{path}: {key} has dtype {x.dtype}; store images as uint8 in 0..255 "
            "(e.g. (x * 255).round().astype('uint8'))"
        )
    if x.ndim == 3:
        x = x[:, None]
        layout = "nchw"
    elif x.ndim != 4:
        raise DataError(f"{path}: {key} has shape {x.shape}; expected (N, H, W, C) or (N, C, H, W)")
    if layout == "auto":
        if x.shape[3] in (1, 3):  # channels last; also wins when both axes could be channels
            layout = "nhwc"
        elif x.shape[1] in (1, 3):
            layout = "nchw"
        else:
            raise DataError(
                f"{path}: cannot tell the channel axis of {key} with shape {x.shape}; "
                "pass layout='nhwc' or layout='nchw'"
            )
    if layout == "nhwc":
        x = x.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x))


def _labels(y: np.ndarray, key: str, path: Path) -> torch.Tensor:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: {key} must be a 1-D integer array, got {y.dtype} {y.shape}")
    return torch.from_numpy(y.astype(np.int64))


def read_npz(
    path: str | os.PathLike, flip: bool = True, layout: str = "auto", name: str | None = None
) -> Splits:
    """Read and validate an npz dataset (never unpickles: ``allow_pickle=False``)."""
    path = Path(path).expanduser()
    if layout not in ("auto", "nhwc", "nchw"):
        raise ConfigError(f"layout must be 'auto', 'nhwc' or 'nchw', got {layout!r}")
    if not path.is_file():
        raise DataError(f"npz file {path} not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in REQUIRED if k not in npz.files]
            if missing:
                raise DataError(
                    f"{path} lacks array(s) {missing}; it must hold {', '.join(REQUIRED)}"
                )
            arrays = {k: npz[k] for k in REQUIRED}
            classes = [str(c) for c in npz["classes"].tolist()] if "classes" in npz.files else None
    except DataError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path} is not a readable npz file ({exc}); it may be truncated") from None
    x_train = _to_nchw(arrays["x_train"], "x_train", path, layout)
    x_test = _to_nchw(arrays["x_test"], "x_test", path, layout)
    y_train = _labels(arrays["y_train"], "y_train", path)
    y_test = _labels(arrays["y_test"], "y_test", path)
    check_pair(x_train, y_train, f"{path} (x_train, y_train)")
    check_pair(x_test, y_test, f"{path} (x_test, y_test)")
    if classes is None:
        classes = [str(i) for i in range(int(max(y_train.max(), y_test.max())) + 1)]
    check_labels(y_train, len(classes), f"{path} (y_train)")
    check_labels(y_test, len(classes), f"{path} (y_test)")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{path}: x_train images are {tuple(x_train.shape[1:])}, "
            f"x_test images are {tuple(x_test.shape[1:])}"
        )
    train, test = ImageSet(x_train, y_train, classes), ImageSet(x_test, y_test, classes)
    mean, std = channel_stats(train.images)
    return Splits(name or f"npz:{path}", train, test, classes, mean, std, flip, str(path))


@register_dataset("npz")
def npz(
    arg,
    *,
    root=None,
    download=False,
    seed=0,
    image_size=None,
    channels=None,
    flip=True,
    layout="auto",
):
    """Your own arrays: ``npz:PATH`` (or ``npz`` with ``root=PATH``)."""
    path = arg or root
    if not path:
        raise ConfigError("npz needs a path: use 'npz:/path/to/data.npz' or root=PATH")
    return read_npz(path, flip=bool(flip), layout=layout)
