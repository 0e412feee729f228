"""Run locks: two launchers of one run train it once; a killed holder frees its lock; files
follow the user's umask."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from underbudget.cli import main
from underbudget.config import load_config, run_name
from underbudget.experiment.launch import run_experiment
from underbudget.runs import Run
from underbudget.runs.lock import RunLocked, hold_run, is_locked, lock_file

RUN = ["train.epochs=6", "data.options.n_train=1024", "train.device=cpu"]
HOLD = ("import sys, time\n"
        "from underbudget.runs.lock import hold_run\n"
        "with hold_run(sys.argv[1]):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(120)\n")


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def holder_of(directory: Path) -> subprocess.Popen:
    """A process that holds ``directory``'s lock until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], env=env(),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def epochs(path: Path) -> list[int]:
    return [e["epoch"] for e in Run(path).events("epoch")]


def launchers(argv: list[str], n: int = 2) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen([sys.executable, "-m", "underbudget", *argv], env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(n)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def test_a_killed_holder_releases_its_lock(tmp_path):
    proc = holder_of(tmp_path / "run")
    assert is_locked(tmp_path / "run")
    with pytest.raises(RunLocked, match=rf"held by pid {proc.pid} on host"):
        with hold_run(tmp_path / "run", wait=False):
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not is_locked(tmp_path / "run")
    with hold_run(tmp_path / "run", wait=False):
        assert is_locked(tmp_path / "run")
    assert not is_locked(tmp_path / "run")


def test_second_launcher_says_who_holds_the_run_and_waits(tmp_path, capsys):
    run_dir = tmp_path / run_name(load_config("tiny", RUN))
    proc = holder_of(run_dir)
    killer = threading.Timer(1.5, proc.send_signal, (signal.SIGKILL,))
    killer.start()
    t0 = time.perf_counter()
    try:
        assert main(["run", "tiny", "--out", str(tmp_path), *RUN]) == 0
    finally:
        killer.cancel()
        proc.kill()
        proc.wait()
    err = capsys.readouterr().err
    line = f"waiting for {run_dir}, held by pid {proc.pid} on host {socket.gethostname()}"
    assert line in err.splitlines()
    assert time.perf_counter() - t0 >= 1.5  # it waited for the holder to go
    assert Run(run_dir).read_summary()["status"] == "ok" and epochs(run_dir) == list(range(6))


def test_skip_leaves_a_locked_run_to_its_holder(tmp_path, capsys):
    run_dir = tmp_path / run_name(load_config("tiny", RUN))
    proc = holder_of(run_dir)
    try:
        assert main(["run", "tiny", "--out", str(tmp_path), "--skip-locked", *RUN]) == 0
    finally:
        proc.kill()
        proc.wait()
    assert "left to it" in capsys.readouterr().err
    assert not Run(run_dir).metrics_path.exists() and not Run(run_dir).is_finished()


def test_two_launchers_of_one_run_train_it_once(tmp_path):
    argv = ["run", "tiny", "--out", str(tmp_path), *RUN]
    results = launchers(argv)
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    (path,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert epochs(path) == list(range(6))  # no epoch line twice
    started = [r for r in results if f"run {path} (train" in r.stderr]
    assert len(started) == 1  # trained once; the other waited or found it finished
    other = results[1 - results.index(started[0])]
    assert "already finished" in other.stderr


def test_two_sweeps_over_one_folder_run_every_child_once(tmp_path):
    argv = ["sweep", "tiny", "--out", str(tmp_path), "seed=0,1,2", *RUN[:2]]
    results = launchers(argv)
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    (parent,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    for seed in range(3):
        child = parent / f"seed-{seed}"
        assert epochs(child) == list(range(6)), child
        assert sum(f"run {child} (train" in r.stderr for r in results) == 1
        lines = Run(child).metrics_path.read_text().splitlines()
        assert len(lines) == len(set(lines))
    assert (parent / "report" / "report.md").exists()


@pytest.mark.parametrize("mask", [0o027, 0o002])
def test_files_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        path = Path(run_experiment(load_config("tiny", ["train.epochs=1"]), tmp_path,
                                   quiet=True))
    finally:
        os.umask(old)
    for name in ("summary.json", "config.yaml", "env.json", "metrics.jsonl",
                 "artifacts/model.safetensors", lock_file(path).name):
        assert (path / name).stat().st_mode & 0o777 == 0o666 & ~mask, name
    assert path.stat().st_mode & 0o777 == 0o777 & ~mask
