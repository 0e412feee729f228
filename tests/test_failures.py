"""A task that fails is recorded, the rest of the graph goes on, the command says what failed
and how to retry, and the same command retries only what failed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import underbudget.methods.train as train_method
from underbudget.cli import main
from underbudget.config import load_config
from underbudget.experiment.launch import launch, run_experiment
from underbudget.runs import Run

LOTTERY = ["method.name=lottery", "method.levels=1", "train.epochs=1", "train.device=cpu"]


def mtimes(parent: Path, names: list[str]) -> dict[str, int]:
    return {n: (parent / n / "summary.json").stat().st_mtime_ns for n in names}


def test_failed_child_is_listed_and_the_same_command_retries_only_it(tmp_path, capsys):
    argv = ["sweep", "tiny", "--out", str(tmp_path), *LOTTERY, "method.rewind=init,step:100"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    (parent,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    bad, good = parent / "rewind-step-100", parent / "rewind-init"
    assert "1 of 3 task(s) failed:" in err
    assert "rewind-step-100: ConfigError: method.rewind=step:100 is past the end of level 0" in err
    assert f"(traceback in {bad / 'error.log'})" in err
    assert "report: skipped: rewind-step-100 failed" in err
    assert "underbudget sweep tiny --out" in err and "method.rewind=init,step:100" in err
    summary = json.loads((bad / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["message"].startswith("ConfigError: ")
    assert summary["seed"] == 0 and summary["method"] == "lottery"
    log = (bad / "error.log").read_text()
    assert "Traceback (most recent call last)" in log and "past the end of level 0" in log
    assert Run(good).read_summary()["status"] == "ok"
    before = mtimes(parent, ["rewind-init"])
    first_log = (bad / "error.log").stat().st_mtime_ns
    assert main(argv) == 1  # the same command: retries the failed child only
    assert mtimes(parent, ["rewind-init"]) == before
    assert (bad / "error.log").stat().st_mtime_ns > first_log


def test_others_finish_and_a_fixed_failure_is_retried_alone(tmp_path, monkeypatch):
    real = train_method.make_trainer

    def fail_seed_1(cfg, model, run):
        if cfg.seed == 1:
            raise RuntimeError("disk on fire\nsecond line")
        return real(cfg, model, run)

    monkeypatch.setattr(train_method, "make_trainer", fail_seed_1)
    cfg = load_config("tiny", ['sweep={"seed": [0, 1, 2]}', "train.epochs=1"])
    result = launch(cfg, tmp_path, quiet=True)
    assert {k: o.status for k, o in result.outcomes.items()} == {
        "seed-0": "done", "seed-1": "failed", "seed-2": "done", "report": "skipped"}
    assert result.failed["seed-1"].reason == "RuntimeError: disk on fire"
    assert result.skipped["report"].reason == "skipped: seed-1 failed"
    parent = result.path
    assert Run(parent / "seed-1").read_summary()["status"] == "failed"
    with pytest.raises(RuntimeError, match="disk on fire"):  # the Python API raises it
        run_experiment(cfg, tmp_path, quiet=True)
    before = mtimes(parent, ["seed-0", "seed-2"])
    monkeypatch.setattr(train_method, "make_trainer", real)
    result = launch(cfg, tmp_path, quiet=True)
    assert result.ok
    assert mtimes(parent, ["seed-0", "seed-2"]) == before  # finished runs were skipped
    assert Run(parent / "seed-1").read_summary()["status"] == "ok"
    assert not (parent / "seed-1" / "error.log").exists()
    assert (parent / "report" / "report.md").exists()


def test_retries_run_a_failed_task_again(tmp_path, monkeypatch):
    real, calls = train_method.make_trainer, []

    def fail_once(cfg, model, run):
        calls.append(cfg.seed)
        if len(calls) == 1:
            raise RuntimeError("transient")
        return real(cfg, model, run)

    monkeypatch.setattr(train_method, "make_trainer", fail_once)
    result = launch(load_config("tiny", ["train.epochs=1", "executor.retries=1"]), tmp_path,
                    quiet=True)
    assert result.ok and calls == [0, 0]


def test_user_error_in_a_single_run_is_one_line_and_leaves_nothing(tmp_path, capsys):
    argv = ["run", "tiny", "--out", str(tmp_path), *LOTTERY, "method.rewind=step:100"]
    assert main(argv) == 2
    assert "error: method.rewind=step:100 is past the end of level 0" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
