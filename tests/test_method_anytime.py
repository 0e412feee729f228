"""Anytime method: schedules measured per stage, nesting, all strategies end to end,
resume after SIGKILL, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from underbudget.config import load_config
from underbudget.errors import ConfigError
from underbudget.experiment.launch import run_experiment
from underbudget.sparsity import MaskSet

BASE = {
    "name": "any",
    "data": {"name": "synthetic", "image_size": 8, "channels": 1, "batch_size": 32,
             "options": {"num_classes": 4, "n_train": 480, "n_test": 200}},
    "model": {"name": "lenet5"},
    "optim": {"name": "sgd", "lr": 0.05, "schedule": "none"},
    "train": {"epochs": 2, "progress": False, "select": "best", "device": "cpu"},
    "method": {"name": "anytime", "strategy": "app", "megabatches": 3, "tau": 4.5},
}


def cfg_with(**method):
    values = json.loads(json.dumps(BASE))
    values["method"].update(method)
    return load_config(values)


def stage_events(path: Path) -> list[dict]:
    lines = (path / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == "anytime_stage"]


def test_app_density_follows_schedule_and_masks_nest(tmp_path):
    path = run_experiment(cfg_with(strategy="app"), tmp_path, quiet=True)
    events = stage_events(path)
    expected = [0.8 ** t for t in torch.linspace(1, 4.5, 3).tolist()]
    assert [e["megabatch"] for e in events] == [0, 1, 2]
    masks = [MaskSet.load(path / "artifacts" / f"masks_megabatch_{b}.safetensors")
             for b in range(3)]
    for b, (e, m) in enumerate(zip(events, masks)):
        n = m.numel()
        assert abs(e["density"] - expected[b]) <= 1.0 / n + 1e-12  # one weight of rounding
        assert e["density"] == pytest.approx(m.density())
        assert e["density_scheduled"] == pytest.approx(expected[b])
    assert masks[2].is_subset_of(masks[1]) and masks[1].is_subset_of(masks[0])
    # pruned weights of the deployed model are exactly zero
    weights = load_file(str(path / "artifacts" / "model.safetensors"))
    for name, mask in masks[2].items():
        assert torch.all(weights[name][~mask] == 0)


def test_osp_constant_and_dense_full(tmp_path):
    osp = stage_events(run_experiment(cfg_with(strategy="osp"), tmp_path, quiet=True))
    final = 0.8 ** 4.5
    assert all(abs(e["density"] - final) < 1e-3 for e in osp)
    dense = stage_events(run_experiment(cfg_with(strategy="dense"), tmp_path, quiet=True))
    assert all(e["density"] == 1.0 for e in dense)
    assert dense[-1]["flops_nonzero"] == dense[-1]["flops_dense"]
    assert osp[-1]["flops_nonzero"] < osp[-1]["flops_dense"]


def test_all_strategies_run_and_the_report_compares_them(tmp_path):
    values = json.loads(json.dumps(BASE))
    values["train"]["epochs"] = 1
    values["sweep"] = {"method.strategy": ["dense", "osp", "app", "gmp", "rigl", "set", "imp"]}
    path = run_experiment(load_config(values), tmp_path, quiet=True)
    report = (path / "report" / "report.md").read_text()
    for name in ("dense", "osp", "app", "gmp", "rigl", "set", "imp"):
        assert f"strategy={name}" in report
        summary = json.loads((path / f"strategy-{name}" / "summary.json").read_text())
        assert summary["status"] == "ok" and summary["num_stages"] == 3
        assert summary["cer_count"] == sum(summary["test_errors"])
        final = summary["final_density_measured"]
        assert (final == 1.0) if name == "dense" else final < 0.5
    for png in ("anytime_test_acc_vs_stage", "anytime_test_error_vs_stage",
                "anytime_density_vs_stage", "anytime_gap_vs_stage", "anytime_acc_vs_train_flops"):
        assert (path / "report" / f"{png}.png").stat().st_size > 1000


def _cli(args, env):
    return subprocess.Popen([sys.executable, "-m", "underbudget.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_resume_after_sigkill_mid_stream(tmp_path):
    config = tmp_path / "any.yaml"
    values = json.loads(json.dumps(BASE))
    values["train"].update(epochs=4, deterministic=True)
    values["data"]["options"]["n_train"] = 1500
    config.write_text(json.dumps(values))
    env = {**os.environ, "UNDERBUDGET_RUNS": str(tmp_path / "killed")}
    proc = _cli(["run", str(config)], env)
    deadline = time.time() + 120
    metrics = None
    while time.time() < deadline and proc.poll() is None:
        found = list((tmp_path / "killed").glob("*/metrics.jsonl"))
        if found:
            metrics = found[0]
            text = metrics.read_text()
            if '"event": "epoch", "stage": 1, "epoch": 1' in text:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.02)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    run_dir = metrics.parent
    assert not (run_dir / "summary.json").exists()
    assert subprocess.run([sys.executable, "-m", "underbudget.cli", "run", str(config)],
                          env=env, capture_output=True).returncode == 0
    env_ref = {**os.environ, "UNDERBUDGET_RUNS": str(tmp_path / "ref")}
    assert subprocess.run([sys.executable, "-m", "underbudget.cli", "run", str(config)],
                          env=env_ref, capture_output=True).returncode == 0
    ref_dir = next((tmp_path / "ref").glob("any-*"))
    a = json.loads((run_dir / "summary.json").read_text())
    b = json.loads((ref_dir / "summary.json").read_text())
    assert a["test_errors"] == b["test_errors"] and a["cer_count"] == b["cer_count"]
    wa = load_file(str(run_dir / "artifacts" / "model.safetensors"))
    wb = load_file(str(ref_dir / "artifacts" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wb)
    stages = [e["megabatch"] for e in stage_events(run_dir)]
    assert stages == [0, 1, 2]  # no stage logged twice


@pytest.mark.parametrize("method, message", [
    ({"megabatches": 10_000}, "larger than the 480 training examples"),
    ({"tau": 0}, "tau must be > 0"),
    ({"tau": -1}, "tau must be > 0"),
    ({"strategy": "appp"}, "did you mean 'app'"),
    ({"replay": "windows:2"}, "did you mean 'window'"),
    ({"replay": "buffer"}, "invalid replay"),
])
def test_bad_input_is_one_clear_error(tmp_path, method, message):
    with pytest.raises(ConfigError, match=message):
        run_experiment(cfg_with(**method), tmp_path, quiet=True)
