"""Anytime cost accounting against hand counts: every FLOP, example and second spent,
discarded epochs, scoring passes, evaluation and saving included, across a resume."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from underbudget.config import load_config
from underbudget.experiment.launch import run_experiment
from underbudget.methods.anytime import strategies
from underbudget.sparsity import MaskSet

IN, HIDDEN, CLASSES, EPOCHS, T = 64, 16, 4, 3, 3


def mlp_cfg(**train):
    return load_config({
        "name": "cost",
        "data": {"name": "synthetic", "image_size": 8, "channels": 1, "batch_size": 32,
                 "options": {"num_classes": CLASSES, "n_train": 300, "n_test": 100}},
        "model": {"name": "mlp", "kwargs": {"hidden": [HIDDEN]}},
        # a learning rate this small leaves every prediction as it is: validation accuracy
        # never improves after epoch 1, so selection keeps epoch 1 and discards the others
        "optim": {"name": "sgd", "lr": 1e-9, "schedule": "none"},
        "train": {"epochs": EPOCHS, "progress": False, "select": "best", "device": "cpu",
                  **train},
        "method": {"name": "anytime", "strategy": "app", "megabatches": T, "tau": 4.5},
    })


def events(path: Path, kind: str) -> list[dict]:
    lines = (path / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind]


def forward_flops(kept_w1: int, kept_w2: int) -> int:
    """One sample through Linear(64,16) -> ReLU -> Linear(16,4): 2 FLOPs per kept weight,
    one per bias add and one per ReLU output."""
    return 2 * kept_w1 + 2 * kept_w2 + HIDDEN + HIDDEN + CLASSES


def test_costs_are_a_hand_count_of_everything_spent(tmp_path):
    path = run_experiment(mlp_cfg(), tmp_path, quiet=True)
    stages = events(path, "anytime_stage")
    assert [s["selected_epoch"] for s in stages] == [1, 1, 1]  # two epochs a stage discarded
    idx = load_file(str(path / "artifacts" / "stream_indices.safetensors"))
    n_train = [idx[f"stage_{b}_train"].numel() for b in range(T)]
    n_val = [idx[f"stage_{b}_val"].numel() for b in range(T)]
    flops, before = [], forward_flops(IN * HIDDEN, HIDDEN * CLASSES)  # dense at the start
    train = samples = prune = prune_n = ev = ev_n = 0.0
    for b in range(T):
        m = MaskSet.load(path / "artifacts" / f"masks_megabatch_{b}.safetensors")
        f = forward_flops(int(m["features.1.weight"].sum()), int(m["fc.weight"].sum()))
        flops.append(f)
        train += 3 * f * n_train[b] * EPOCHS  # forward + backward, every epoch run
        samples += n_train[b] * EPOCHS
        k = math.ceil(0.2 * n_train[b])  # SNIP on 20 % of the replayed data, before pruning
        prune += 3 * before * k
        prune_n += k
        # validation after every epoch; the restored epoch-1 weights are evaluated again on
        # validation, test and training data at the end of the stage
        seen = EPOCHS * n_val[b] + n_val[b] + 100 + n_train[b]
        ev += f * seen
        ev_n += seen
        before = f
        s = stages[b]
        assert s["flops_nonzero"] == f
        assert s["train_flops_cumulative"] == pytest.approx(train, rel=1e-12)
        assert s["train_samples_cumulative"] == samples
        assert s["prune_flops_cumulative"] == pytest.approx(prune, rel=1e-12)
        assert s["prune_samples_cumulative"] == prune_n
        assert s["eval_flops_cumulative"] == pytest.approx(ev, rel=1e-12)
        assert s["eval_samples_cumulative"] == ev_n
        assert s["flops_spent_cumulative"] == pytest.approx(train + prune + ev, rel=1e-12)
    summary = json.loads((path / "summary.json").read_text())
    assert summary["total_train_flops"] == pytest.approx(train, rel=1e-12)
    assert summary["train_samples"] == samples
    assert summary["total_prune_flops"] == pytest.approx(prune, rel=1e-12)
    assert summary["total_flops_spent"] == pytest.approx(train + prune + ev, rel=1e-12)


def _slow_saves(monkeypatch, seconds: float) -> None:
    original = MaskSet.save

    def slow(self, *args, **kwargs):
        time.sleep(seconds)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MaskSet, "save", slow)


def test_wall_time_is_the_clock_of_the_run(tmp_path, monkeypatch):
    _slow_saves(monkeypatch, 0.25)  # saving masks after each stage: time outside any epoch
    t0 = time.perf_counter()
    path = run_experiment(mlp_cfg(epochs=1), tmp_path, quiet=True)
    outer = time.perf_counter() - t0
    stages = events(path, "anytime_stage")
    for b, s in enumerate(stages):
        parts = s["time_train"] + s["time_eval"] + s["time_prune"]
        assert s["wall_time_cumulative"] >= parts + 0.25 * (b + 1)
        assert s["time_other"] == pytest.approx(s["wall_time_cumulative"] - parts)
    summary = json.loads((path / "summary.json").read_text())
    # the final masks.safetensors is a fourth slow save
    assert stages[-1]["wall_time_cumulative"] + 0.25 <= summary["wall_time"] <= outer
    assert summary["time_other"] >= 4 * 0.25


def test_wall_time_adds_up_over_a_crash_and_resume(tmp_path, monkeypatch):
    _slow_saves(monkeypatch, 0.3)
    prune = strategies._prune

    def crash_at_stage_1(ctx, trainer, masks, density, b, criterion=None):
        if b == 1:
            raise RuntimeError("simulated crash")
        return prune(ctx, trainer, masks, density, b, criterion)

    monkeypatch.setattr(strategies, "_prune", crash_at_stage_1)
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_experiment(mlp_cfg(epochs=1), tmp_path, quiet=True)
    first = time.perf_counter() - t0
    monkeypatch.setattr(strategies, "_prune", prune)
    t0 = time.perf_counter()
    path = run_experiment(mlp_cfg(epochs=1), tmp_path, quiet=True)
    second = time.perf_counter() - t0
    stages = events(path, "anytime_stage")
    assert [s["megabatch"] for s in stages] == [0, 1, 2]
    w0 = stages[0]["wall_time_cumulative"]  # logged by the first process
    assert w0 >= 0.3
    summary = json.loads((path / "summary.json").read_text())
    # the second process continues the clock where the first one's checkpoint left it
    assert stages[1]["wall_time_cumulative"] >= w0 + 0.3
    assert w0 + 3 * 0.3 <= summary["wall_time"] <= first + second
