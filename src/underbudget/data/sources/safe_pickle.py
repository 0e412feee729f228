"""A restricted unpickler for the official CIFAR batches: only numpy arrays and plain data.

``pickle.load`` can run arbitrary code named inside the file; this loader resolves only the
handful of globals that a pickled numpy array needs and refuses everything else.
"""

from __future__ import annotations

import codecs
import importlib
import io
import pickle
from typing import Any

import numpy as np


def _numpy_multiarray():
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return importlib.import_module(module)
        except ImportError:
            continue
    raise ImportError("numpy multiarray module not found")  # pragma: no cover


def _allowed() -> dict[tuple[str, str], Any]:
    multiarray = _numpy_multiarray()
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how Python 3 pickles bytes at protocol 2
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    return allowed


class RefusedGlobal(pickle.UnpicklingError):
    """The file names a global that is not on the allow-list."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy array/dtype reconstruction and ``_codecs.encode``."""

    _ALLOWED = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"refused global {module}.{name}") from None


def safe_load(data: bytes) -> Any:
    """Unpickle ``data`` (Python 2 or 3 pickles) allowing only plain data and numpy arrays."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
