"""The d2sparse method end to end: S deployed alone, its FLOPs, resume, the report."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from underbudget.config import load_config
from underbudget.experiment.launch import run_experiment
from underbudget.methods.common import eval_loader, prepare_data
from underbudget.methods.d2sparse.evolution import MaskEvolution
from underbudget.models import create_model, load_weights
from underbudget.report import write_report
from underbudget.sparsity import MaskSet, cost, training_flops
from underbudget.train.evaluate import evaluate

BASE = {
    "name": "d2",
    "data": {
        "name": "synthetic",
        "options": {"num_classes": 4, "n_train": 256, "n_test": 128},
        "batch_size": 32,
        "eval_batch_size": 128,
    },
    "model": {"name": "convnet", "kwargs": {"widths": [8, 16]}},
    "optim": {"name": "sgd", "lr": 0.05},
    "train": {"epochs": 3, "progress": False, "device": "cpu"},
    "method": {"name": "d2sparse", "density": 0.25, "fast_interval": 8, "slow_interval": 16},
}



def _run(tmp_path, *overrides):
    cfg = load_config(BASE, list(overrides))
    return cfg, run_experiment(cfg, tmp_path, quiet=True)


def test_deployed_checkpoint_is_one_sparse_network(tmp_path):
    cfg, path = _run(tmp_path)
    summary = __import__("json").loads((path / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["networks_trained"] == 2
    state = load_file(str(path / "artifacts/model.safetensors"))
    net = create_model("convnet", num_classes=4, in_channels=1, image_size=16, widths=[8, 16])
    assert set(state) == set(net.state_dict())  # one network: no fast./slow. keys
    load_weights(net, path / "artifacts/model.safetensors")
    masks = MaskSet.load(path / "artifacts/masks.safetensors", net)
    for name, mask in masks.items():
        assert int((net.get_parameter(name).detach()[~mask] != 0).sum()) == 0
    assert masks.density() == pytest.approx(0.25, abs=0.01)
    data = prepare_data(cfg)
    result = evaluate(net, eval_loader(cfg, data.test, data.splits, "cpu"))
    assert result["acc"] == pytest.approx(summary["test_acc"])  # the reported S is this one
    c = cost(net, (1, 16, 16), masks)
    assert summary["flops_nonzero"] == c["flops_nonzero"] < c["flops_dense"]
    # inference is one sparse network; training counts both networks
    assert summary["flops_nonzero"] == pytest.approx(summary["fast_flops_nonzero"], rel=0.15)
    fast_fwd = summary["train_flops"] / (3 * summary["train_samples"]) - c["flops_nonzero"]
    assert fast_fwd == pytest.approx(summary["fast_flops_nonzero"], rel=0.05)
    assert summary["train_flops"] > 1.8 * training_flops(
        c["flops_nonzero"], summary["train_samples"]
    )
    assert 0 <= summary["fast_test_acc"] <= 1 and summary["slow_updates"] >= 1
    updates = [e for e in _events(path) if e["event"] == "mask_update"]
    assert {e["source"] for e in updates} == {"d2_fast", "d2_slow"}
    for e in updates:  # each network measured on its own (plain layer names, its own FLOPs)
        assert e["density"] == pytest.approx(0.25, abs=0.01) and "fc.weight" in e["layer_densities"]
        assert e["flops_nonzero"] < e["flops_dense"] == c["flops_dense"]
    events = [e for e in _events(path) if e["event"] == "mask_evolution"]
    assert events[0]["step"] == 0 and events[-1]["frac"] == pytest.approx(1.0)
    assert {
        "iou_fast_slow",
        "slow_ever_active",
        "fast_survival",
        "slow_layer_density",
        "fast_iou_initial",
        "fast_regrown_alive",
    } <= set(events[-1])


def _events(path):
    import json

    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_single_ablation_costs_one_network(tmp_path):
    _, path = _run(tmp_path, "method.single=true")
    import json

    summary = json.loads((path / "summary.json").read_text())
    assert summary["networks_trained"] == 1 and "fast_test_acc" not in summary
    assert summary["train_flops"] == pytest.approx(
        training_flops(summary["flops_nonzero"], summary["train_samples"]), rel=0.02
    )


def test_interrupted_run_resumes_to_identical_networks(tmp_path, monkeypatch):
    _, ref = _run(tmp_path / "ref")
    original = MaskEvolution.before_optimizer_step

    def crash(self, trainer):
        if trainer.step == 20:  # mid epoch 3, after two epoch checkpoints
            raise KeyboardInterrupt
        original(self, trainer)

    monkeypatch.setattr(MaskEvolution, "before_optimizer_step", crash)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "crash")
    monkeypatch.setattr(MaskEvolution, "before_optimizer_step", original)
    _, path = _run(tmp_path / "crash")
    for name in ("model.safetensors", "masks.safetensors"):
        a, b = load_file(str(ref / "artifacts" / name)), load_file(str(path / "artifacts" / name))
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    resumed = [e for e in _events(path) if e["event"] == "mask_evolution"]
    assert [e["step"] for e in resumed] == [
        e["step"] for e in _events(ref) if e["event"] == "mask_evolution"
    ]


def test_report_over_a_budget_sweep(tmp_path):
    cfg = load_config(BASE, ["train.epochs=2", 'sweep={"data.fraction": [1.0, 0.5]}'])
    path = run_experiment(cfg, tmp_path, quiet=True)
    out = write_report([path], path / "report")
    text = (path / "report/report.md").read_text()
    assert "## D2-Sparse" in text and "| D2-Sparse (S) |" in text and "1/2" in text
    names = {p.split("/")[-1] for p in out["files"]}
    assert {
        "d2sparse_acc_vs_budget_d0.25.png",
        "d2sparse_overlap_d0.25.png",
        "d2sparse_ever_active_d0.25.png",
        "d2sparse_regrown_survival_d0.25.png",
        "d2sparse_layer_density_d0.25.png",
        "d2sparse_results.csv",
    } <= names


def test_anytime_strategy_trains_the_pair_over_the_stream(tmp_path):
    any_cfg = dict(
        BASE,
        method={
            "name": "anytime",
            "strategy": "d2sparse",
            "megabatches": 3,
            "d_final": 0.3,
            "interval": 4,
        },
    )
    cfg = load_config(any_cfg, ["train.epochs=2"])
    path = run_experiment(cfg, tmp_path, quiet=True)
    import json

    summary = json.loads((path / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["strategy"] == "d2sparse"
    assert summary["final_density_measured"] == pytest.approx(0.3, abs=0.01)
    net = create_model("convnet", num_classes=4, in_channels=1, image_size=16, widths=[8, 16])
    assert set(load_file(str(path / "artifacts/model.safetensors"))) == set(net.state_dict())
    events = _events(path)
    evolution = [e for e in events if e["event"] == "mask_evolution"]
    assert any("slow" in e["updated"] for e in evolution)
    assert any("fast" in e["updated"] for e in evolution)
    # the measured density of the deployed S follows its masks at every stage
    stages = [e for e in events if e["event"] == "anytime_stage"]
    assert len(stages) == 3 and all(e["density"] == pytest.approx(0.3, abs=0.01) for e in stages)
    # two networks are trained: twice the FLOPs of S alone per example seen
    examples = sum(e["train_examples"] for e in stages) * 2
    assert summary["total_train_flops"] == pytest.approx(
        2 * 3 * summary["final_flops_nonzero"] * examples, rel=0.05
    )
