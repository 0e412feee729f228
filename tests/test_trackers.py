"""Trackers are optional: a clear error when missing, scalars mirrored when present."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from underbudget.config import OptimConfig, TrainConfig
from underbudget.errors import ConfigError, MissingDependencyError
from underbudget.train import Trainer
from underbudget.train.trackers import TrackerCallback


class Batches:
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(32, 4, generator=g), torch.randint(0, 2, (32,), generator=g)

    def set_epoch(self, epoch):
        pass

    def __len__(self):
        return 2

    def __iter__(self):
        yield self.x[:16], self.y[:16]
        yield self.x[16:], self.y[16:]


def trainer_with(trackers):
    return Trainer(torch.nn.Linear(4, 2), OptimConfig(lr=0.1),
                   TrainConfig(device="cpu", progress=False, trackers=trackers))


def test_unknown_tracker_suggests():
    with pytest.raises(ConfigError, match="did you mean 'wandb'"):
        TrackerCallback(["wandbb"])


def test_missing_package_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import fails
    trainer = trainer_with(["mlflow"])
    with pytest.raises(MissingDependencyError, match=r"pip install 'underbudget\[track\]'"):
        trainer.fit(Batches(), 1)


def test_scalars_reach_a_tracker(monkeypatch):
    logged = []

    class FakeRun:
        def log(self, values, step):
            logged.append((step, values))

        def finish(self):
            logged.append("finished")

    fake = types.SimpleNamespace(init=lambda **kw: FakeRun())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    trainer = trainer_with(["wandb"])
    trainer.fit(Batches(), 2)
    trainer.finish()
    epochs = [v for v in logged if v != "finished" and "epoch/train_loss" in v[1]]
    assert [step for step, _ in epochs] == [2, 4] and logged[-1] == "finished"
