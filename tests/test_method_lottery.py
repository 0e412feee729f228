"""The ``lottery`` method (IMP with rewinding): level densities 0.8^k, nested masks equal to
global magnitude pruning of the previous level, survivors rewound exactly to init or step k,
resume after a kill at the right level, and the accuracy-vs-density report."""

from __future__ import annotations

import csv

import pytest
import torch
from safetensors.torch import load_file
from torch.nn.utils import prune as torch_prune

from conftest import has_fashion
from underbudget.config import load_config
from underbudget.errors import ConfigError
from underbudget.experiment.launch import run_experiment
from underbudget.methods import lottery
from underbudget.methods.common import build_model, prepare_data
from underbudget.runs import Run
from underbudget.sparsity import MaskSet
from underbudget.train import Callback

LEVELS = 3


@pytest.fixture(autouse=True)
def _restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


def config(**overrides):
    values = {"method.name": "lottery", "method.levels": LEVELS, "train.progress": False}
    values.update(overrides)
    return load_config("tiny", [f"{k}={v}" for k, v in values.items()])


def clone_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Probe(Callback):
    """Records the model's state when a level starts and after ``at_step`` steps."""

    def __init__(self, at_step=None):
        self.at_step, self.start, self.at = at_step, None, None

    def before_stage(self, trainer, stage):
        self.start = clone_state(trainer.model)

    def after_optimizer_step(self, trainer):
        if trainer.step == self.at_step:
            self.at = clone_state(trainer.model)


class Kill(Callback):
    def __init__(self, at_step):
        self.at_step = at_step

    def after_step(self, trainer, outputs):
        if trainer.step == self.at_step:
            raise KeyboardInterrupt


@pytest.fixture
def probes(monkeypatch):
    """Adds a Probe (last) to every level's trainer; ``probes['kill']`` = (level, step)."""
    found: dict = {"kill": None, "levels": {}, "trainers": []}
    original = lottery.make_trainer

    def wrapped(cfg, model, run, callbacks=(), **kwargs):
        level = int(run.path.name.split("-")[1])
        probe = Probe(found.get("at_step"))
        extra = [probe]
        if found["kill"] and found["kill"][0] == level:
            extra.append(Kill(found["kill"][1]))
        found["levels"][level] = probe
        found["trainers"].append(level)
        return original(cfg, model, run, callbacks=[*callbacks, *extra], **kwargs)

    monkeypatch.setattr(lottery, "make_trainer", wrapped)
    return found


def level_artifacts(path, level):
    child = Run(path).child(lottery.level_name(level))
    return (
        child,
        MaskSet.load(child.artifact("masks.safetensors")),
        load_file(str(child.artifact("model.safetensors"))),
    )


def test_levels_prune_20_percent_nested_by_magnitude_and_rewind_to_init(probes):
    cfg = config()
    path = run_experiment(cfg, quiet=True)
    init = clone_state(build_model(cfg, prepare_data(cfg)))  # the seeded initialisation
    summary = Run(path).read_summary()
    assert [row["level"] for row in summary["levels"]] == list(range(LEVELS + 1))
    previous = None
    for level in range(LEVELS + 1):
        child, masks, weights = level_artifacts(path, level)
        n = masks.numel()
        assert masks.nonzeros() == round(0.8**level * n), level  # density 0.8^k, measured
        row = child.read_summary()
        assert row["target_density"] == pytest.approx(0.8**level)
        assert row["mask_density"] == masks.density()
        assert abs(row["density"] - 0.8**level) <= 1 / n
        for name, mask in masks.items():
            assert not bool(weights[name][~mask].any())  # pruned weights stay exactly 0
        start = probes["levels"][level].start
        for key, value in init.items():  # survivors start at the init, the rest at 0
            expected = value * masks[key] if key in masks else value
            assert torch.equal(start[key], expected), (level, key)
        if previous is not None:
            prev_masks, prev_weights = previous
            assert masks.is_subset_of(prev_masks)  # nested
            for name, mask in masks.items():  # the smallest alive trained weights went
                alive = prev_masks[name]
                w = prev_weights[name].abs()
                pruned_now = alive & ~mask
                if pruned_now.any():
                    assert w[pruned_now].max() <= min(
                        prev_weights[m].abs()[masks[m]].min() for m in masks
                    )
        events = child.events("mask_update")
        assert events and events[0]["level"] == level
        assert events[0]["density"] == masks.density()
        previous = (masks, weights)
    assert summary["final_density"] == Run(path).child("level-03").read_summary()["density"]
    assert 0 <= summary["best_level"] <= LEVELS


def test_level_one_equals_torch_global_l1_on_level_zero_weights():
    cfg = config(**{"method.levels": 1, "train.epochs": 1})
    path = run_experiment(cfg, quiet=True)
    _, masks, _ = level_artifacts(path, 1)
    _, _, dense = level_artifacts(path, 0)
    model = build_model(cfg, prepare_data(cfg))
    model.load_state_dict(dense)
    modules = [(model.get_submodule(n.rsplit(".", 1)[0]), "weight") for n in masks]
    total = masks.numel()
    torch_prune.global_unstructured(
        modules, torch_prune.L1Unstructured, amount=total - round(0.8 * total)
    )
    for name, (module, _) in zip(masks, modules):
        assert torch.equal(masks[name], module.weight_mask.bool()), name


def test_rewind_to_step_k_restores_the_weights_after_k_steps(probes):
    probes["at_step"] = 5
    cfg = config(
        **{
            "method.rewind": "step:5",
            "method.levels": 2,
            "model.name": "convnet",
            "model.kwargs": "{widths: [4, 8]}",
        }
    )
    path = run_experiment(cfg, quiet=True)
    at_k = probes["levels"][0].at  # recorded independently of the method's own saver
    assert at_k is not None and Run(path).artifact("rewind-step-5.safetensors").exists()
    for level in (1, 2):
        _, masks, _ = level_artifacts(path, level)
        start = probes["levels"][level].start
        for key, value in at_k.items():  # weights and BatchNorm buffers after step 5
            expected = value * masks[key] if key in masks else value
            assert torch.equal(start[key], expected), (level, key)


def test_resume_after_a_kill_continues_at_the_interrupted_level(probes, tmp_path):
    cfg = config(**{"method.levels": 2, "train.deterministic": True})
    probes["kill"] = (1, 12)  # level 1, in its second epoch (8 steps per epoch)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path / "a", quiet=True)
    parent = Run(next((tmp_path / "a").iterdir()))
    assert parent.child("level-00").is_finished()
    assert not parent.child("level-01").is_finished()
    assert probes["trainers"] == [0, 1]
    probes["kill"] = None
    run_experiment(cfg, tmp_path / "a", quiet=True)
    assert probes["trainers"] == [0, 1, 1, 2], "level 0 is read back, level 1 resumes"
    assert [e["from_epoch"] for e in parent.child("level-01").events("resume")] == [1]
    assert parent.read_summary()["status"] == "ok"
    straight = run_experiment(cfg, tmp_path / "b", quiet=True)
    for level in range(3):
        _, masks_a, weights_a = level_artifacts(parent.path, level)
        _, masks_b, weights_b = level_artifacts(straight, level)
        assert all(torch.equal(masks_a[n], masks_b[n]) for n in masks_a)
        assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a), level
    a = parent.read_summary()["levels"]
    b = Run(straight).read_summary()["levels"]
    assert [r["test_acc"] for r in a] == [r["test_acc"] for r in b]


def test_report_has_one_row_per_level_aggregated_over_seeds():
    cfg = config(**{"method.levels": 2, "train.epochs": 1, "sweep": "{seed: [0, 1]}"})
    parent = run_experiment(cfg, quiet=True)
    report = parent / "report"
    text = (report / "report.md").read_text()
    assert "Lottery tickets: accuracy vs density" in text
    level_rows = [
        line for line in text.splitlines() if line.startswith(("| 0 |", "| 1 |", "| 2 |"))
    ]
    assert len(level_rows) == 3 and all(" | 2 | " in line for line in level_rows)
    with open(report / "lottery_levels.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["level"]) for r in rows] == [0, 1, 2]
    accs = [
        [Run(parent / f"seed-{s}").read_summary()["levels"][lvl]["test_acc"] for s in (0, 1)]
        for lvl in range(3)
    ]
    for row, acc in zip(rows, accs):
        assert row["seeds"] == "2"
        assert float(row["test_acc_mean"]) == pytest.approx(sum(acc) / 2)
        assert float(row["test_acc_std"]) == pytest.approx(abs(acc[0] - acc[1]) / 2**0.5)
    png = report / "lottery_test_acc_vs_density.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method.rewind": "stpe:3"}, "'init'.*'step:K'"),
        ({"method.rewind": "step:-2"}, "step:K"),
        ({"method.levels": 0}, "method.levels"),
        ({"method.rate": 1.0}, "method.rate"),
        ({"method.scope": "globl"}, "'global'"),
        ({"method.criterion": "magnitud"}, "'magnitude'"),
        ({"sparsity.method": "rigl", "sparsity.density": 0.5}, "remove sparsity.method"),
    ],
)
def test_impossible_lottery_settings_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config(**overrides)


def test_rewind_step_past_level_zero_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"past the end of level 0 \(16 optimizer steps\)"):
        run_experiment(config(**{"method.rewind": "step:17"}), quiet=True)


def test_level_densities():
    assert lottery.level_densities(3, 0.2) == pytest.approx([1.0, 0.8, 0.64, 0.512])
    assert lottery.rewind_step("init") == 0 and lottery.rewind_step("step:100") == 100


def test_lottery_preset_is_valid():
    cfg = load_config("lottery-fashion")
    assert cfg.method.name == "lottery" and cfg.data.name == "fashion-mnist"
    assert cfg.method.levels >= 3 and cfg.method.rewind == "init"


@pytest.mark.slow
@has_fashion
def test_lottery_preset_runs_on_fashion_mnist_in_small(tmp_path):
    overrides = [
        "data.limit=2000",
        "data.test_limit=500",
        "method.levels=2",
        "train.epochs=2",
        "train.progress=false",
    ]
    parent = run_experiment(load_config("lottery-fashion", overrides), tmp_path, quiet=True)
    summary = Run(parent).read_summary()
    assert [round(r["target_density"], 4) for r in summary["levels"]] == [1.0, 0.8, 0.64]
    assert all(r["test_acc"] > 0.4 for r in summary["levels"])  # 10 classes: chance is 0.1
    from underbudget.report import write_report

    write_report([parent], parent / "report")
    assert (parent / "report" / "lottery_test_acc_vs_density.png").exists()
