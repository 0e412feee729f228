"""The quantize stage: PTQ of a finished (pruned) source as a stage of its own.

Pruned weights stay exactly zero and the density is the source's; every quantized weight
lies on a per-channel grid of the asked bits; activation ranges are calibrated when asked;
bytes on disk shrink; a fine-tune downstream keeps both the grid and the masks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from underbudget.config import load_config
from underbudget.experiment.compile import compile_experiment
from underbudget.experiment.launch import run_experiment
from underbudget.export.grid import recover_grid
from underbudget.models import read_state_dict
from underbudget.stages import deployed, deployed_bytes

SYNTH = {"name": "synthetic", "image_size": 8, "channels": 1, "batch_size": 32,
         "options": {"num_classes": 4, "n_train": 256, "n_test": 128}}
TARGET = {"name": "synthetic", "image_size": 8, "channels": 1, "batch_size": 16,
          "options": {"num_classes": 3, "n_train": 90, "n_test": 60}}


def pruned(bits: int = 8, act_bits: int | None = None, transfer: dict | None = None) -> dict:
    return {"name": "tiny-ptq", "seed": 1, "data": SYNTH,
            "model": {"name": "convnet", "kwargs": {"widths": [8, 16]}},
            "optim": {"name": "sgd", "lr": 0.1},
            "train": {"epochs": 2, "device": "cpu", "progress": False},
            "sparsity": {"method": "gradual", "density": 0.3, "interval": 2, "end": 0.5},
            "method": {"name": "train"},
            "precision": {"mode": "ptq", "weight_bits": bits, "act_bits": act_bits,
                          "calib_size": 64},
            "transfer": transfer or {}}


def stages(cfg) -> dict[str, str]:
    return {t.kind: t.path for t in compile_experiment(cfg).order()}


def summary(root: Path, path: str) -> dict:
    return json.loads((root / path / "summary.json").read_text())


@pytest.mark.parametrize("bits", [8, 4])
def test_ptq_keeps_pruned_weights_zero_and_the_density(tmp_path, bits):
    cfg = load_config(pruned(bits))
    run_experiment(cfg, tmp_path)
    where = stages(cfg)
    assert where["quantize"] == f"{where['run']}/ptq-w{bits}"
    source, quant = summary(tmp_path, where["run"]), summary(tmp_path, where["quantize"])
    q = read_state_dict(tmp_path / where["quantize"] / "artifacts" / "model.safetensors")
    f = read_state_dict(tmp_path / where["run"] / "artifacts" / "model.safetensors")
    masks = read_state_dict(tmp_path / where["run"] / "artifacts" / "masks.safetensors")
    assert masks == {} or set(masks) <= set(q)
    kept = numel = 0
    for name, mask in masks.items():
        assert torch.equal(q[name][~mask], torch.zeros_like(q[name][~mask]))  # exactly zero
        assert recover_grid(q[name], bits) is not None  # on the per-channel grid
        assert not torch.equal(q[name], f[name])  # and actually quantized
        # independent count: a kept weight survives unless it rounds to 0 on its channel's
        # grid (|w| < step / 2, step = max|w_c| / (2^(b-1) - 1))
        w = f[name].reshape(f[name].shape[0], -1)
        step = w.abs().amax(dim=1, keepdim=True) / (2 ** (bits - 1) - 1)
        kept += int(((w.abs() >= step / 2) & (w != 0) & mask.reshape(w.shape)).sum())
        numel += mask.numel()
    assert quant["pruned_nonzero"] == 0
    assert quant["density"] == pytest.approx(kept / numel, abs=0, rel=1e-12)
    assert quant["density_source"] == source["density"]
    if bits == 8:  # magnitude pruning keeps the large weights: none of them rounds to 0
        assert quant["density"] == source["density"] and quant["kept_zero"] == 0
    assert quant["weight_levels_max"] <= 2 ** bits - 1
    assert quant["bytes_export"] < quant["bytes_export_float"] < quant["bytes_float"]
    assert quant["flops_nonzero"] == source["flops_nonzero"]
    up = deployed(tmp_path / where["quantize"])
    assert up.bits == bits and up.masks is not None and up.density == quant["density"]
    assert deployed_bytes(up.state, bits, up.targets)["bytes_deployed"] == quant["bytes_export"]


def test_activation_calibration_and_a_fine_tune_through_the_grid(tmp_path):
    transfer = {"target": TARGET, "methods": ["ft", "lp"], "budgets": ["3shot"], "seeds": [0],
                "options": {"ft": {"epochs": 2}, "lp": {"epochs": 2}}}
    cfg = load_config(pruned(8, 8, transfer))
    run_experiment(cfg, tmp_path)
    graph = compile_experiment(cfg)
    (quant_task,) = [t for t in graph.order() if t.kind == "quantize"]
    assert quant_task.path.endswith("/ptq-w8a8-c64")
    quant = summary(tmp_path, quant_task.path)
    assert quant["calib_images"] == 64 and quant["act_layers"]
    assert quant["train_flops"] == 64 * quant["flops_nonzero"]  # one pass per calibration image
    assert abs(quant["test_acc"] - quant["test_acc_float"]) <= 0.1
    fts = [t for t in graph.order() if t.kind == "transfer" and t.config["method"] == "ft"]
    from_quant = next(t for t in fts if t.config["upstream"] == quant_task.path)
    got = summary(tmp_path, from_quant.path)
    assert got["family"] == "ptq" and got["bits"] == 8 and got["act_bits"] == 8
    # activations stay quantized, but for the new head (float, not part of the source)
    assert got["quantized_inputs"] == len(quant["act_layers"]) - 1 and "fc" in quant["act_layers"]
    assert got["pruned_nonzero"] == 0  # and the masks are kept
    lp = next(t for t in graph.order() if t.kind == "transfer" and t.config["method"] == "lp"
              and t.config["upstream"] == quant_task.path)
    assert summary(tmp_path, lp.path)["backbone_unchanged"] is True
    report = (tmp_path / graph.path / "report" / "report.md").read_text()
    assert "| ptq-w8a8-c64 | PTQ w8a8 |" in report


def test_a_source_trained_with_qat_transfers_through_its_grid(tmp_path):
    """precision.mode=qat stays in the source (trained quantized); no quantize stage."""
    transfer = {"target": TARGET, "methods": ["ft"], "budgets": ["3shot"], "seeds": [0],
                "options": {"ft": {"epochs": 1}}}
    values = pruned(4, 4, transfer)
    values["precision"] = {"mode": "qat", "weight_bits": 4, "act_bits": 4}
    cfg = load_config(values)
    assert "quantize" not in stages(cfg)
    run_experiment(cfg, tmp_path)
    where = stages(cfg)
    up = deployed(tmp_path / where["run"])
    assert up.bits == 4 and up.act_layers and up.masks is not None
    got = summary(tmp_path, where["transfer"])
    assert got["family"] == "qat" and got["upstream_bits"] == 4
    assert got["quantized_inputs"] == len(up.act_layers) - 1 and got["pruned_nonzero"] == 0
