"""Evaluate only what a run reports: which epochs evaluate validation and test data."""

import json

import pytest

from underbudget.config import load_config
from underbudget.errors import ConfigError
from underbudget.experiment.launch import run_experiment


def _epochs(tmp_path, *overrides):
    cfg = load_config("tiny", ["train.epochs=3", "data.val_fraction=0.25", *overrides])
    path = run_experiment(cfg, tmp_path, quiet=True)
    lines = (path / "metrics.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    summary = json.loads((path / "summary.json").read_text())
    return [e for e in events if e["event"] == "epoch"], summary


def test_last_epoch_selection_validates_and_tests_once(tmp_path):
    epochs, summary = _epochs(tmp_path)
    assert ["val_acc" in e for e in epochs] == [False, False, True]
    assert not any("test_acc" in e for e in epochs)
    assert "test_acc" in summary and "val_acc" in summary


def test_best_epoch_selection_validates_every_epoch(tmp_path):
    epochs, summary = _epochs(tmp_path, "train.select=best")
    assert all("val_acc" in e for e in epochs)
    assert summary["candidate_epochs"] == 3


def test_curves_bring_back_per_epoch_evaluations(tmp_path):
    epochs, _ = _epochs(tmp_path, "train.curves=[val,test]")
    assert all("val_acc" in e and "test_acc" in e for e in epochs)


def test_the_same_weights_whatever_is_evaluated(tmp_path):
    _, quiet = _epochs(tmp_path / "a")
    _, curves = _epochs(tmp_path / "b", "train.curves=[val,test,train]")
    assert quiet["test_acc"] == curves["test_acc"] and quiet["val_acc"] == curves["val_acc"]


def test_an_unknown_curve_is_refused_with_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'test'"):
        load_config("tiny", ["train.curves=[tset]"])
