"""Official downloads, only when asked for: checksum-verified, written atomically."""

from __future__ import annotations

import hashlib
import os
import sys
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from underbudget.errors import DataError
from underbudget.utils.atomic import atomic_path


@dataclass(frozen=True)
class Resource:
    """One official file: its name, MD5 as published, and mirrors tried in order."""

    filename: str
    md5: str
    urls: tuple[str, ...]
    extract: bool = False


def _idx(bases: tuple[str, ...], files: dict[str, str]) -> list[Resource]:
    return [Resource(f, md5, tuple(b + f for b in bases)) for f, md5 in files.items()]


_FASHION = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
_MNIST = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
_KRIZ = "https://www.cs.toronto.edu/~kriz/"

RESOURCES: dict[str, list[Resource]] = {
    "fashion-mnist": _idx(
        _FASHION,
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    "mnist": _idx(
        _MNIST,
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "cifar10": [
        Resource(
            "cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
            (_KRIZ + "cifar-10-python.tar.gz",),
            extract=True,
        )
    ],
    "cifar100": [
        Resource(
            "cifar-100-python.tar.gz",
            "eb9058c3a382ffc7106e4002c42a8d85",
            (_KRIZ + "cifar-100-python.tar.gz",),
            extract=True,
        )
    ],
}


def md5sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """MD5 hex digest of a file (used as a checksum, not for security)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download_file(urls: tuple[str, ...], dest: Path, md5: str, timeout: float = 60.0) -> None:
    """Fetch the first mirror that answers into ``dest`` atomically; verify the MD5."""
    failures = []
    for url in urls:
        print(f"underbudget: downloading {url} -> {dest}", file=sys.stderr)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, atomic_path(dest) as tmp:
                digest = hashlib.md5(usedforsecurity=False)
                with open(tmp, "wb") as fh:
                    while block := response.read(1 << 20):
                        digest.update(block)
                        fh.write(block)
                if digest.hexdigest() != md5:
                    raise _ChecksumMismatch(f"{url}: MD5 {digest.hexdigest()}, expected {md5}")
            return
        except _ChecksumMismatch as exc:
            failures.append(f"{exc} (file discarded)")
        except OSError as exc:  # URLError, timeouts, refused connections
            failures.append(f"{url}: {exc}")
    raise DataError(
        f"could not download {dest.name}:\n  "
        + "\n  ".join(failures)
        + f"\nDownload it by hand from one of the URLs above into {dest.parent}, "
        f"or point {_env_hint()} at a folder that already has the data."
    )


class _ChecksumMismatch(Exception):
    pass


def _env_hint() -> str:
    return "UNDERBUDGET_DATA (export UNDERBUDGET_DATA=/path/to/data)"


def _safe_extract(archive: Path, target: Path) -> None:
    """Extract a tar archive, refusing members that would land outside ``target``."""
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(target, filter="data")
                return
            root = target.resolve()
            for member in tar.getmembers():
                dest = (target / member.name).resolve()
                if not (member.isfile() or member.isdir()) or root not in (dest, *dest.parents):
                    raise DataError(f"{archive}: refusing unsafe archive member {member.name!r}")
            tar.extractall(target)  # noqa: S202 - every member checked above
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{archive} is corrupt or truncated ({exc}); delete it and retry") from exc


def fetch(name: str, target: Path) -> None:
    """Download (if missing or wrong) and unpack the official files of ``name`` into ``target``."""
    if name not in RESOURCES:
        raise DataError(f"no official download is known for {name!r}")
    target.mkdir(parents=True, exist_ok=True)
    for res in RESOURCES[name]:
        dest = target / res.filename
        if not (dest.is_file() and md5sum(dest) == res.md5):
            download_file(res.urls, dest, res.md5)
        if res.extract:
            _safe_extract(dest, target)
