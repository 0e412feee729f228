"""Checks a config passes before anything is created: names, data files, devices, folders.

``run``, ``sweep`` and ``--dry-run`` call :func:`preflight` first, so a config that names an
unknown model, a missing or corrupt data file or a device this machine lacks is refused with
one line, and no run directory is left behind. The checks are cheap: registries, file
headers and folder listings, never a full read of the data.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import DataConfig, ModelConfig, TrainConfig
from ..data import list_datasets
from ..data.sources import cifar, registry
from ..data.sources.imagefolder import scan_image_folder
from ..data.sources.locate import locate
from ..data.sources.mnist import EXPECTED, find_idx_files
from ..errors import ConfigError, DataError, MissingDependencyError, unknown
from ..models.registry import ADAPTERS, _check_options, _lookup

NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
DEVICES = "auto, cpu, cuda, cuda:N or mps"


@dataclass
class DatasetInfo:
    """What is cheaply known about a dataset before reading it (None: not known)."""

    n_train: int | None = None
    n_test: int | None = None
    num_classes: int | None = None
    channels: int | None = None
    image_size: int | None = None


# sizes and shapes of the named datasets' official files
_KNOWN = {
    "fashion-mnist": DatasetInfo(60000, 10000, 10, 1, 28),
    "mnist": DatasetInfo(60000, 10000, 10, 1, 28),
    "cifar10": DatasetInfo(None, None, 10, 3, 32),
    "cifar100": DatasetInfo(None, None, 100, 3, 32),
    "digits": DatasetInfo(None, None, 10, 1, 8),
}


def preflight(cfg: Any) -> None:
    """Refuse (one ConfigError or DataError) what would fail once the run has started."""
    for where, value in _walk(cfg, ""):
        if isinstance(value, TrainConfig):
            check_device(value.device, f"{where}.device")
        elif isinstance(value, ModelConfig):
            check_model(value, where)
        elif isinstance(value, DataConfig):
            check_data(value, where)


def _walk(obj: Any, where: str):
    """Every dataclass inside ``obj`` with its dotted location."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        yield where, obj
        for f in dataclasses.fields(obj):
            yield from _walk(getattr(obj, f.name), f"{where}.{f.name}" if where else f.name)


# --------------------------------------------------------------------------- devices


def check_device(name: str | None, where: str = "train.device") -> None:
    """Refuse a device string torch does not know or this machine does not have."""
    if name in (None, "auto"):
        return
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"{where}={name!r} is not a device torch knows; use {DEVICES}") from None
    kind = device.type
    if kind == "cpu":
        return
    if kind == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch is a CPU-only build" if torch.version.cuda is None
                   else "no CUDA GPU is visible")
            raise ConfigError(f"{where}={name} but {why}; use {where}=auto or cpu "
                              "(or --device cpu)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{where}={name} but this machine has {count} CUDA device(s) "
                              f"(cuda:0 to cuda:{count - 1})")
        return
    module = torch.backends.mps if kind == "mps" else getattr(torch, kind, None)
    available = getattr(module, "is_available", None)
    if not (callable(available) and available()):
        raise ConfigError(f"{where}={name} but no {kind} device is available here; "
                          f"use {where}=auto or cpu")


# --------------------------------------------------------------------------- models


def check_model(m: ModelConfig, where: str = "model") -> None:
    """The architecture is registered (or its adapter installed), its options exist, and the
    weights file to load is there."""
    name = m.name.strip()
    prefix, sep, _ = name.partition(":")
    if sep:
        adapter = prefix.strip().lower()
        if adapter not in ADAPTERS:
            raise unknown(f"model adapter ({where}.name)", prefix, ADAPTERS)
        if importlib.util.find_spec(adapter) is None:
            raise MissingDependencyError(
                f"{where}.name={name} needs the optional package {adapter!r}: "
                f"pip install 'underbudget[vision]' (or pip install {adapter})")
    else:
        label = name.lower()
        _check_options(label, _lookup(label), m.kwargs)
    if m.weights and not Path(m.weights).expanduser().is_file():
        raise ConfigError(f"{where}.weights: no file at {m.weights}; check the path")


# --------------------------------------------------------------------------- data


def check_data(d: DataConfig, where: str = "data") -> DatasetInfo:
    """The dataset is registered, takes the given options, its files are there and readable
    (headers only), and ``limit``/``test_limit`` do not ask for more than it holds."""
    base, sep, arg = d.name.partition(":")
    if base not in list_datasets():
        raise unknown(f"dataset ({where}.name)", d.name, list_datasets())
    accepted = registry._reader_options(registry._READERS[base])
    if accepted is not None:
        bad = sorted(k for k in d.options if k not in accepted)
        if bad:
            takes = ", ".join(sorted(a for a in accepted if not a.startswith("_")
                                     and a != "arg")) or "none"
            raise ConfigError(
                f"{where}.options {', '.join(bad)} are not options of dataset {base!r} "
                f"(it takes: {takes}); if they came with the preset, add {where}.options={{}}")
    try:
        info = describe_data(d, check=True)
    except DataError as exc:
        if where == "data":
            raise
        raise DataError(f"{where} ({d.name}): {exc}") from None
    for key, size, what in (("limit", info.n_train, "training"), ("test_limit", info.n_test,
                                                                   "test")):
        value = getattr(d, key)
        if value is not None and size is not None and value > size:
            raise ConfigError(
                f"{where}.{key}={value} is more than the {size} {what} images of {d.name}; "
                f"lower it, or set {where}.{key}=null to use them all")
    return info


def describe_data(d: DataConfig, check: bool = False) -> DatasetInfo:
    """Sizes and image shape of ``d`` as far as they are known without reading the images;
    with ``check``, raise DataError for missing or unreadable files (else leave fields None).
    """
    try:
        return _describe(d, check)
    except (ConfigError, DataError):
        if check:
            raise
        return DatasetInfo(channels=d.channels, image_size=d.image_size)


def _describe(d: DataConfig, check: bool) -> DatasetInfo:
    base, _, arg = d.name.partition(":")
    if base in ("npz", "imagefolder") and not (arg or d.root):
        raise ConfigError(f"dataset {base!r} needs a path: use '{base}:/path/to/data'")
    if base == "npz":
        info = _npz_info(Path(arg or d.root).expanduser())
    elif base == "imagefolder":
        info = _imagefolder_info(Path(arg or d.root).expanduser())
    elif base == "synthetic":
        o = d.options
        info = DatasetInfo(int(o.get("n_train", 1000)), int(o.get("n_test", 500)),
                           int(o.get("num_classes", 10)), 1, 16)
    else:
        known = _KNOWN.get(base, DatasetInfo())
        info = dataclasses.replace(known)
        if base == "cifar100" and d.options.get("label_type") == "coarse":
            info.num_classes = 20
        if check and not d.download:
            _locate(base, d.root)
    if d.channels is not None:
        info.channels = d.channels
    if d.image_size is not None:
        info.image_size = d.image_size
    return info


def _locate(base: str, root: str | None) -> None:
    """Find a named dataset's files the way its reader will (DataError when absent)."""
    if base in ("mnist", "fashion-mnist"):
        locate(base, root, find_idx_files, expected=EXPECTED)
    elif base in ("cifar10", "cifar100"):
        locate(base, root, cifar._find(base), expected=cifar._expected(base))
    elif base == "digits" and importlib.util.find_spec("sklearn") is None:
        raise MissingDependencyError(
            "dataset 'digits' needs the optional package 'sklearn': pip install scikit-learn")


def _npz_info(path: Path) -> DatasetInfo:
    if not path.exists():
        raise DataError(f"npz file {path} not found; check the path in npz:PATH")
    if path.is_dir():
        raise DataError(f"{path} is a folder; npz:PATH needs a file written by numpy.savez")
    fix = "save the arrays with numpy.savez(PATH, x_train=..., y_train=..., x_test=..., y_test=...)"
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not an npz file (numpy.savez writes a zip archive; this "
                        f"file is not one, or it was cut short); {fix}")
    shapes: dict[str, tuple] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            members = {n.removesuffix(".npy"): n for n in archive.namelist()}
            missing = [k for k in NPZ_ARRAYS if k not in members]
            if missing:
                raise DataError(f"{path} lacks array(s) {', '.join(missing)}; {fix}")
            for key in NPZ_ARRAYS:
                with archive.open(members[key]) as fh:
                    version = np.lib.format.read_magic(fh)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(fh)
                if dtype.hasobject:
                    raise DataError(f"{path}: {key} holds Python objects, which are never "
                                    "unpickled; store images as uint8 and labels as integers")
                want = np.uint8 if key.startswith("x") else np.integer
                if not np.issubdtype(dtype, want):
                    raise DataError(f"{path}: {key} has dtype {dtype}; store images as uint8 "
                                    "in 0..255 and labels as integers")
                shapes[key] = shape
    except DataError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path} is not a readable npz file ({exc}); it may be truncated: "
                        "write it again") from None
    x = shapes["x_train"]
    channels = size = None
    if len(x) == 3:
        channels, size = 1, x[1]
    elif len(x) == 4:
        channels, size = (x[3], x[1]) if x[3] in (1, 3) else (x[1], x[2])
    n_train = int(x[0]) if x else None
    n_test = int(shapes["x_test"][0]) if shapes["x_test"] else None
    return DatasetInfo(n_train, n_test, None, channels, size)


def _imagefolder_info(path: Path) -> DatasetInfo:
    if not path.exists():
        raise DataError(f"image folder {path} does not exist; check the path in "
                        "imagefolder:PATH")
    if not path.is_dir():
        raise DataError(f"{path} is a file; imagefolder:PATH needs a folder holding "
                        "train/<class>/<image> and test/<class>/<image>")
    for split in ("train", "test"):
        if not (path / split).is_dir():
            raise DataError(f"{path} has no {split}/ folder; an image folder dataset needs "
                            f"{path}/train/<class>/<image> and {path}/test/<class>/<image>")
    files, _, classes = scan_image_folder(path / "train")
    test_files, _, _ = scan_image_folder(path / "test", classes)
    return DatasetInfo(len(files), len(test_files), len(classes))


# --------------------------------------------------------------------------- folders


def check_folder(path: str | os.PathLike, what: str = "the runs folder",
                 fix: str = "choose another with --out DIR") -> Path:
    """A folder that exists or can be created, and can be written in (probed, then removed)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is a file, not a folder; {fix}")
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"cannot create {what} {path}: {ancestor} is a file; {fix}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".underbudget-probe-", dir=ancestor))
    except OSError as exc:
        raise ConfigError(f"cannot write {what} {path} in {ancestor} "
                          f"({exc.strerror or exc}); {fix}") from None
    return path
