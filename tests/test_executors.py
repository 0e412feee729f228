"""Executors against the real engines: local worker processes, a local Ray instance and
submitit's local cluster (with a job preempted and one killed mid-run), each compared with
the serial executor on the same sweep."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from underbudget.cli import main
from underbudget.config import load_config, run_name
from underbudget.experiment.executors import DONE, SKIPPED
from underbudget.experiment.launch import launch
from underbudget.experiment.progress import Progress
from underbudget.runs import Run
from underbudget.runs.lock import holder

SWEEP = ['sweep={"seed": [0, 1, 2, 3]}', "train.epochs=2", "train.device=cpu"]


def numbers(summary: dict) -> dict:
    """A summary without its timings (the only values that may differ between executors)."""
    return {k: numbers(v) if isinstance(v, dict) else v for k, v in summary.items()
            if "time" not in k}


def summaries(path: Path) -> dict[str, dict]:
    return {p.parent.name: numbers(json.loads(p.read_text()))
            for p in sorted(path.glob("*/summary.json"))}


def epochs(run: Path) -> list[tuple]:
    return [(e["stage"], e["epoch"]) for e in Run(run).events("epoch")]


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    result = launch(load_config("tiny", SWEEP), tmp_path_factory.mktemp("serial"), quiet=True)
    assert result.ok
    return result


def test_local_workers_run_every_task_once_with_the_serial_numbers(serial, tmp_path):
    result = launch(load_config("tiny", [*SWEEP, "executor.name=local", "executor.workers=2"]),
                    tmp_path, quiet=True)
    assert result.ok and list(result.outcomes) == list(serial.outcomes)
    assert result.path.name == serial.path.name  # the executor is not part of the run's name
    assert summaries(result.path) == summaries(serial.path)
    assert len(summaries(result.path)) == 4
    for child in result.path.glob("seed-*"):
        assert epochs(child) == [(0, 0), (0, 1)]  # each run trained once
    assert (result.path / "report" / "report.md").exists()
    # the workers are other processes, with the thread budget split between them
    assert {o.host for o in result.outcomes.values()} == {os.uname().nodename}


def test_ray_runs_the_report_after_its_children(serial, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        cfg = load_config("tiny", ['sweep={"seed": [0, 1]}', *SWEEP[1:], "executor.name=ray"])
        result = launch(cfg, tmp_path, quiet=True)
    finally:
        ray.shutdown()
    assert result.ok and list(result.outcomes) == ["seed-0", "seed-1", "report"]
    expected = summaries(serial.path)
    assert summaries(result.path) == {k: expected[k] for k in ("seed-0", "seed-1")}
    report = (result.path / "report" / "report.md").read_text()
    assert report.count("seed") >= 1 and (result.path / "report" / "summary.csv").exists()


def slurm_config(*extra: str):
    return load_config("tiny", [*extra, "train.device=cpu", "executor.name=slurm",
                                'executor.slurm.extra={"cluster": "local", "poll_s": 0.2}'])


def test_submitit_local_cluster_runs_the_graph(serial, tmp_path):
    pytest.importorskip("submitit")
    cfg = slurm_config('sweep={"seed": [0, 1]}', "train.epochs=2")
    result = launch(cfg, tmp_path, quiet=True)
    assert result.ok
    expected = summaries(serial.path)
    assert summaries(result.path) == {k: expected[k] for k in ("seed-0", "seed-1")}
    assert list((result.path / "slurm").glob("*_log.out"))  # submitit's job logs


LONG = ["train.epochs=8", "data.options.n_train=2048", "data.batch_size=32",
        "train.deterministic=true"]


def _interrupt_when_checkpointed(run_dir: Path, sig: int, box: dict) -> None:
    """Once the run has an epoch checkpoint, send ``sig`` to the process training it."""
    deadline = time.time() + 120
    while time.time() < deadline:
        info = holder(run_dir)
        if (run_dir / "checkpoint.safetensors").exists() and info and epochs(run_dir):
            box["pid"], box["at_epoch"] = info["pid"], len(epochs(run_dir))
            os.kill(info["pid"], sig)
            return
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGUSR2, signal.SIGKILL],
                         ids=["preempted-requeued", "killed-resubmitted"])
def test_submitit_job_stopped_mid_run_resumes_from_its_checkpoint(tmp_path, sig):
    pytest.importorskip("submitit")
    straight = launch(load_config("tiny", [*LONG, "train.device=cpu"]), tmp_path / "straight",
                      quiet=True)
    cfg = slurm_config(*LONG)
    run_dir = tmp_path / "slurm" / run_name(cfg)
    box: dict = {}
    watcher = threading.Thread(target=_interrupt_when_checkpointed, args=(run_dir, sig, box))
    watcher.start()
    result = launch(cfg, tmp_path / "slurm", quiet=True)
    watcher.join()
    assert box, "the job finished before it could be interrupted"
    assert result.ok
    resumed = [e["from_epoch"] for e in Run(run_dir).events("resume")]
    assert resumed and resumed[0] >= 1  # it went on from an epoch checkpoint
    assert epochs(run_dir) == [(0, e) for e in range(8)]  # no epoch logged twice
    assert numbers(Run(run_dir).read_summary()) == numbers(Run(straight.path).read_summary())
    assert holder(run_dir) is None or holder(run_dir)["pid"] != box["pid"]


def test_dry_run_prints_the_graph_and_executor_flags_are_platform_keys(capsys, tmp_path):
    argv = ["sweep", "tiny", "--dry-run", "seed=0,1", "--out", str(tmp_path)]
    assert main([*argv, "--executor", "local", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "# experiment graph: 3 task(s)" in out and "[report] report" in out
    assert "after seed-0, seed-1" in out
    assert main([*argv, "--executor", "ray", "--ray-address", "auto"]) == 0
    import yaml

    cfg = yaml.safe_load(capsys.readouterr().out)  # the graph lines are YAML comments
    assert cfg["executor"]["name"] == "ray" and cfg["executor"]["ray_address"] == "auto"
    names = {run_name(load_config("tiny", [f"executor.name={n}"])) for n in ("serial", "local")}
    assert len(names) == 1
    assert main([*argv, "--workers", "2", "executor.workers=3"]) == 2
    assert "--workers and executor.workers" in capsys.readouterr().err


def test_missing_engine_names_its_extra(tmp_path, monkeypatch):
    import sys

    from underbudget.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'underbudget\[ray\]'"):
        launch(load_config("tiny", ["executor.name=ray"]), tmp_path, quiet=True)
    with pytest.raises(MissingDependencyError, match=r"pip install 'underbudget\[slurm\]'"):
        launch(load_config("tiny", ["executor.name=slurm"]), tmp_path, quiet=True)


def test_progress_line_counts_and_eta():
    lines: list[str] = []

    class Sink:
        def write(self, text):
            lines.append(text)

        def flush(self):
            pass

    p = Progress(5, slots=2, stream=Sink())
    p.started("a")
    p.started("b")
    assert p.line() == "graph: 0/5 done, 2 running, 0 failed | eta ? | running: a, b"
    p.finished("a", DONE, 10.0)
    p.finished("b", "failed", 3.0)
    p.started("c")
    p.finished("c", DONE, 20.0)
    p.finished("d", SKIPPED, 0.0)
    # mean of the done tasks (15 s) x 1 task left / min(2 slots, 1 left)
    assert p.eta() == pytest.approx(15.0)
    assert p.line() == "graph: 2/5 done, 0 running, 1 failed, 1 skipped | eta 0:15"
    assert sum("graph:" in line for line in lines) == 7
