"""The dataset registry: names -> reader functions, and ``load_dataset`` on top of it."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import replace

from underbudget.data.convert import convert_channels, resize_images
from underbudget.data.imageset import ImageSet, Splits, channel_stats
from underbudget.errors import ConfigError, unknown

#: a reader is called as ``reader(arg, root=, download=, seed=, image_size=, channels=, **options)``
#: where ``arg`` is the text after ``name:`` (e.g. the PATH of ``npz:PATH``) or None.
Reader = Callable[..., Splits]

_READERS: dict[str, Reader] = {}
_COMMON = ("root", "download", "seed", "image_size", "channels")


def register_dataset(name: str) -> Callable[[Reader], Reader]:
    """Decorator registering a reader under ``name`` (used as ``name`` or ``name:ARG``)."""
    if not name or ":" in name:
        raise ConfigError(f"dataset names must be non-empty and contain no ':', got {name!r}")

    def decorate(fn: Reader) -> Reader:
        _READERS[name] = fn
        return fn

    return decorate


def list_datasets() -> list[str]:
    """Registered dataset names (``imagefolder`` and ``npz`` take a path: ``npz:PATH``)."""
    return sorted(_READERS)


def _reader_options(fn: Reader) -> set[str] | None:
    """Keyword options a reader accepts beyond the common ones; None if it takes ``**kwargs``."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    names = {p.name for p in params if p.kind is not inspect.Parameter.POSITIONAL_ONLY}
    return names - set(_COMMON)


def _check_int(name: str, value: int | None, allowed: tuple[int, ...] | None = None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")
    if allowed is not None and value not in allowed:
        raise ConfigError(f"{name} must be one of {allowed}, got {value}")


def load_dataset(
    name: str,
    root: str | None = None,
    *,
    download: bool = False,
    seed: int = 0,
    image_size: int | None = None,
    channels: int | None = None,
    **options,
) -> Splits:
    """Read a dataset into memory as :class:`Splits`.

    ``image_size`` resizes (bilinear, uint8 -> uint8) and ``channels`` converts gray <-> RGB, so
    any source can feed a model built for another shape. Normalization constants are recomputed
    from the converted training split when either changes the images.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"dataset name must be a non-empty string, got {name!r}")
    base, sep, arg = name.partition(":")
    if base not in _READERS:
        raise unknown("dataset", name, list_datasets())
    _check_int("image_size", image_size)
    _check_int("channels", channels, (1, 3))
    reader = _READERS[base]
    accepted = _reader_options(reader)
    if accepted is not None:
        for key in options:
            if key not in accepted:
                raise unknown(f"option for dataset {base!r}", key, accepted or ["(none)"])
    splits = reader(
        arg if sep else None,
        root=root,
        download=download,
        seed=seed,
        image_size=image_size,
        channels=channels,
        **options,
    )
    return conform(splits, image_size=image_size, channels=channels)


def _conform_set(data: ImageSet, image_size: int | None, channels: int | None) -> ImageSet:
    images = data.images
    if channels is not None:
        images = convert_channels(images, channels)
    if image_size is not None:
        images = resize_images(images, image_size)
    if images is data.images:
        return data
    return ImageSet(images, data.labels, data.classes)


def conform(
    splits: Splits, *, image_size: int | None = None, channels: int | None = None
) -> Splits:
    """Resize and/or convert channels of every split; recompute mean/std if anything changed."""
    train = _conform_set(splits.train, image_size, channels)
    if train is splits.train:
        return splits
    test = _conform_set(splits.test, image_size, channels)
    val = None if splits.val is None else _conform_set(splits.val, image_size, channels)
    mean, std = channel_stats(train.images)
    return replace(splits, train=train, test=test, val=val, mean=mean, std=std)
