"""The record of a failed run, and clearing a run directory that saved nothing.

A failed run holds ``summary.json`` with status ``failed`` and its traceback in
``error.log``; it is retried when asked again (the record is dropped first, the resume
checkpoint kept).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..utils.atomic import write_json, write_text
from .store import Run

#: status of a run whose task raised; it is retried when asked again
FAILED = "failed"
ERROR_LOG = "error.log"


def is_failed(run: Run) -> bool:
    """Whether ``run`` holds the record of a failure (status ``failed``; retried on rerun)."""
    try:
        return (run.read_summary() or {}).get("status") == FAILED
    except (OSError, ValueError):
        return False


def record_failure(run: Run, reason: str, details: str, info: dict | None = None) -> None:
    """Record in ``run`` that it failed: ``summary.json`` with status ``failed`` and the one-line
    ``reason``, ``details`` (a traceback) in ``error.log``. The resume checkpoint is kept, and
    a rerun retries the run (see :func:`forget_failure`); a finished run is left alone."""
    if run.is_finished() and not is_failed(run):
        return
    write_text(run.path / ERROR_LOG, details if details.endswith("\n") else details + "\n")
    write_json(run.summary_path, {**(info or {}), "status": FAILED, "message": reason,
                                  "error_log": ERROR_LOG})


def forget_failure(run: Run) -> bool:
    """Drop the record of an earlier failure so the run is tried again; return whether there
    was one."""
    if not is_failed(run):
        return False
    run.summary_path.unlink(missing_ok=True)
    (run.path / ERROR_LOG).unlink(missing_ok=True)
    return True


def remove_if_unsaved(path: Path) -> bool:
    """Delete a run directory that holds no summary and no checkpoint anywhere (nothing a
    second attempt could reuse); return whether it was deleted."""
    if not path.is_dir():
        return False
    if next(path.rglob("checkpoint.safetensors"), None) is not None:
        return False
    for summary in path.rglob("summary.json"):
        if not is_failed(Run(summary.parent)):
            return False
    shutil.rmtree(path, ignore_errors=True)
    return True
