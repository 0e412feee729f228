"""Reader of the idx format (MNIST family), plain or gzip-compressed, fully validated."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from underbudget.errors import DataError

_UBYTE = 0x08


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(
                f"{path} is a corrupt or truncated gzip file ({exc}); replace it with a good copy"
            ) from exc
    return raw


def read_idx(path: str | Path, ndim: int) -> torch.Tensor:
    """Read an unsigned-byte idx file with ``ndim`` dimensions into a uint8 tensor."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an idx file (bad magic number {raw[:4].hex() or 'empty'})")
    if raw[2] != _UBYTE:
        raise DataError(f"{path}: idx data type 0x{raw[2]:02x} is not unsigned byte (0x08)")
    if raw[3] != ndim:
        raise DataError(f"{path}: idx file has {raw[3]} dimensions, expected {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(dims)
    body = len(raw) - header
    if body < expected:
        raise DataError(
            f"{path} is truncated: header promises {expected} bytes of data for shape {dims}, "
            f"found {body}; replace it with a good copy"
        )
    if body > expected:
        raise DataError(
            f"{path} is corrupt: {body - expected} bytes after the data of shape {dims}"
        )
    array = np.frombuffer(raw, dtype=np.uint8, count=expected, offset=header).reshape(dims)
    return torch.from_numpy(array.copy())
