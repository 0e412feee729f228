"""The ``train`` method's sparsity section: every method end to end on synthetic data, measured
density at the target, pruned weights exactly zero at every step, mask_update events, the
cubic schedule, training FLOPs, prune-at-init not redone on resume, and config errors."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch.nn.utils import prune as torch_prune

from underbudget.config import load_config
from underbudget.errors import ConfigError
from underbudget.experiment.launch import run_experiment
from underbudget.methods import sparse_setup
from underbudget.methods import train as train_method
from underbudget.methods.common import build_model, prepare_data
from underbudget.runs import Run
from underbudget.sparsity import MaskSet, at_init
from underbudget.sparsity.allocation import keep_count
from underbudget.train import Callback

DENSITY = 0.3
PRUNABLE = {"features.1.weight": (32, 64), "fc.weight": (4, 32)}  # tiny preset's MLP
N = sum(a * b for a, b in PRUNABLE.values())  # 2176
BIAS_AND_RELU_FLOPS = 32 + 4 + 32  # bias adds of both layers + one ReLU per hidden unit


@pytest.fixture(autouse=True)
def _restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


def config(**overrides):
    values = {"sparsity.density": DENSITY, "sparsity.interval": 2, "train.progress": False}
    values.update(overrides)
    return load_config("tiny", [f"{k}={v}" for k, v in values.items()])


class ZeroProbe(Callback):
    """Records, before every forward and after every step, how many pruned weights are not 0."""

    def __init__(self, masks):
        self.masks, self.violations, self.checks = masks, 0, 0

    def _check(self, trainer):
        for name, mask in self.masks.items():
            w = trainer.model.get_parameter(name).detach()
            self.violations += int((w[~mask.to(w.device)] != 0).sum())
        self.checks += 1

    def before_step(self, trainer, batch):
        self._check(trainer)

    def after_step(self, trainer, outputs):
        self._check(trainer)


@pytest.fixture
def probe(monkeypatch):
    """Wrap sparse_callbacks so every training also runs a ZeroProbe after the mask callbacks."""
    probes = []
    original = sparse_setup.sparse_callbacks

    def wrapped(cfg, trainer, data, loader):
        callbacks, masks = original(cfg, trainer, data, loader)
        if masks is not None:
            probes.append(ZeroProbe(masks))
            callbacks = [*callbacks, probes[-1]]
        return callbacks, masks

    monkeypatch.setattr(train_method, "sparse_callbacks", wrapped)  # the name it calls
    return probes


def artifacts(path):
    run = Run(path)
    masks = MaskSet.load(run.artifact("masks.safetensors"))
    weights = load_file(str(run.artifact("model.safetensors")))
    return run, masks, weights


def forward_flops(layer_nnz: dict) -> int:
    """Hand count for the MLP: 2 FLOPs per kept weight, plus biases and ReLU."""
    return 2 * sum(layer_nnz.values()) + BIAS_AND_RELU_FLOPS


METHODS = [
    ("prune_at_init", "magnitude"),
    ("prune_at_init", "random"),
    ("prune_at_init", "snip"),
    ("prune_at_init", "grasp"),
    ("prune_at_init", "synflow"),
    ("prune_at_init", "taylor"),
    ("static", "magnitude"),
    ("gradual", "magnitude"),
    ("set", "magnitude"),
    ("rigl", "magnitude"),
]


@pytest.mark.parametrize(("method", "criterion"), METHODS)
def test_each_method_trains_to_the_target_density(probe, method, criterion):
    cfg = config(**{"sparsity.method": method, "sparsity.criterion": criterion})
    path = run_experiment(cfg, quiet=True)
    run, masks, weights = artifacts(path)
    summary = run.read_summary()
    assert summary["status"] == "ok"
    target = round(DENSITY * N)  # kept weights: round(d N), for every allocation
    assert masks.numel() == N and masks.nonzeros() == target
    assert summary["mask_density"] == target / N
    # pruned weights are exactly zero in the saved model and at every step of training
    for name, mask in masks.items():
        assert not bool(weights[name][~mask].any()), name
    assert probe[0].checks == 2 * 16 and probe[0].violations == 0
    # density measured by brute force from the saved weights
    nnz = sum(int(weights[n].count_nonzero()) for n in PRUNABLE)
    assert summary["prunable_nonzeros"] == nnz and summary["density"] == nnz / N
    assert nnz <= target
    events = run.events("mask_update")
    assert events, "every mask change is logged"
    last = events[-1]
    assert last["density"] == target / N and last["nonzeros"] == target
    assert set(last["layer_densities"]) == set(PRUNABLE)
    if method in ("set", "rigl"):  # the weights just grown are still exactly 0 (nonzero count)
        assert last["flops_nonzero"] == forward_flops(last["layer_nonzeros"]) - 2 * last["grown"]
    else:
        assert last["flops_nonzero"] == forward_flops(last["layer_nonzeros"])
    assert summary["flops_dense"] == forward_flops({n: a * b for n, (a, b) in PRUNABLE.items()})


def test_dense_training_has_no_masks_and_counts_dense_flops():
    path = run_experiment(config(**{"sparsity.density": 1.0}), quiet=True)
    run = Run(path)
    summary = run.read_summary()
    assert not run.artifact("masks.safetensors").exists()
    assert summary["density"] == 1.0 and summary["mask_density"] == 1.0
    assert summary["flops_nonzero"] == summary["flops_dense"] == 4420
    assert summary["train_flops"] == summary["train_flops_dense"] == 3 * 4420 * 256 * 2
    assert run.events("mask_update") == []


@pytest.mark.parametrize("exclude_last", [False, True])
def test_magnitude_at_init_equals_torch_global_l1(exclude_last):
    cfg = config(
        **{
            "sparsity.method": "prune_at_init",
            "sparsity.exclude_last": exclude_last,
            "train.epochs": 1,
        }
    )
    _, masks, _ = artifacts(run_experiment(cfg, quiet=True))
    reference = build_model(cfg, prepare_data(cfg))  # the same seeded initialisation
    names = ["features.1.weight"] + ([] if exclude_last else ["fc.weight"])
    modules = [(reference.get_submodule(n.rsplit(".", 1)[0]), "weight") for n in names]
    total = sum(m.weight.numel() for m, _ in modules)
    torch_prune.global_unstructured(
        modules, torch_prune.L1Unstructured, amount=total - round(DENSITY * total)
    )
    assert masks.names() == names
    for name, (module, _) in zip(names, modules):
        assert torch.equal(masks[name], module.weight_mask.bool()), name


def cubic(step, d_final, t0, n, dt):
    """Zhu & Gupta by hand: s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3, s_i = 0."""
    s_f = 1 - d_final
    frac = min(max((step - t0) / (n * dt), 0.0), 1.0)
    return 1 - (s_f - s_f * (1 - frac) ** 3)


def test_gradual_follows_the_cubic_schedule_and_counts_training_flops():
    cfg = config(**{"sparsity.method": "gradual", "sparsity.end": 0.75})
    run = Run(run_experiment(cfg, quiet=True))
    events = run.events("mask_update")
    pruning = [e for e in events if "schedule_density" in e]
    # 16 steps, end at 0.75 -> step 12, every 2 steps: t0 = 0, n = 6, dt = 2
    assert [e["step"] for e in pruning] == [2, 4, 6, 8, 10, 12]
    for e in pruning:
        assert e["nonzeros"] == round(cubic(e["step"], DENSITY, 0, 6, 2) * N)
    # training FLOPs: the forward of each step uses the masks of the last change before it
    changes = sorted((e["step"], forward_flops(e["layer_nonzeros"])) for e in events)
    expected = 0
    for step in range(16):
        flops = [f for s, f in changes if s <= step][-1]
        expected += 3 * 32 * flops  # 256 examples in batches of 32
    summary = run.read_summary()
    assert summary["train_flops"] == expected
    assert summary["train_flops_dense"] == 3 * 4420 * 512
    assert summary["train_flops"] < summary["train_flops_dense"]


def test_prune_at_init_training_flops_by_hand():
    cfg = config(**{"sparsity.method": "prune_at_init"})
    run, masks, _ = artifacts(run_experiment(cfg, quiet=True))
    summary = run.read_summary()
    per_sample = forward_flops(masks.layer_nonzeros())
    assert summary["flops_nonzero"] == per_sample
    assert summary["train_flops"] == 3 * per_sample * 512
    assert summary["train_samples"] == 512


@pytest.mark.parametrize("method", ["set", "rigl"])
def test_dynamic_methods_log_ever_active_and_overlaps(method):
    run = Run(run_experiment(config(**{"sparsity.method": method}), quiet=True))
    updates = [e for e in run.events("mask_update") if "ever_active" in e]
    # updates every 2 steps while t < t_end = 0.75 * 16 = 12
    assert [e["step"] for e in updates] == [2, 4, 6, 8, 10]
    ever = [e["ever_active"] for e in updates]
    assert all(b >= a for a, b in zip(ever, ever[1:])) and ever[0] > DENSITY
    for e in updates:
        assert 0 < e["iou_previous"] < 1 and 0 < e["iou_initial"] <= 1
        assert e["dropped"] == e["grown"] > 0
        assert e["density"] == round(DENSITY * N) / N
    summary = run.read_summary()
    assert summary["mask_updates"] == 5
    assert summary["ever_active"] == ever[-1]
    assert summary["iou_initial"] == updates[-1]["iou_initial"]


class Kill(Callback):
    def __init__(self, at_step):
        self.at_step = at_step

    def after_step(self, trainer, outputs):
        if trainer.step == self.at_step:
            raise KeyboardInterrupt


def killed_then_resumed(monkeypatch, cfg, root):
    """Run ``cfg`` killed at step 20 (epoch 3), run it again, and run it straight; return the
    resumed and the uninterrupted run."""
    original = sparse_setup.sparse_callbacks
    kill = {"on": True}

    def with_kill(*args):
        callbacks, masks = original(*args)
        return [*callbacks, Kill(20)] if kill["on"] else callbacks, masks

    monkeypatch.setattr(train_method, "sparse_callbacks", with_kill)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, root / "a", quiet=True)
    kill["on"] = False
    resumed = Run(run_experiment(cfg, root / "a", quiet=True))
    assert resumed.read_summary()["status"] == "ok"
    assert [e["from_epoch"] for e in resumed.events("resume")] == [2]
    straight = Run(run_experiment(cfg, root / "b", quiet=True))
    _, masks_a, weights_a = artifacts(resumed.path)
    _, masks_b, weights_b = artifacts(straight.path)
    assert all(torch.equal(masks_a[n], masks_b[n]) for n in masks_a)
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    return resumed, straight


def test_prune_at_init_is_not_redone_on_resume(monkeypatch, tmp_path):
    cfg = config(
        **{
            "sparsity.method": "prune_at_init",
            "sparsity.criterion": "snip",
            "sparsity.score_batches": 2,
            "train.epochs": 3,
            "train.deterministic": True,
        }
    )
    calls = []
    real_prune = at_init.prune  # what PruneAtInit calls
    monkeypatch.setattr(at_init, "prune", lambda *a, **k: calls.append(1) or real_prune(*a, **k))
    resumed, _ = killed_then_resumed(monkeypatch, cfg, tmp_path)
    assert len(calls) == 2, "killed run and straight run prune; the resumed run restores"
    assert len(resumed.events("mask_update")) == 1


@pytest.mark.parametrize("method", ["gradual", "rigl"])
def test_mask_schedules_resume_exactly(monkeypatch, tmp_path, method):
    cfg = config(
        **{
            "sparsity.method": method,
            "sparsity.interval": 3,
            "train.epochs": 3,
            "train.deterministic": True,
        }
    )
    resumed, straight = killed_then_resumed(monkeypatch, cfg, tmp_path)
    keys = ("train_flops", "test_acc", "ever_active", "iou_initial", "mask_updates")
    a, b = resumed.read_summary(), straight.read_summary()
    assert {k: a.get(k) for k in keys} == {k: b.get(k) for k in keys}
    drop = ("epoch_time", "scoring_time")
    events = [
        [{k: v for k, v in e.items() if k not in drop} for e in run.events("mask_update")]
        for run in (resumed, straight)
    ]
    assert events[0] == events[1] and len(events[0]) > 2


def test_scoring_batches_are_seeded_and_unaugmented():
    cfg = config(**{"data.crop_padding": 2, "data.flip": True, "sparsity.density": 1.0})
    data = prepare_data(cfg)
    loader = type("L", (), {"mean": (0.5,), "std": (0.25,), "normalize": True})()
    a = sparse_setup.scoring_batches(cfg, data.train, loader, "cpu", 3)
    b = sparse_setup.scoring_batches(cfg, data.train, loader, "cpu", 3)
    assert len(a) == 3 and all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b))
    # un-augmented: every example equals its normalised source image
    flat = data.train.images.float().div(255).sub(0.5).div(0.25).flatten(1)
    for x, y in a:
        for row, label in zip(x.flatten(1), y):
            hits = (flat - row).abs().amax(1) < 1e-5
            assert bool(hits.any()) and bool((data.train.labels[hits] == label).all())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sparsity.method": "rigle"}, "did you mean 'rigl'"),
        ({"sparsity.method": "gradual", "sparsity.criterion": "snip"}, "criterion=magnitude"),
        ({"sparsity.method": "none"}, "has no effect with sparsity.method=none"),
        ({"sparsity.method": "prune_at_init", "sparsity.criterion": "snipp"}, "'snip'"),
        ({"sparsity.method": "prune_at_init", "sparsity.scope": "globl"}, "'global'"),
        ({"sparsity.method": "gradual", "sparsity.start": 0.8, "sparsity.end": 0.5}, "start < end"),
        ({"sparsity.method": "set", "sparsity.alpha": 0.0}, "alpha"),
    ],
)
def test_impossible_sparsity_settings_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config(**overrides)


def test_prune_at_init_callback_prunes_once_and_restores_from_its_state():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    init = {k: v.clone() for k, v in model.state_dict().items()}
    events = []

    def trainer_for(m):
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        return SimpleNamespace(
            model=m,
            optimizer=opt,
            step=0,
            device=torch.device("cpu"),
            log=lambda event, **values: events.append((event, values)),
        )

    def train(cb, trainer, stages):
        cb.before_run(trainer)
        for stage in stages:
            cb.before_stage(trainer, stage)
            for _ in range(3):
                x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
                cb.before_step(trainer, (x, y))
                trainer.optimizer.zero_grad()
                torch.nn.functional.cross_entropy(trainer.model(x), y).backward()
                cb.before_optimizer_step(trainer)
                trainer.optimizer.step()
                trainer.step += 1
                cb.after_optimizer_step(trainer)

    cb = sparse_setup.PruneAtInit(MaskSet.from_model(model), 0.25, input_shape=(6,))
    train(cb, trainer_for(model), stages=[0, 1])
    assert [e for e, _ in events] == ["mask_update"]  # pruned once, before the first step
    # brute force: the 25 % largest initial weights over both layers
    everything = torch.cat([init["0.weight"].abs().flatten(), init["2.weight"].abs().flatten()])
    k = keep_count(0.25, everything.numel())
    threshold = everything.sort(descending=True).values[k - 1]
    for name in ("0.weight", "2.weight"):
        assert torch.equal(cb.masks[name], init[name].abs() >= threshold)
        assert not bool(model.get_parameter(name)[~cb.masks[name]].any())
    # a restarted run restores the masks from the checkpointed state instead of pruning again
    fresh = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    again = sparse_setup.PruneAtInit(MaskSet.from_model(fresh), 0.25, input_shape=(6,))
    again.load_state_dict(cb.state_dict())
    train(again, trainer_for(fresh), stages=[2])
    assert len(events) == 1
    assert all(torch.equal(again.masks[n], cb.masks[n]) for n in cb.masks)
    assert not bool(fresh.get_parameter("0.weight")[~cb.masks["0.weight"]].any())


def test_the_how_to_examples_run(monkeypatch, tmp_path):
    text = (Path(__file__).parents[1] / "docs" / "sparsity.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile("\n".join(blocks), "docs/sparsity.md", "exec"), namespace)
    assert namespace["masks"].density() == pytest.approx(0.2, abs=1e-4)
    assert (tmp_path / "masks.safetensors").exists()
    assert namespace["rigl"].masks.density() == pytest.approx(0.1, abs=1e-4)


def test_training_flops_count_masked_steps_and_survive_resume():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 4))
    masks = MaskSet.from_model(model)
    meter = sparse_setup.TrainingFlops(masks)
    trainer = SimpleNamespace(model=model)
    meter.before_step(trainer, (torch.zeros(5, 6), None))
    masks["1.weight"] = torch.arange(24).reshape(4, 6) % 2 == 0  # half the weights pruned
    meter.before_step(trainer, (torch.zeros(3, 6), None))
    per_sample_dense = 2 * 24 + 4  # multiply-adds and bias adds
    per_sample_half = 2 * 12 + 4
    expected = 3 * (5 * per_sample_dense + 3 * per_sample_half)
    assert meter.totals()["train_flops"] == expected and meter.samples == 8
    fresh = sparse_setup.TrainingFlops(masks)
    fresh.load_state_dict(meter.state_dict())  # resuming takes the checkpoint's totals
    assert fresh.totals() == meter.totals()


@pytest.mark.parametrize(
    ("preset", "method", "criterion"),
    [
        ("snip-fashion", "prune_at_init", "snip"),
        ("gmp-fashion", "gradual", "magnitude"),
        ("rigl-fashion", "rigl", "magnitude"),
    ],
)
def test_sparse_presets_are_valid(preset, method, criterion):
    cfg = load_config(preset)
    assert cfg.method.name == "train" and cfg.data.name == "fashion-mnist"
    assert (cfg.sparsity.method, cfg.sparsity.criterion) == (method, criterion)
    assert cfg.sparsity.density == 0.1
