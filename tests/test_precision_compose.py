"""The ``precision`` section composes with training: QAT in the train method and in every
stage of the anytime method, the converted model evaluated and saved, resume with quantizers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from underbudget import sparsity
from underbudget.config import load_config
from underbudget.experiment.launch import run_experiment
from underbudget.models import create_model
from underbudget.quant import convert
from underbudget.quant.in_training import prepare_for_training
from underbudget.quant.qat import LSQQuantizer
from underbudget.sections import PrecisionConfig
from underbudget.sparsity import MaskSet
from underbudget.train.trainer import Trainer

SYNTH = {"name": "synthetic", "image_size": 8, "channels": 1, "batch_size": 32,
         "options": {"num_classes": 4, "n_train": 320, "n_test": 128}}
QAT4 = {"mode": "qat", "weight_bits": 4, "act_bits": 4}
TRAIN = {
    "name": "ptrain", "seed": 1, "data": SYNTH,
    "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
    "optim": {"name": "sgd", "lr": 0.05},
    "train": {"epochs": 3, "device": "cpu", "progress": False},
    "sparsity": {"method": "prune_at_init", "criterion": "snip", "density": 0.3,
                 "score_batches": 2},
    "precision": QAT4,
}
ANYTIME = {
    "name": "pany", "seed": 0, "data": {**SYNTH, "eval_batch_size": 64},
    "model": {"name": "lenet5"}, "optim": {"name": "sgd", "lr": 0.05},
    "train": {"epochs": 2, "device": "cpu", "progress": False, "select": "best"},
    "method": {"name": "anytime", "strategy": "app", "megabatches": 3, "tau": 4.5,
               "criterion": "snip"},
    "precision": QAT4,
}


def _summary(path: Path) -> dict:
    return json.loads((path / "summary.json").read_text())


def _stages(path: Path) -> list[dict]:
    events = map(json.loads, (path / "metrics.jsonl").read_text().splitlines())
    return [e for e in events if e["event"] == "anytime_stage"]


def _check_saved(path: Path, masks_file: str, bits: int) -> float:
    """Saved weights: at most 2**bits values per channel, zero exactly where pruned; returns
    the density counted from the saved weights themselves."""
    weights = load_file(str(path / "artifacts" / "model.safetensors"))
    masks = MaskSet.load(path / "artifacts" / masks_file)
    kept = total = 0
    for name, mask in masks.items():
        w = weights[name]
        for row in w.reshape(w.shape[0], -1):
            assert torch.unique(row).numel() <= 2**bits
        assert torch.equal(w != 0, mask)
        kept += int((w != 0).sum())
        total += w.numel()
    assert not any(k.endswith("weight_quantizer.step") for k in weights)  # converted layers
    return kept / total


def test_qat_in_the_train_method(tmp_path):
    path = run_experiment(load_config(TRAIN), tmp_path, quiet=True)
    s = _summary(path)
    assert (s["precision_mode"], s["weight_bits"], s["act_bits"]) == ("qat", 4, 4)
    assert s["max_levels_per_channel"] <= 16
    density = _check_saved(path, "masks.safetensors", 4)
    assert s["density_deployed"] == pytest.approx(density, abs=0)
    assert abs(density - 0.3) <= 1 / s["prunable"]
    assert s["deployed_test_acc"] == s["test_acc"]  # QAT eval is the converted model's
    assert s["bytes_deployed"] < s["bytes_sparse"]  # 4-bit values cost less than float32


def test_dense_float_run_records_float_precision(tmp_path):
    values = {**TRAIN, "sparsity": {}, "precision": {}}
    s = _summary(run_experiment(load_config(values), tmp_path, quiet=True))
    assert (s["precision_mode"], s["weight_bits"], s["act_bits"]) == ("none", 32, 32)
    assert "deployed_test_acc" not in s and s["bytes_deployed"] == s["bytes_dense"]


def test_qat_in_every_anytime_stage(tmp_path):
    path = run_experiment(load_config(ANYTIME), tmp_path, quiet=True)
    s = _summary(path)
    stages = _stages(path)
    assert len(stages) == 3
    for e in stages:  # every stage trained and evaluated the 4-bit model
        assert (e["weight_bits"], e["act_bits"]) == (4, 4)
        assert e["density_quantized"] == pytest.approx(e["density"], abs=0)
    assert (s["weight_bits"], s["act_bits"]) == (4, 4)
    density = _check_saved(path, "masks.safetensors", 4)
    assert s["density_deployed"] == pytest.approx(density, abs=0)
    assert s["density_deployed"] == pytest.approx(s["final_density_measured"], abs=0)
    assert s["deployed_test_acc"] == s["final_test_acc"]


def test_qat_anytime_resumes_with_its_quantizers(tmp_path, monkeypatch):
    ref = _summary(run_experiment(load_config(ANYTIME), tmp_path / "ref", quiet=True))
    fit = Trainer.fit
    calls = {"n": 0}

    def interrupted(self, loader, epochs, **kw):
        if kw.get("stage") == 2 and calls["n"] == 0:
            calls["n"] += 1
            raise KeyboardInterrupt  # as a stopped process: the checkpoint of stage 1 stays
        return fit(self, loader, epochs, **kw)

    monkeypatch.setattr(Trainer, "fit", interrupted)
    root = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(load_config(ANYTIME), root, quiet=True)
    path = run_experiment(load_config(ANYTIME), root, quiet=True)
    again = _summary(path)
    assert calls["n"] == 1
    assert any(json.loads(line)["event"] == "resume"
               for line in (path / "metrics.jsonl").read_text().splitlines())
    for key in ("test_errors", "cer_count", "density_deployed", "deployed_test_acc"):
        assert again[key] == ref[key]
    wa = load_file(str(path / "artifacts" / "model.safetensors"))
    wb = load_file(str(next((tmp_path / "ref").glob("pany-*")) / "artifacts" /
                       "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wb)


def test_scoring_passes_leave_quantizers_consistent():
    """SNIP's scoring restores the model's buffers afterwards; quantizers initialised before it
    keep their state (uninitialised ones would be left half set)."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 4, (32,))
    for example in (x, None):
        model = create_model("mlp", num_classes=4, in_channels=1, image_size=8, hidden=[16])
        model = prepare_for_training(model, PrecisionConfig(**QAT4), sparse=True, example=example)
        sparsity.prune(model, 0.5, criterion="snip", data=[(x, y)])
        quantizers = [m for m in model.modules() if isinstance(m, LSQQuantizer)]
        consistent = all(bool(q.initialized) == q._initialized for q in quantizers)
        assert consistent == (example is not None)


def test_flops_are_counted_through_quantized_layers():
    model = create_model("lenet5", num_classes=4, in_channels=1, image_size=8)
    dense = sparsity.cost(model, (1, 8, 8))
    prepare_for_training(model, PrecisionConfig(**QAT4), sparse=False,
                         example=torch.randn(4, 1, 8, 8))
    qat = sparsity.cost(model, (1, 8, 8))
    converted = sparsity.cost(convert(model), (1, 8, 8))
    for c in (qat, converted):
        assert c["flops_dense"] == dense["flops_dense"]
        assert c["uncounted_modules"] == [] and c["uncounted_weights"] == []
