"""The environment a run ran in: versions, device, git commit, command line."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..version import __version__


def git_commit(path: str | Path | None = None) -> dict:
    """Commit and dirty flag of the git checkout holding ``path`` (the package by default)."""
    where = Path(path or Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        return {"commit": commit, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def device_info(device: str | torch.device | None = None) -> dict:
    """What accelerator (if any) the run used."""
    info: dict = {"device": str(device) if device is not None else "cpu",
                  "cuda_available": torch.cuda.is_available(),
                  "num_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda_version"] = torch.version.cuda
    return info


def environment(device: str | torch.device | None = None) -> dict:
    """A JSON-able record for ``env.json``."""
    versions = {"underbudget": __version__, "python": sys.version.split()[0],
                "torch": torch.__version__, "numpy": np.__version__}
    for name in ("torchvision", "timm", "safetensors", "yaml", "matplotlib"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "unknown")
    return {
        "versions": versions,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "argv": sys.argv,
        "cwd": os.getcwd(),
        "git": git_commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **device_info(device),
    }
