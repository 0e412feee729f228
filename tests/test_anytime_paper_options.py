"""The APP paper's choices as options: pruned layers, scoring pool, the code's generalization
gap, and a fresh seeded initialisation per stage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from underbudget import sparsity
from underbudget.config import load_config
from underbudget.errors import ConfigError
from underbudget.experiment.launch import run_experiment
from underbudget.methods.anytime import plan_stream
from underbudget.methods.anytime.run import score_indices
from underbudget.methods.common import eval_loader, prepare_data
from underbudget.metrics import MetricInputError
from underbudget.metrics.anytime import anytime_summary, gap_paper
from underbudget.models import create_model
from underbudget.sparsity import MaskSet


def config(model="lenet5", lr=0.05, epochs=1, **method):
    kwargs = {"hidden": [16]} if model == "mlp" else {}
    return load_config({
        "name": "paper",
        "data": {"name": "synthetic", "image_size": 8, "channels": 1, "batch_size": 32,
                 "options": {"num_classes": 4, "n_train": 300, "n_test": 100}},
        "model": {"name": model, "kwargs": kwargs},
        "optim": {"name": "sgd", "lr": lr, "schedule": "none"},
        "train": {"epochs": epochs, "progress": False, "select": "best", "device": "cpu"},
        "method": {"name": "anytime", "strategy": "app", "megabatches": 3, "tau": 4.5,
                   **method},
    })


def events(path: Path, kind: str) -> list[dict]:
    lines = (path / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind]


# ----------------------------------------------------------------------------- pruned layers
def test_conv_only_prunes_every_convolution_and_leaves_linear_layers_dense(tmp_path):
    net = create_model("lenet5", num_classes=4, in_channels=1, image_size=8)
    convs = [f"{n}.weight" for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [f"{n}.weight" for n, m in net.named_modules() if isinstance(m, torch.nn.Linear)]
    assert convs == ["conv1.weight", "conv2.weight"] and len(linears) == 3
    path = run_experiment(config(prune_layers="conv"), tmp_path / "conv", quiet=True)
    masks = MaskSet.load(path / "artifacts" / "masks.safetensors")
    assert set(masks.names()) == set(convs)  # the first convolution too, as the APP code
    weights = load_file(str(path / "artifacts" / "model.safetensors"))
    for name in linears:  # the classifier and the other linear layers: untouched
        assert torch.all(weights[name] != 0)
    kept = sum(int(masks[n].sum()) for n in convs)
    total = sum(masks[n].numel() for n in convs)
    assert abs(kept / total - 0.8 ** 4.5) <= 1 / total  # density over conv weights
    for name in convs:
        assert torch.all(weights[name][~masks[name]] == 0) and not masks[name].all()
    path = run_experiment(config(prune_layers="all"), tmp_path / "all", quiet=True)
    assert set(MaskSet.load(path / "artifacts" / "masks.safetensors").names()) == set(
        convs + linears)


@pytest.mark.parametrize("model, method, message", [
    ("mlp", {"prune_layers": "conv"}, "has no convolution; set method.prune_layers=all"),
    ("lenet5", {"prune_layers": "convs"}, "did you mean 'conv'"),
    ("lenet5", {"score_count": 0}, "score_count must be a positive integer"),
])
def test_bad_paper_options_are_one_clear_error(tmp_path, model, method, message):
    with pytest.raises(ConfigError, match=message):
        run_experiment(config(model=model, **method), tmp_path, quiet=True)


# ----------------------------------------------------------------------------- scoring pool
def test_score_source_draws_from_the_right_pool():
    cfg = config()
    a = cfg.method
    assert a.score_source == "replay"  # the APP code scores on the replayed training set
    labels = torch.arange(600) % 4
    plan = plan_stream(labels, a, seed=0)
    newest = config(score_source="newest").method
    fixed = config(score_count=7).method
    for b in range(3):
        pick = score_indices(a, plan, b, seed=0)
        assert pick.unique().numel() == pick.numel() == math.ceil(0.2 * plan.stage_train[b].numel())
        assert set(pick.tolist()) <= set(plan.stage_train[b].tolist())
        assert torch.equal(pick, score_indices(a, plan, b, seed=0))  # seeded
        mine = score_indices(newest, plan, b, seed=0)
        assert mine.numel() == math.ceil(0.2 * plan.train_parts[b].numel())
        assert set(mine.tolist()) <= set(plan.train_parts[b].tolist())
        assert score_indices(fixed, plan, b, seed=0).numel() == 7
    older = set(torch.cat(plan.train_parts[:2]).tolist())
    assert set(score_indices(a, plan, 2, seed=0).tolist()) & older  # replay reaches back
    assert not set(score_indices(newest, plan, 2, seed=0).tolist()) & older


@pytest.mark.parametrize("source", ["replay", "newest"])
def test_pruning_is_scored_on_exactly_those_examples(tmp_path, monkeypatch, source):
    seen = []
    prune = sparsity.prune

    def spy(model, density, criterion="magnitude", data=None, **kwargs):
        seen.append(torch.cat([y for _, y in data]))
        return prune(model, density, criterion=criterion, data=data, **kwargs)

    monkeypatch.setattr(sparsity, "prune", spy)
    cfg = config(score_source=source)
    run_experiment(cfg, tmp_path, quiet=True)
    data = prepare_data(cfg)
    plan = plan_stream(data.train.labels, cfg.method, cfg.seed)
    assert len(seen) == 3
    for b, labels in enumerate(seen):
        assert torch.equal(labels, data.train.labels[score_indices(cfg.method, plan, b, 0)])


# ----------------------------------------------------------------------------- the paper's gap
def test_gap_paper_hand_example():
    assert gap_paper(0.9, 0.7) == pytest.approx(0.2)
    stages = [{"test_acc": 0.5, "gap_paper": 0.2}, {"test_acc": 0.6},
              {"test_acc": 0.7, "gap_paper": -0.1}]
    s = anytime_summary(stages, test_size=10)
    assert s["gap_paper"] == [0.2, None, -0.1]
    assert s["mean_gap_paper"] == pytest.approx(0.05) and s["final_gap_paper"] == -0.1
    with pytest.raises(MetricInputError, match="divided by 100"):
        gap_paper(90.0, 70.0)


def test_gap_paper_is_the_running_train_accuracy_minus_validation(tmp_path):
    # dense, and a learning rate too small to change any prediction: the running accuracy
    # of an epoch is the initial network's accuracy on the stage's training data
    cfg = config(model="mlp", lr=1e-9, epochs=2, strategy="dense")
    path = run_experiment(cfg, tmp_path, quiet=True)
    data = prepare_data(cfg)
    idx = load_file(str(path / "artifacts" / "stream_indices.safetensors"))
    net = create_model("mlp", num_classes=4, in_channels=1, image_size=8, hidden=[16])
    summary = json.loads((path / "summary.json").read_text())
    net.load_state_dict(load_file(str(path / "artifacts" / "model.safetensors")))

    def acc(part: str) -> float:
        loader = eval_loader(cfg, data.train.subset(idx[part]), data.splits, "cpu")
        with torch.no_grad():
            hits = sum(int((net(x).argmax(1) == y).sum()) for x, y in loader)
        return hits / idx[part].numel()

    hand = [acc(f"stage_{b}_train") - acc(f"stage_{b}_val") for b in range(3)]
    assert summary["gap_paper"] == pytest.approx(hand, abs=1e-12)
    assert summary["final_gap_paper"] == pytest.approx(hand[-1], abs=1e-12)
    assert summary["mean_gap_paper"] == pytest.approx(sum(hand) / 3, abs=1e-12)
    ends = {}
    for e in events(path, "epoch"):
        ends[e["stage"]] = e  # the last epoch of each stage
    for b, s in enumerate(events(path, "anytime_stage")):
        assert s["gap_paper"] == pytest.approx(ends[b]["train_acc_running"] - ends[b]["val_acc"])


# ----------------------------------------------------------------------------- re-initialisation
@pytest.mark.parametrize("strategy", ["app", "imp"])
def test_reinit_draws_a_fresh_recorded_init_each_stage(tmp_path, strategy):
    # the learning rate leaves the weights where each stage's initialisation put them
    cfg = config(model="mlp", lr=1e-9, strategy=strategy, warm_start=False)
    path = run_experiment(cfg, tmp_path, quiet=True)
    summary = json.loads((path / "summary.json").read_text())
    seeds = summary["init_seeds"]
    assert len(seeds) == 3 and len(set(seeds)) == 3 and all(isinstance(s, int) for s in seeds)
    assert [(e["megabatch"], e["seed"]) for e in events(path, "reinit")] == [
        (1, seeds[1]), (2, seeds[2])]
    assert [e["init_seed"] for e in events(path, "anytime_stage")] == seeds

    def init(seed: int) -> dict:
        torch.manual_seed(seed)
        return create_model("mlp", num_classes=4, in_channels=1, image_size=8,
                            hidden=[16]).state_dict()

    final = load_file(str(path / "artifacts" / "model.safetensors"))
    masks = MaskSet.load(path / "artifacts" / "masks.safetensors")
    last, first = init(seeds[2]), init(seeds[0])
    for name, w in final.items():
        keep = masks[name] if name in masks else torch.ones_like(w, dtype=torch.bool)
        assert torch.allclose(w, last[name] * keep, atol=1e-6)  # stage 3's own init, masked
        assert not torch.allclose(w, first[name] * keep, atol=1e-3)
        assert torch.all(w[~keep] == 0)


def test_warm_start_records_only_the_first_init(tmp_path):
    path = run_experiment(config(model="mlp"), tmp_path, quiet=True)
    summary = json.loads((path / "summary.json").read_text())
    assert summary["init_seeds"][1:] == [None, None] and isinstance(summary["init_seeds"][0], int)
    assert not events(path, "reinit")


# ----------------------------------------------------------------------------- presets
@pytest.mark.parametrize("name", ["app-cifar10", "app-cifar100"])
def test_cifar_presets_follow_the_app_code_and_say_where_they_depart(name):
    from underbudget.config import load_yaml, presets_dir

    a = load_config(name).method
    assert (a.prune_layers, a.score_source, a.score_count) == ("conv", "replay", 1250)
    assert 50_000 // a.megabatches * 0.2 == a.score_count  # int(0.2 × megabatch size)
    text = load_yaml(presets_dir() / f"{name}.yaml")["description"]
    for fact in ("ResNet-50", "ResNet-18", "32x32", "45k train / 5k val", "Departs"):
        assert fact in text
