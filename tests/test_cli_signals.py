"""SIGTERM (what Slurm sends before preemption) stops a run cleanly; the same command resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from underbudget.cli import main

# The child runs ``python -m underbudget`` (through runpy) with one change: after its first
# epoch checkpoint it says so in a file and waits, so the signal lands mid-run every time.
CHILD = """
import pathlib, runpy, sys, time
import torch
from underbudget.train.trainer import Trainer
torch.set_num_threads(1)
marker = pathlib.Path(sys.argv.pop(1))
original = Trainer._checkpoint
def checkpoint_then_wait(self, stage_done):
    original(self, stage_done)
    if self.epoch == 1:
        marker.write_text("checkpointed")
        time.sleep(60)
Trainer._checkpoint = checkpoint_then_wait
sys.argv[0] = "underbudget"
runpy.run_module("underbudget", run_name="__main__")
"""


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")
def test_sigterm_keeps_the_checkpoint_and_the_same_command_resumes(tmp_path, capsys):
    args = ["run", "tiny", "--quiet", "train.epochs=3", "sparsity.method=rigl",
            "sparsity.density=0.3", "sparsity.interval=3"]
    marker = tmp_path / "marker"
    cut = ["--out", str(tmp_path / "cut")]
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(marker), *args, *cut],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists(), child.communicate()
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 143, err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("stopped by")]
    assert line.startswith("stopped by SIGTERM at stage 0, epoch 1 (checkpoint kept in ")
    assert line.endswith("; run the same command to resume")
    (run,) = (tmp_path / "cut").iterdir()
    assert (run / "checkpoint.safetensors").exists() and not (run / "summary.json").exists()

    assert main([*args, *cut]) == 0  # the same command, in this process, resumes
    assert "resuming from stage 0, epoch 2 (1 done)" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    (whole,) = (tmp_path / "whole").iterdir()
    for name in ("model.safetensors", "masks.safetensors"):
        assert (run / "artifacts" / name).read_bytes() == (whole / "artifacts" / name).read_bytes()
