"""Run locks: no two processes train one run directory at once.

A run is locked with ``fcntl.flock`` on ``<run>/.lock`` while it trains. The operating system
releases the lock when its holder exits, however it exits (``kill -9`` included), so a lock
is never stale. The holder writes its pid and host into the file, for the message a second
launcher prints while it waits. A launcher that finds a run locked either waits for it
(default) or, with the ``skip`` policy, leaves it to its holder (:class:`RunLocked`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import UnderbudgetError, unknown

LOCK_NAME = ".lock"
POLICIES = ("wait", "skip")
_POLICY = ["wait"]


class RunLocked(UnderbudgetError):
    """The run is locked by another process and the policy is ``skip``."""


def lock_file(directory: str | Path) -> Path:
    """The lock file of the run directory ``directory``."""
    return Path(directory) / LOCK_NAME


def holder(directory: str | Path) -> dict | None:
    """Who holds (or last held) the lock of ``directory``: ``{"pid", "host", "since"}``."""
    try:
        text = lock_file(directory).read_text(encoding="utf-8")
        return json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None


def describe_holder(directory: str | Path) -> str:
    """``held by pid N on host H`` (or ``held by another process`` when unknown)."""
    info = holder(directory)
    if not info:
        return "held by another process"
    return f"held by pid {info.get('pid')} on host {info.get('host')}"


@contextlib.contextmanager
def lock_policy(policy: str) -> Iterator[None]:
    """While the block runs, :func:`hold_run` without an explicit ``wait`` follows ``policy``
    (``wait`` or ``skip``); executors set it around each task."""
    if policy not in POLICIES:
        raise unknown("lock policy", policy, POLICIES)
    _POLICY.append(policy)
    try:
        yield
    finally:
        _POLICY.pop()


def current_policy() -> str:
    """The lock policy in force (``wait`` unless :func:`lock_policy` says otherwise)."""
    return _POLICY[-1]


def _acquire(path: Path, wait: bool, on_wait: Callable[[str], None] | None) -> int:
    told = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise RunLocked(f"{path.parent} is being run by another process "
                                    f"({describe_holder(path.parent)}); left to it") from None
                if on_wait is not None and not told:
                    on_wait(f"waiting for {path.parent}, {describe_holder(path.parent)}")
                    told = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            # the file may have been deleted (and made anew) while we waited: lock the one
            # that is there now
            with contextlib.suppress(FileNotFoundError):
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


@contextlib.contextmanager
def hold_run(directory: str | Path, *, wait: bool | None = None,
             on_wait: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold the lock of run directory ``directory`` (created) while the block runs.

    ``wait`` None follows :func:`current_policy`. When the run is locked, ``on_wait`` gets one
    line saying who holds it, then the call blocks until the holder is gone; with
    ``wait=False`` it raises :class:`RunLocked` instead.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if wait is None:
        wait = current_policy() == "wait"
    fd = _acquire(lock_file(directory), wait, on_wait)
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield directory
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # releases the lock


def is_locked(directory: str | Path) -> bool:
    """Whether some process holds the lock of ``directory`` right now."""
    path = lock_file(directory)
    if not path.exists():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def clear_run_dir(directory: str | Path) -> None:
    """Remove everything in a run directory but its lock file (``--force``, lock held)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)
