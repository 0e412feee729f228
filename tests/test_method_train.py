"""Plain training on real data (scikit-learn's digits) and the data budget path."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from underbudget.config import load_config
from underbudget.experiment.launch import run_experiment


def digits_cfg(**data):
    values = {
        "name": "digits-train",
        "data": {"name": "digits", "batch_size": 32, "val_fraction": 0.1, **data},
        "model": {"name": "lenet5"},
        "optim": {"name": "sgd", "lr": 0.05, "schedule": "cosine"},
        "train": {"epochs": 6, "progress": False, "device": "cpu"},
        "method": {"name": "train", "eval_train": True},
    }
    return load_config(values)


def test_short_training_on_digits_clearly_beats_chance(tmp_path):
    path = run_experiment(digits_cfg(), tmp_path, quiet=True)
    summary = json.loads((path / "summary.json").read_text())
    assert summary["test_acc"] > 0.85  # chance is 0.10
    assert summary["val_acc"] > 0.8 and summary["test_n"] > 400
    assert abs(summary["gap_train_test"] - (summary["train_acc"] - summary["test_acc"])) < 1e-12


def test_budget_indices_are_saved_and_disjoint_from_validation(tmp_path):
    path = run_experiment(digits_cfg(kshot=5), tmp_path, quiet=True)
    idx = load_file(str(path / "artifacts" / "data_indices.safetensors"))
    assert idx["train"].numel() == 50  # exactly 5 per class
    assert not set(idx["train"].tolist()) & set(idx["val"].tolist())
    summary = json.loads((path / "summary.json").read_text())
    assert summary["train_examples"] == 50
    again = run_experiment(digits_cfg(kshot=5), tmp_path / "again", quiet=True)
    assert torch.equal(load_file(str(again / "artifacts" / "data_indices.safetensors"))["train"],
                       idx["train"])
