"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: temporary files of :func:`atomic_path`: ``.<name>.<8 random characters>.tmp``
TEMP_PATTERN = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
#: a temporary file untouched for this long belongs to a writer that was killed
STALE_AFTER_S = 60.0
_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read now (it may change while the process runs)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    with _UMASK_LOCK:  # no /proc: set and restore (the lock keeps threads from racing)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _file_mode(path: Path) -> int:
    """Mode for a new file at ``path``: the old file's, else what ``open`` would give
    (``0o666`` less the user's umask)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success.

    The file gets the permissions an ordinary write would give it (``mkstemp`` alone would
    leave it readable by its owner only).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, _file_mode(path))
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    """Make tensors, numpy scalars and paths JSON-serialisable."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, set):
        return sorted(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def dumps(obj: Any) -> str:
    """One-line JSON with the same conversions as :func:`write_json`."""
    return json.dumps(obj, default=_json_default)


def clean_stale_temps(directory: str | os.PathLike,
                      older_than: float = STALE_AFTER_S) -> list[Path]:
    """Remove temporary files that killed writers left under ``directory``; return them.

    Only names made by :func:`atomic_path` that nothing has written to for ``older_than``
    seconds are removed (a live writer touches its file on every write).
    """
    root = Path(directory)
    if not root.is_dir():
        return []
    now, removed = time.time(), []
    for here, _, files in os.walk(root):
        for name in files:
            if not TEMP_PATTERN.match(name):
                continue
            path = Path(here) / name
            with contextlib.suppress(OSError):
                if now - path.lstat().st_mtime >= older_than and path.is_file():
                    path.unlink()
                    removed.append(path)
    return removed
