"""Official downloads, only when asked for: resumable, checksum-verified, written atomically."""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from underbudget.errors import DataError


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


def part_path(dest: Path) -> Path:
    """Where the bytes of an unfinished download of ``dest`` are kept (``dest.part``)."""
    return dest.with_name(dest.name + ".part")


def download_file(urls: tuple[str, ...], dest: Path, md5: str, timeout: float = 60.0,
                  progress: bool | None = None, retries: int = 3) -> None:
    """Fetch the first mirror that answers into ``dest``; verify the MD5 of the whole file.

    Bytes arrive in ``dest.part``; a lost connection resumes from it with an HTTP Range
    request (up to ``retries`` times in a row without progress, and on the next call), and
    the finished file is renamed over ``dest`` only once its checksum matches. A resumed file
    that fails the checksum is downloaded again from the start, once. ``progress``: a bar on
    stderr (None: only when stderr is a terminal).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    failures = []
    for url in urls:
        failure = _from_mirror(url, part, md5, timeout, progress, retries)
        if failure is None:
            os.replace(part, dest)
            return
        failures.append(failure)
    kept = f"\nThe partial file {part} is kept; run again to resume." if part.exists() else ""
    raise DataError(
        f"could not download {dest.name}:\n  "
        + "\n  ".join(failures)
        + kept
        + f"\nDownload it by hand from one of the URLs above into {dest.parent}, "
        f"or point {_env_hint()} at a folder that already has the data."
    )


def _from_mirror(url: str, part: Path, md5: str, timeout: float, progress: bool | None,
                 retries: int) -> str | None:
    """Complete ``part`` from ``url`` and check it; None on success, else why not."""
    fresh_start = False
    stalls = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        verb = f"resuming at {offset} bytes" if offset else "downloading"
        print(f"underbudget: {verb} {url} -> {part.name[:-5]}", file=sys.stderr)
        try:
            _transfer(url, part, offset, timeout, progress)
        except (OSError, http.client.HTTPException) as exc:  # URLError, resets, timeouts
            grown = part.exists() and part.stat().st_size > offset
            stalls = 0 if grown else stalls + 1
            if part.exists() and stalls < retries and _resumable(exc):
                print(f"underbudget: connection lost ({exc}); resuming", file=sys.stderr)
                continue
            return f"{url}: {exc}"
        digest = md5sum(part)
        if digest == md5:
            return None
        part.unlink()
        if offset and not fresh_start:  # the kept bytes were not those of this file
            print(f"underbudget: the resumed file failed its checksum (MD5 {digest}, expected "
                  f"{md5}); downloading it again from the start", file=sys.stderr)
            fresh_start = True
            continue
        return f"{url}: MD5 {digest}, expected {md5} (file discarded)"


def _resumable(exc: BaseException) -> bool:
    """A dropped or timed-out connection is worth resuming; a refusal or HTTP error is not."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500
    if isinstance(exc, urllib.error.URLError):
        return isinstance(exc.reason, (TimeoutError, ConnectionError))
    return True


def _transfer(url: str, part: Path, offset: int, timeout: float,
              progress: bool | None) -> None:
    """Append the rest of ``url`` to ``part`` (from ``offset``); raise when cut short."""
    request = urllib.request.Request(url, headers={"User-Agent": "underbudget"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to send: the kept file is complete
            return
        raise
    with response:
        status = getattr(response, "status", None)
        if offset and status != 206:  # the server ignored the range: start over
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        with open(part, "ab" if offset else "wb") as fh, _bar(part, total, offset,
                                                               progress) as bar:
            while block := response.read(1 << 16):
                fh.write(block)
                bar.update(len(block))
            fh.flush()
            os.fsync(fh.fileno())
            written = fh.tell()
    if total is not None and written < total:
        raise http.client.IncompleteRead(b"", total - written)


def _bar(part: Path, total: int | None, initial: int, progress: bool | None):
    """A tqdm byte counter on stderr (disabled unless asked or stderr is a terminal)."""
    from tqdm.auto import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=part.name[:-5], file=sys.stderr, disable=not show,
                dynamic_ncols=True)


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


def fetch(name: str, target: Path, progress: bool | None = None) -> None:
    """Download (if missing or wrong) and unpack the official files of ``name`` into ``target``."""
    if name not in RESOURCES:
        raise DataError(f"no official download is known for {name!r}")
    target.mkdir(parents=True, exist_ok=True)
    for res in RESOURCES[name]:
        dest = target / res.filename
        verified = False
        if dest.is_file():
            digest = md5sum(dest)
            verified = digest == res.md5
            if not verified:
                print(f"underbudget: {dest} is corrupt (MD5 {digest}, expected {res.md5}); "
                      "downloading it again", file=sys.stderr)
        if not verified:
            download_file(res.urls, dest, res.md5, progress=progress)
        if res.extract:
            _safe_extract(dest, target)
