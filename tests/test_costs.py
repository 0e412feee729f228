"""Every run's ``costs``: recorded by the launcher, measured from weights when the summary
lacks them, summed over lottery levels, checked against hand counts and FlopCounterMode."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from underbudget.config import load_config
from underbudget.experiment.launch import run_experiment
from underbudget.models import load_weights
from underbudget.report import collect
from underbudget.report.costs import AXES, run_costs
from underbudget.sparsity import MaskSet

# the tiny preset's MLP: 64 inputs -> 32 hidden (ReLU) -> 4 classes; 256 examples, 2 epochs
LAYERS = {"features.1.weight": (32, 64), "fc.weight": (4, 32)}
FIXED = 32 + 4 + 32  # bias adds of both layers + one ReLU per hidden unit (cost module rule)
KEPT = round(0.3 * (2048 + 128))  # 653 weights kept by global magnitude pruning at init
SEEN = 256 * 2


@pytest.fixture(autouse=True)
def _restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("costs")
    dense = run_experiment(load_config("tiny"), root, quiet=True)
    sparse = run_experiment(load_config("tiny", [
        "sparsity.method=prune_at_init", "sparsity.density=0.3"]), root, quiet=True)
    return dense, sparse


def _summary(path):
    return json.loads((path / "summary.json").read_text())


def test_launcher_writes_every_axis(runs):
    for path in runs:
        costs = _summary(path)["costs"]
        assert set(costs) == set(AXES)
        assert all(costs[a] is not None and costs[a] > 0 for a in AXES), costs
        assert costs["examples_seen"] == SEEN


def test_sparse_training_flops_by_hand(runs):
    dense, sparse = (_summary(p)["costs"] for p in runs)
    dense_forward = 2 * sum(a * b for a, b in LAYERS.values()) + FIXED  # 4420
    sparse_forward = 2 * KEPT + FIXED  # each weight: one multiply-add per sample; 1374
    assert dense["train_flops"] == 3 * dense_forward * SEEN
    assert sparse["train_flops"] == 3 * sparse_forward * SEEN
    assert sparse["train_flops"] / dense["train_flops"] == pytest.approx(1374 / 4420)


def test_inference_flops_match_flop_counter_times_density(runs):
    _, sparse = runs
    cfg = load_config("tiny")
    from underbudget.models import create_model

    model = create_model(cfg.model.name, num_classes=4, in_channels=1, image_size=8,
                         **cfg.model.kwargs)
    load_weights(model, sparse / "artifacts" / "model.safetensors")
    masks = MaskSet.load(sparse / "artifacts" / "masks.safetensors", model)
    expected = FIXED
    for name in LAYERS:
        layer = model.get_submodule(name.removesuffix(".weight"))
        assert isinstance(layer, nn.Linear)
        with FlopCounterMode(display=False) as counter:
            layer(torch.zeros(1, layer.in_features))
        density = float(masks[name].float().mean())
        assert counter.get_total_flops() == 2 * layer.weight.numel()
        expected += counter.get_total_flops() * density
    assert sum(int(m.sum()) for m in masks.values()) == KEPT
    assert _summary(sparse)["costs"]["inference_flops"] == pytest.approx(expected)


def test_deployed_bytes_of_the_pruned_model(runs):
    dense, sparse = (_summary(p)["costs"] for p in runs)
    assert dense["deployed_bytes"] == 4 * (2048 + 128 + 32 + 4)
    kept = {n: int(m.sum()) for n, m in load_file(
        str(runs[1] / "artifacts" / "masks.safetensors")).items()}
    # cheapest encoding per tensor here: bitmask (nonzero float32 values, 1 bit a position)
    bitmask = sum(4 * kept[n] + a * b // 8 for n, (a, b) in LAYERS.items())
    assert sparse["deployed_bytes"] == bitmask + 4 * (32 + 4) < dense["deployed_bytes"]


def test_old_summary_gets_costs_at_report_time(runs, tmp_path):
    dense, sparse = runs
    want = _summary(sparse)["costs"]
    old = tmp_path / sparse.name
    shutil.copytree(sparse, old)
    summary = _summary(old)
    del summary["costs"]
    (old / "summary.json").write_text(json.dumps(summary))
    (rec,) = collect([old])
    assert rec.costs == want
    for key in ("flops_nonzero", "bytes_sparse"):  # measured from the saved weights and masks
        del summary[key]
    (old / "summary.json").write_text(json.dumps(summary))
    (rec,) = collect([old])
    assert rec.costs == want
    assert "costs" not in _summary(old)  # the report reads runs, it does not rewrite them
    # read as a 4-bit deployment: the weights at 4 bits (dense is the smallest layout here)
    # plus one float32 step per output channel, the biases float32
    measured = {k: v for k, v in _summary(dense).items()
                if k not in ("costs", "bytes_deployed", "bytes_sparse")}
    four_bit = run_costs({**measured, "bits": 4}, rec.config, dense)
    assert four_bit["deployed_bytes"] == (2048 + 128) / 2 + 4 * (32 + 4) + 4 * (32 + 4)


def test_quantized_training_reports_its_deployed_bytes(runs, tmp_path):
    path = run_experiment(load_config("tiny", ["train.epochs=1", "precision.mode=qat",
                                               "precision.weight_bits=4"]), tmp_path, quiet=True)
    summary = _summary(path)
    assert summary["costs"]["deployed_bytes"] == summary["bytes_deployed"]
    assert summary["costs"]["deployed_bytes"] < _summary(runs[0])["costs"]["deployed_bytes"] / 4
    assert summary["costs"]["examples_seen"] == 256


def test_lottery_levels_count_the_levels_before_them(tmp_path):
    parent = run_experiment(load_config("tiny", ["method.name=lottery", "method.levels=1",
                                                 "train.epochs=1"]), tmp_path, quiet=True)
    records = {r.path.name: r for r in collect([parent], nested=True)}
    own = {k: _summary(parent / k) for k in ("level-00", "level-01")}
    level1 = records["level-01"].costs
    assert level1["train_flops"] == own["level-00"]["train_flops"] + own["level-01"][
        "train_flops"]
    assert level1["examples_seen"] == 2 * 256
    top = _summary(parent)["costs"]
    assert top["train_flops"] == level1["train_flops"]
    assert top["examples_seen"] == 2 * 256
    assert top["deployed_bytes"] == own["level-01"]["bytes_sparse"]
    assert top["inference_flops"] == own["level-01"]["flops_nonzero"]
