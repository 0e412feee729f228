"""Image folders: ``PATH/train/<class>/*.png|jpg``, ``PATH/test/<class>/...``, optional ``val/``."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from underbudget.data.imageset import ImageSet, Splits, channel_stats
from underbudget.data.sources.registry import register_dataset
from underbudget.errors import ConfigError, DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def scan_image_folder(
    folder: str | os.PathLike, classes: list[str] | None = None
) -> tuple[list[Path], list[int], list[str]]:
    """List ``folder/<class>/<image>`` files (sorted) with their labels and the class names.

    With ``classes`` (e.g. those of the training split), every sub-folder must be one of them.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder of class sub-folders")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DataError(f"{folder} has no class sub-folders (expected {folder}/<class>/<image>)")
    if classes is None:
        classes = found
    else:
        extra = [c for c in found if c not in classes]
        if extra:
            raise DataError(f"{folder} has class folder(s) {extra} that the training split lacks")
    index = {c: i for i, c in enumerate(classes)}
    files: list[Path] = []
    labels: list[int] = []
    for name in found:
        images = sorted(
            p
            for p in (folder / name).iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not images:
            raise DataError(
                f"{folder / name} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                "remove the folder or add images"
            )
        files.extend(images)
        labels.extend([index[name]] * len(images))
    return files, labels, list(classes)


def read_image(path: Path, size: int | None = None, channels: int | None = None) -> np.ndarray:
    """Decode one image to a uint8 array (C, H, W): gray stays 1 channel unless ``channels=3``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            gray = img.mode in _GRAY_MODES
            want = channels or (1 if gray else 3)
            img = img.convert("L" if want == 1 else "RGB")
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}; remove or replace it") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def decode_images(
    files: list[Path],
    size: int | None = None,
    channels: int | None = None,
    workers: int = 0,
    pool: ThreadPoolExecutor | None = None,
) -> torch.Tensor:
    """Decode files into one uint8 tensor (N, C, H, W) in threads; gray joins RGB as RGB."""
    if pool is None:
        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as own:
            return decode_images(files, size, channels, pool=own)
    arrays = list(pool.map(lambda p: read_image(p, size, channels), files))
    if not arrays:
        raise DataError("no images to decode")
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) > 1:
        first = next(f for f, a in zip(files, arrays) if a.shape[1:] == arrays[0].shape[1:])
        other = next(f for f, a in zip(files, arrays) if a.shape[1:] != arrays[0].shape[1:])
        raise DataError(
            f"images differ in size ({first} is {arrays[0].shape[2]}x{arrays[0].shape[1]}, "
            f"{other} is not); pass image_size=N to resize them all to NxN"
        )
    if len({a.shape[0] for a in arrays}) > 1:
        arrays = [np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a for a in arrays]
    return torch.from_numpy(np.stack(arrays))


def _match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    if images.shape[1] == channels:
        return images
    return images.expand(-1, channels, -1, -1).contiguous()


def read_image_folder(
    path: str | os.PathLike,
    image_size: int | None = None,
    flip: bool = True,
    name: str | None = None,
) -> Splits:
    """Read train/test (and val/ when present) image folders into memory."""
    path = Path(path).expanduser()
    for split in ("train", "test"):
        if not (path / split).is_dir():
            raise DataError(
                f"{path} has no {split}/ folder; an image folder dataset needs "
                f"{path}/train/<class>/<image> and {path}/test/<class>/<image>"
            )
    files, labels, classes = scan_image_folder(path / "train")
    parts = {"train": (files, labels)}
    for split in ("test", "val"):
        if split == "val" and not (path / split).is_dir():
            continue
        split_files, split_labels, _ = scan_image_folder(path / split, classes)
        parts[split] = (split_files, split_labels)
    images = {k: decode_images(f, image_size) for k, (f, _) in parts.items()}
    sizes = {k: tuple(v.shape[2:]) for k, v in images.items()}
    if len(set(sizes.values())) > 1:
        raise DataError(
            f"{path}: image sizes differ between splits {sizes}; pass image_size=N to resize"
        )
    channels = max(v.shape[1] for v in images.values())
    sets = {
        k: ImageSet(
            _match_channels(images[k], channels), torch.tensor(lab, dtype=torch.long), classes
        )
        for k, (_, lab) in parts.items()
    }
    mean, std = channel_stats(sets["train"].images)
    return Splits(
        name or f"imagefolder:{path}",
        sets["train"],
        sets["test"],
        classes,
        mean,
        std,
        flip,
        str(path),
        val=sets.get("val"),
    )


@register_dataset("imagefolder")
def imagefolder(
    arg, *, root=None, download=False, seed=0, image_size=None, channels=None, flip=True
):
    """Your own images: ``imagefolder:PATH`` (or ``imagefolder`` with ``root=PATH``)."""
    path = arg or root
    if not path:
        raise ConfigError("imagefolder needs a path: use 'imagefolder:/path/to/data' or root=PATH")
    return read_image_folder(path, image_size=image_size, flip=bool(flip))
