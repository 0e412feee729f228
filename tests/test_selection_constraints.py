"""Best-epoch selection never undoes a constraint, and costs count what was spent.

Validation accuracy is made to peak at the first epoch of every stage (a callback scrambles
the surviving weights at the start of every later epoch), so a selection that ignored the
constraints would pick a model from before the pruning schedule ended.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from underbudget.config import load_config
from underbudget.experiment.launch import run_experiment
from underbudget.sparsity import MaskSet
from underbudget.sparsity.allocation import keep_count
from underbudget.train import Callback, Trainer
from underbudget.utils.seeding import generator

TINY = {
    "data.val_fraction": 0.25,
    "train.select": "best",
    "train.epochs": 6,
    "train.progress": False,
    "train.device": "cpu",
}


class PeakFirst(Callback):
    """From the second epoch of a stage on, shuffle the alive weights of every layer (same
    values, same zeros, scrambled positions): what was learned is lost, the scale is kept."""

    name = "peak_first"

    def before_epoch(self, trainer) -> None:
        if trainer.epoch == 0:
            return
        gen = generator(1234, trainer.stage, trainer.epoch)
        with torch.no_grad():
            for p in trainer.model.parameters():
                if p.dim() < 2:
                    continue
                flat = p.view(-1)
                alive = flat.nonzero().squeeze(1)
                order = torch.randperm(alive.numel(), generator=gen).to(alive.device)
                flat[alive] = flat[alive[order]]


@pytest.fixture
def peak_first(monkeypatch):
    """Every Trainer built from now on gets a PeakFirst callback."""
    original = Trainer.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.callbacks.append(PeakFirst())

    monkeypatch.setattr(Trainer, "__init__", init)


def tiny(**overrides):
    values = {**TINY, **overrides}
    return load_config("tiny", [f"{k}={v}" for k, v in values.items()])


def measured_density(path, mask_file="masks.safetensors", weights="model.safetensors"):
    """Nonzero share of the masked weights in the saved model, and the masks' own density."""
    masks = MaskSet.load(path / "artifacts" / mask_file)
    state = load_file(str(path / "artifacts" / weights))
    nnz = sum(int(state[n].count_nonzero()) for n in masks)
    return nnz / masks.numel(), masks


def summary(path):
    return json.loads((path / "summary.json").read_text())


def test_gradual_with_best_selection_keeps_the_target_density(peak_first, tmp_path):
    density = 0.1
    cfg = tiny(**{"sparsity.method": "gradual", "sparsity.density": density,
                  "sparsity.end": 0.5, "sparsity.interval": 2})
    path = run_experiment(cfg, tmp_path, quiet=True)
    s = summary(path)
    measured, masks = measured_density(path)
    assert masks.nonzeros() == keep_count(density, masks.numel())
    assert measured == pytest.approx(masks.density()) and s["density"] == pytest.approx(density,
                                                                                       abs=1e-3)
    # 6 epochs of 6 steps; the schedule ends at step 18 (after epoch 3): epochs 1-2 excluded
    assert s["selection"] == "best" and s["selection_constrained"] is True
    assert s["selected_epoch"] >= 3 and s["candidate_epochs"] == 4
    epochs = [e for e in map(json.loads, (path / "metrics.jsonl").read_text().splitlines())
              if e["event"] == "epoch"]
    assert [e["meets_constraints"] for e in epochs] == [False, False, True, True, True, True]
    # validation accuracy really peaked before the schedule ended
    assert epochs[0]["val_acc"] > max(e["val_acc"] for e in epochs[2:])


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_dynamic_sparse_counters_are_not_rewound(peak_first, tmp_path, method):
    cfg = tiny(**{"sparsity.method": method, "sparsity.density": 0.2,
                  "sparsity.interval": 4, "sparsity.t_end": 0.9})
    path = run_experiment(cfg, tmp_path, quiet=True)
    s = summary(path)
    measured, masks = measured_density(path)
    assert measured == pytest.approx(masks.density()) == pytest.approx(0.2, abs=2e-3)
    assert s["selected_epoch"] < 6 and s["selection_constrained"] is False
    # every update of the whole run is counted (restoring the selected epoch used to rewind
    # the update counter to that epoch's)
    updates = [e for e in map(json.loads, (path / "metrics.jsonl").read_text().splitlines())
               if e["event"] == "mask_update" and e.get("method") == method]
    steps = 6 * 6
    expected = list(range(4, int(0.9 * steps), 4))
    assert [e["update_step"] for e in updates] == expected
    assert s["mask_updates"] == len(expected)
    # the saved masks are those of the selected epoch's weights: zero outside them
    state = load_file(str(path / "artifacts" / "model.safetensors"))
    for name, mask in masks.items():
        assert not state[name][~mask].any(), name


def test_training_flops_count_every_epoch_spent(peak_first, tmp_path):
    """3 x forward FLOPs x examples for all 6 epochs, not only up to the selected one."""
    cfg = tiny(**{"sparsity.method": "prune_at_init", "sparsity.density": 0.5})
    path = run_experiment(cfg, tmp_path, quiet=True)
    s = summary(path)
    assert s["selected_epoch"] < 6  # an earlier epoch was restored
    train_examples = s["train_examples"]
    assert train_examples == 192  # 256 minus the 25 % validation split
    # MLP 64 -> 32 -> 4 at density 0.5 (global magnitude): count kept weights per layer
    masks = MaskSet.load(path / "artifacts" / "masks.safetensors")
    kept = sum(int(m.count_nonzero()) for m in masks.values())
    forward = 2 * kept + (32 + 4) + 32  # MACs x 2, bias adds, ReLU
    assert s["train_flops"] == pytest.approx(3 * forward * train_examples * 6)
    assert s["train_samples"] == train_examples * 6


def test_selection_falls_back_to_the_last_epoch_when_no_epoch_qualifies():
    x = torch.randn(64, 5)
    y = (x[:, 0] > 0).long()

    class Loader:
        def __len__(self):
            return 4

        def __iter__(self):
            for i in range(0, 64, 16):
                yield x[i:i + 16], y[i:i + 16]

    class Never(Callback):
        def meets_constraints(self, trainer):
            return False

    from underbudget.config import OptimConfig, TrainConfig

    model = torch.nn.Linear(5, 2)
    trainer = Trainer(model, OptimConfig(lr=0.1), TrainConfig(device="cpu", progress=False,
                                                              select="best"),
                      callbacks=[Never()])
    res = trainer.fit(Loader(), 3, val_loader=Loader())
    assert res["selection"] == "last" and res["selection_fallback"] is True
    assert res["selected_epoch"] == 3 and res["candidate_epochs"] == 0


def test_a_plain_dataloader_trains(tmp_path):
    """Any sized iterable of batches, e.g. a torch DataLoader, is a training loader."""
    from torch.utils.data import DataLoader, TensorDataset

    from underbudget.config import OptimConfig, TrainConfig

    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=g)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    trainer = Trainer(model, OptimConfig(lr=0.1), TrainConfig(device="cpu", progress=False))
    res = trainer.fit(loader, 5, eval_loaders={"test": DataLoader(TensorDataset(x, y), 64)})
    assert res["test_acc"] > 0.85 and res["steps"] == 5 * 8

    class Endless:
        def __iter__(self):
            yield x[:4], y[:4]

    from underbudget.errors import UnderbudgetError

    with pytest.raises(UnderbudgetError, match="has no length"):
        trainer.fit(Endless(), 1)


ANYTIME = {
    "name": "any",
    "data": {"name": "synthetic", "image_size": 8, "channels": 1, "batch_size": 32,
             "options": {"num_classes": 4, "n_train": 480, "n_test": 200}},
    "model": {"name": "lenet5"},
    "optim": {"name": "sgd", "lr": 0.05, "schedule": "none"},
    "train": {"epochs": 3, "progress": False, "select": "best", "device": "cpu"},
    "method": {"name": "anytime", "megabatches": 3, "tau": 4.5, "interval": 4,
               "criterion": "magnitude"},
}


def events(path, name):
    return [e for e in map(json.loads, (path / "metrics.jsonl").read_text().splitlines())
            if e["event"] == name]


@pytest.mark.parametrize("strategy", ["app", "gmp"])
def test_anytime_stages_end_at_their_scheduled_density(peak_first, tmp_path, strategy):
    values = json.loads(json.dumps(ANYTIME))
    values["method"]["strategy"] = strategy
    path = run_experiment(load_config(values), tmp_path, quiet=True)
    stages = events(path, "anytime_stage")
    masks = MaskSet.load(path / "artifacts" / "masks.safetensors")
    one_weight = 1.0 / masks.numel()
    for e in stages:
        assert abs(e["density"] - e["density_scheduled"]) <= one_weight + 1e-12, e["megabatch"]
    if strategy == "app":  # masks are fixed within a stage: earlier epochs are restored
        assert any(e["selected_epoch"] < 3 for e in stages)
    else:  # pruning goes on inside the stages: epochs before each stage's last event excluded
        assert all(e["selection_constrained"] for e in stages[:2])
    # training FLOPs: every epoch of every stage, with the masks in force while it trained
    s = summary(path)
    assert s["final_density_measured"] == pytest.approx(s["final_density_scheduled"],
                                                        abs=one_weight)
    if strategy == "app":  # masks are fixed within an APP stage: a hand count per stage
        spent = sum(3 * e["flops_nonzero"] * e["train_examples"] * 3 for e in stages)
        assert stages[-1]["train_flops_cumulative"] == pytest.approx(spent)


def test_d2sparse_counters_are_not_rewound_and_s_keeps_its_density(peak_first, tmp_path):
    cfg = tiny(**{"method.name": "d2sparse", "method.density": 0.2, "method.fast_interval": 2,
                  "method.slow_interval": 6, "method.interval_floor": False,
                  "method.fast_t_end": 0.9, "method.slow_t_end": 0.9})
    path = run_experiment(cfg, tmp_path, quiet=True)
    s = summary(path)
    assert s["selected_epoch"] < 6
    measured, masks = measured_density(path)
    assert measured == pytest.approx(masks.density()) == pytest.approx(0.2, abs=2e-3)
    state = load_file(str(path / "artifacts" / "model.safetensors"))
    for name, mask in masks.items():
        assert not state[name][~mask].any(), name
    evolution = events(path, "mask_evolution")
    for which in ("fast", "slow"):
        assert s[f"{which}_updates"] == sum(which in e["updated"] for e in evolution) > 0
