"""The training loop: lifecycle order, learning, resume equality, guards, selection, LR."""

from __future__ import annotations

import math

import pytest
import torch

from underbudget.config import OptimConfig, TrainConfig
from underbudget.runs import Run
from underbudget.train import Callback, DivergedError, Trainer, lr_factor
from underbudget.utils.seeding import generator


class TensorLoader:
    """Minimal loader with the Loader contract: set_epoch seeds the order."""

    def __init__(self, x, y, batch_size=16, shuffle=True, seed=0):
        self.x, self.y, self.bs, self.shuffle, self.seed = x, y, batch_size, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return math.ceil(len(self.y) / self.bs)

    def __iter__(self):
        n = len(self.y)
        order = (torch.randperm(n, generator=generator(self.seed, self.epoch))
                 if self.shuffle else torch.arange(n))
        for i in range(0, n, self.bs):
            idx = order[i:i + self.bs]
            yield self.x[idx], self.y[idx]


def blobs(n=256, d=10, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, d, generator=g) * 3
    y = torch.arange(n) % classes
    x = centers[y] + torch.randn(n, d, generator=g)
    return x, y


def make(run=None, epochs_cfg=None, callbacks=(), lr=0.05, **train):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(),
                                torch.nn.Dropout(0.2), torch.nn.Linear(32, 4))
    optim = OptimConfig(name="sgd", lr=lr, momentum=0.9, weight_decay=1e-4, schedule="cosine")
    cfg = TrainConfig(device="cpu", progress=False, **train)
    return Trainer(model, optim, cfg, run=run, callbacks=callbacks)


def test_training_learns_far_above_chance():
    x, y = blobs()
    trainer = make()
    res = trainer.fit(TensorLoader(x, y), 5, eval_loaders={"test": TensorLoader(x, y, 64, False)})
    assert res["test_acc"] > 0.9  # chance is 0.25
    assert res["test_n"] == 256 and res["test_errors"] == round(256 * (1 - res["test_acc"]))


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def __getattribute__(self, name):
        if name.startswith(("before_", "after_")):
            calls = object.__getattribute__(self, "calls")
            return lambda *a: calls.append(name)
        return object.__getattribute__(self, name)


def test_lifecycle_order():
    x, y = blobs(32)
    rec = Recorder()
    trainer = make(callbacks=[rec])
    trainer.fit(TensorLoader(x, y, 16), 1)
    trainer.finish()
    step = ["before_step", "before_optimizer_step", "after_optimizer_step", "after_step"]
    assert rec.calls == (["before_run", "before_stage", "before_epoch"] + step * 2
                         + ["after_epoch", "after_stage", "after_run"])


class Kill(Callback):
    """Simulates a crash in the middle of an epoch."""

    def __init__(self, at_step):
        self.at_step = at_step

    def after_step(self, trainer, outputs):
        if trainer.step == self.at_step:
            raise KeyboardInterrupt


def _two_stages(trainer, x, y):
    trainer.fit(TensorLoader(x, y), 3, stage=0)
    trainer.fit(TensorLoader(x, y), 2, stage=1)


def test_resume_after_kill_gives_identical_weights(tmp_path):
    x, y = blobs()
    ref = make(run=Run(tmp_path / "ref"))
    _two_stages(ref, x, y)
    crashed_run = Run(tmp_path / "crash")
    with pytest.raises(KeyboardInterrupt):
        _two_stages(make(run=crashed_run, callbacks=[Kill(at_step=16 * 3 + 20)]), x, y)
    resumed = make(run=crashed_run)
    _two_stages(resumed, x, y)
    assert resumed.resumed
    for (k, a), b in zip(ref.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert resumed.step == ref.step
    epochs = [(e["stage"], e["epoch"]) for e in crashed_run.events("epoch")]
    assert epochs == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]  # no event counted twice


def test_divergence_guard_stops_with_a_clear_message():
    x, y = blobs()
    trainer = make(lr=1e6)
    with pytest.raises(DivergedError, match="diverged.*lower optim.lr"):
        trainer.fit(TensorLoader(x * 1e3, y), 3)


def test_best_selection_restores_best_epoch_and_early_stops():
    x, y = blobs()
    val = TensorLoader(x[:64], y[:64], 64, False)

    class Sabotage(Callback):
        """After epoch 0, destroy the weights: epoch 0 must be the one restored."""

        def after_epoch(self, trainer, metrics):
            if trainer.epoch == 0:
                self.best = {k: v.clone() for k, v in trainer.model.state_dict().items()}
            else:
                for p in trainer.model.parameters():
                    p.data.zero_()

        def before_step(self, trainer, batch):
            if trainer.epoch > 0:
                for g in trainer.optimizer.param_groups:
                    g["lr"] = 0.0

    sab = Sabotage()
    trainer = make(callbacks=[sab], select="best", patience=2)
    res = trainer.fit(TensorLoader(x, y), 10, val_loader=val)
    assert res["selected_epoch"] == 1 and res["stopped_early"] and res["epochs_run"] == 3
    assert res["selection"] == "best" and not res["selection_constrained"]
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, sab.best[k]), k


def test_lr_schedules_match_hand_values():
    cos = OptimConfig(lr=1.0, schedule="cosine")
    assert lr_factor(0, 10, 4, cos) == pytest.approx(1.0)
    assert lr_factor(20, 10, 4, cos) == pytest.approx(0.5)  # half way: (1 + cos(pi/2)) / 2
    ms = OptimConfig(lr=0.1, schedule="multistep", milestones=[2, 3], gamma=0.1)
    assert [lr_factor(s, 5, 4, ms) for s in (0, 9, 10, 15)] == pytest.approx([1, 1, 0.1, 0.01])
    frac = OptimConfig(lr=0.1, schedule="multistep", milestones=[0.5, 0.75])
    assert lr_factor(10, 5, 4, frac) == pytest.approx(0.1)
    warm = OptimConfig(lr=0.1, schedule="none", warmup_epochs=2)
    assert lr_factor(0, 10, 5, warm) == pytest.approx(0.05)
    assert lr_factor(19, 10, 5, warm) == pytest.approx(1.0)
    assert lr_factor(20, 10, 5, warm) == pytest.approx(1.0)
