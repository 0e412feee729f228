"""compress_transfer end to end: a tiny grid (pruned, PTQ and QAT variants; LP, FT, VP), its
artifacts, the report, resume, and the IMP / gradual / QAT variant families."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from underbudget.cli import main as cli_main
from underbudget.config import load_config
from underbudget.errors import ConfigError
from underbudget.experiment.launch import run_experiment
from underbudget.models import read_state_dict
from underbudget.sparsity import MaskSet

TINY = {
    "name": "ct-tiny",
    "seed": 0,
    "data": {
        "name": "synthetic",
        "image_size": 8,
        "channels": 1,
        "batch_size": 32,
        "options": {"num_classes": 12, "n_train": 360, "n_test": 96, "noise": 1.0},
    },
    "model": {"name": "convnet", "kwargs": {"widths": [8, 16]}},
    "optim": {"lr": 0.05},
    "train": {"epochs": 2, "device": "cpu", "progress": False},
    "method": {
        "name": "compress_transfer",
        "target": {"name": "digits", "limit": 300, "test_limit": 90, "batch_size": 16},
        "sparsities": [0.8],
        "quant": ["ptq-w4a4", "qat-w4a4"],
        "qat": {"epochs": 1},
        "methods": ["lp", "ft", "vp-ilm"],
        "budgets": ["3shot"],
        "seeds": [0],
        "lp": {"epochs": 2},
        "ft": {"epochs": 2},
        "vp": {"epochs": 2, "frame": 12, "r": 8},
        "save_weights": True,
    },
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct")
    cfg = load_config(TINY)
    path = run_experiment(cfg, root, quiet=True)
    return cfg, Path(path)


def _summary(path: Path) -> dict:
    return json.loads((path / "summary.json").read_text())


def test_grid_finishes_with_every_cell(tiny_run):
    _, path = tiny_run
    assert _summary(path)["transfer_runs"] == 4 * 3
    variants = {p.name: _summary(p) for p in (path / "variants").iterdir()}
    assert set(variants) == {"dense", "omp-0.8", "ptq-w4a4", "qat-w4a4"}
    assert variants["omp-0.8"]["density"] == pytest.approx(0.2, abs=2e-3)
    assert variants["ptq-w4a4"]["weight_levels_max"] <= 2**4 - 1
    assert variants["ptq-w4a4"]["act_layers"]
    for v in variants:
        for m in ("lp", "ft", "vp-ilm"):
            s = _summary(path / "transfer" / v / f"{m}-3shot-seed0")
            assert s["train_examples"] == 30 and s["val_examples"] == 30 and s["test_n"] == 90
            assert 0 <= s["ece"] <= 1 and s["temperature"] > 0 and len(s["reliability"]) == 15
            assert s["ece_binning"] == "default"


def test_quantized_activations_stay_on_in_lp_ft_and_vp(tiny_run):
    _, path = tiny_run
    for variant in ("ptq-w4a4", "qat-w4a4"):
        v = _summary(path / "variants" / variant)
        assert (v["bits"], v["act_bits"]) == (4, 4) and len(v["act_layers"]) == 3
        assert v["weight_levels_max"] <= 2**4 - 1
        for method in ("lp", "ft", "vp-ilm"):
            run = path / "transfer" / variant / f"{method}-3shot-seed0"
            state = read_state_dict(run / "artifacts" / "model.safetensors")
            quantized = [k for k in state if ".input_quantizer." in k]
            # every backbone layer keeps its input quantizer; LP and FT replace the source head
            layers = {k.split(".input_quantizer.")[0] for k in quantized}
            assert len(layers) == (3 if method == "vp-ilm" else 2), (variant, method, layers)
            assert _summary(run)["quantized_inputs"] == len(layers)
        dense = _summary(path / "transfer" / "dense" / "vp-ilm-3shot-seed0")
        assert dense["quantized_inputs"] == 0
    assert (path / "variants" / "qat-w4a4" / "artifacts" / "weight_steps.safetensors").exists()


def test_ft_keeps_pruned_weights_at_zero(tiny_run):
    _, path = tiny_run
    run = path / "transfer" / "omp-0.8" / "ft-3shot-seed0"
    assert _summary(run)["pruned_nonzero"] == 0
    masks = MaskSet(
        load_file(str(path / "variants" / "omp-0.8" / "artifacts" / "masks.safetensors"))
    )
    weights = read_state_dict(run / "artifacts" / "model.safetensors")
    checked = 0
    for name, mask in masks.items():
        if name.startswith("fc."):
            continue  # the new head is dense
        assert torch.count_nonzero(weights[name][~mask]) == 0
        assert torch.count_nonzero(weights[name][mask]) > 0
        checked += 1
    assert checked >= 2


def test_lp_and_vp_leave_the_backbone_bit_identical(tiny_run):
    _, path = tiny_run
    for variant in ("dense", "omp-0.8", "ptq-w4a4", "qat-w4a4"):
        src = path / "variants" / variant
        where = _summary(src)["weights_run"]
        ref = read_state_dict(path / where / "artifacts" / "model.safetensors")
        lp = path / "transfer" / variant / "lp-3shot-seed0"
        assert _summary(lp)["backbone_unchanged"] and _summary(lp)["backbone_eval_mode"]
        state = read_state_dict(lp / "artifacts" / "model.safetensors")
        backbone = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
        assert backbone and all(torch.equal(v, ref[k]) for k, v in backbone.items())
        dropped = set(ref) - set(backbone)  # the source head (and its input quantizer)
        assert {"fc.weight", "fc.bias"} <= dropped and all(k.startswith("fc.") for k in dropped)
        vp = path / "transfer" / variant / "vp-ilm-3shot-seed0"
        state = read_state_dict(vp / "artifacts" / "model.safetensors")
        assert all(torch.equal(state[f"backbone.{k}"], v) for k, v in ref.items())
        assert _summary(vp)["backbone_unchanged"]


def test_vp_records_label_mapping_diagnostics(tiny_run):
    _, path = tiny_run
    s = _summary(path / "transfer" / "ptq-w4a4" / "vp-ilm-3shot-seed0")
    lm = s["label_mapping"]
    assert len(set(lm["mapping"])) == 10 and len(lm["named"]) == 10
    counts = torch.tensor(lm["counts"])
    assert counts.shape == (12, 10) and int(counts.sum()) == 30  # the 3-shot training images
    assert len(s["mapping_changes"]) == s["epochs"]  # ILM: one remap per epoch
    assert s["remap_time"] >= 0
    # the prompted image is the configured 12-pixel frame around the 8-pixel source size
    assert (s["prompt_frame"], s["prompt_r"], s["prompt_parameters"]) == (12, 8, 12**2 - 8**2)


def test_report_is_written_and_rerun_is_skipped_or_reproduced(tiny_run, capsys):
    cfg, path = tiny_run
    assert cli_main(["report", str(path), "--out", str(path / "report")]) == 0
    text = (path / "report" / "report.md").read_text()
    assert "Transfer accuracy and calibration vs compression" in text
    for cell in ("| lp | 3shot | omp-0.8 |", "| vp-ilm | 3shot | ptq-w4a4 |"):
        assert cell in text
    for name in (
        "ct_acc_vs_sparsity.png",
        "ct_ece_vs_bits.png",
        "ct_reliability_ft_3shot.png",
        "ct_transfer.csv",
        "ct_label_mapping.json",
    ):
        assert (path / "report" / name).stat().st_size > 0
    # a rerun recomputes exactly one deleted transfer run and reproduces it
    child = path / "transfer" / "omp-0.8" / "vp-ilm-3shot-seed0"
    before = _summary(child)
    others = _summary(path / "transfer" / "dense" / "lp-3shot-seed0")
    (child / "summary.json").unlink()
    shutil.rmtree(child / "artifacts")
    (path / "summary.json").unlink()
    run_experiment(cfg, path.parent, quiet=True)
    after = _summary(child)
    assert after["acc"] == before["acc"] and after["ece"] == pytest.approx(before["ece"])
    assert _summary(path / "transfer" / "dense" / "lp-3shot-seed0")["time"] == others["time"]


def test_vp_with_more_target_than_source_classes_fails_early(tmp_path):
    values = json.loads(json.dumps(TINY))
    values["data"]["options"]["num_classes"] = 4
    cfg = load_config(values)
    with pytest.raises(ConfigError, match="num_target <= num_source"):
        run_experiment(cfg, tmp_path, quiet=True)
    assert not list(tmp_path.glob("*/source/summary.json"))  # nothing was trained


def test_imp_gradual_and_qat_variants(tmp_path):
    values = json.loads(json.dumps(TINY))
    values["method"].update(
        {
            "sparsities": [0.5],
            "prune_methods": ["imp", "gradual"],
            "quant": ["qat-w3"],
            "imp_rewind_epoch": 0,
            "methods": ["ft"],
            "budgets": ["2shot"],
            "save_weights": False,
            "gradual": {"epochs": 1, "events": 3},
        }
    )
    path = Path(run_experiment(load_config(values), tmp_path, quiet=True))
    levels = sorted(p.name for p in (path / "imp").iterdir())
    assert levels == ["level-01", "level-02", "level-03"]  # 0.8^3 = 0.512 is nearest to 0.5
    imp = _summary(path / "variants" / "imp-0.5")
    assert imp["weights_run"] == "imp/level-03"
    assert imp["density"] == pytest.approx(0.8**3, abs=2e-3)
    masks = MaskSet(load_file(str(path / "imp" / "level-03" / "artifacts" / "masks.safetensors")))
    prev = MaskSet(load_file(str(path / "imp" / "level-02" / "artifacts" / "masks.safetensors")))
    assert masks.is_subset_of(prev)  # IMP masks are nested across levels
    assert _summary(path / "variants" / "gradual-0.5")["density"] == pytest.approx(0.5, abs=2e-3)
    assert (path / "variants" / "qat-w3" / "artifacts" / "weight_steps.safetensors").exists()
    qat = _summary(path / "variants" / "qat-w3")
    assert qat["bits"] == 3 and qat["weight_levels_max"] <= 2**3 - 1 and qat["bits_measured"] <= 3
    for variant in ("imp-0.5", "gradual-0.5", "qat-w3"):
        s = _summary(path / "transfer" / variant / "ft-2shot-seed0")
        assert s["train_examples"] == 20 and math.isfinite(s["nll"])
        if variant != "qat-w3":
            assert s["pruned_nonzero"] == 0
