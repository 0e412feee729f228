"""underbudget export: compact layouts that load back exactly, integer grids, model cards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from underbudget.cli import main
from underbudget.config import load_config
from underbudget.experiment.launch import run_experiment
from underbudget.export import decode, encode, export_run, load_model, read_export, recover_grid
from underbudget.export.layout import encode_quantized
from underbudget.models import create_model
from underbudget.quant import convert, insert_activation_quantizers, prepare_qat, quantize_model

QUIET = ["--quiet", "train.progress=false"]


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, and equal bit patterns wherever a float value is not zero."""
    if a.dtype != b.dtype or not torch.equal(a, b):
        return False
    if a.dtype != torch.float32:
        return True
    nonzero = a != 0
    return torch.equal(a[nonzero].view(torch.int32), b[nonzero].view(torch.int32))


def _same_model(model_a, model_b, shape=(5, 1, 8, 8)) -> None:
    for key, value in model_a.state_dict().items():
        assert _bits_equal(value, model_b.state_dict()[key]), key
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model_a.eval()(x), model_b.eval()(x))


def _tiny_model(path: Path):
    model = create_model("mlp", num_classes=4, in_channels=1, image_size=8, hidden=[32])
    model.load_state_dict(load_file(str(path / "artifacts" / "model.safetensors")))
    return model


def test_pruned_run_exports_sparse_and_loads_back_bit_for_bit(tmp_path, capsys):
    assert main(["run", "tiny", "--out", str(tmp_path), *QUIET, "train.epochs=1",
                 "sparsity.method=prune_at_init", "sparsity.density=0.2"]) == 0
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    capsys.readouterr()
    assert main(["export", str(run)]) == 0
    out = capsys.readouterr().out
    sizes = {f: (run / "export" / f"{f}.safetensors").stat().st_size for f in ("dense", "sparse")}
    for form, size in sizes.items():
        assert f"{size:,d} bytes" in out and form in out
    assert sizes["sparse"] < 0.5 * sizes["dense"]
    stored = load_file(str(run / "artifacts" / "model.safetensors"))
    for form in ("dense", "sparse"):
        back = read_export(run / "export" / f"{form}.safetensors")
        assert set(back) == set(stored)
        for key, value in stored.items():
            assert _bits_equal(back[key], value), (form, key)
    _same_model(_tiny_model(run), load_model(run / "export"))
    card = json.loads((run / "export" / "model_card.json").read_text())
    assert card["architecture"]["verified"] and card["architecture"]["model"] == "mlp"
    assert card["density"]["prunable"] == pytest.approx(0.2, abs=1e-3)
    assert set(card["density"]["layers"]) == {"features.1.weight", "fc.weight"}
    assert card["metrics"]["accuracy"] == json.loads((run / "summary.json").read_text())[
        "test_acc"]
    assert card["data"]["train_examples"] == 256 and card["config"]["sparsity"]["density"] == 0.2
    assert "| density |" in (run / "export" / "model_card.md").read_text()
    plan = card["inference"]  # layers of 2k weights: every one stays dense
    assert plan["sparse_layers"] == {} and plan["batch_size"] == 256
    fast = load_model(run / "export", sparse=True)
    assert [c.form for c in fast.sparse_choices] == ["dense", "dense"]
    x = torch.randn(5, 1, 8, 8)
    with torch.inference_mode():
        assert torch.allclose(fast(x), load_model(run / "export").eval()(x), atol=1e-6)


def test_inference_plan_names_the_sparse_and_fused_layers():
    from underbudget import sparsity
    from underbudget.deploy import native
    from underbudget.export.run import inference_plan

    model = create_model("lenet5", num_classes=10, in_channels=1, image_size=28, seed=0)
    sparsity.prune(model, 0.1, "magnitude", "layerwise")
    arch = {"model": "lenet5", "num_classes": 10, "in_channels": 1, "image_size": 28,
            "kwargs": {}, "verified": True}
    plan = inference_plan(arch, model.state_dict())
    assert plan["native_kernels"] == native.available()
    if native.available():
        assert plan["sparse_layers"]["conv1"] == "taps" and plan["sparse_layers"]["fc1"] == "csr"
        assert plan["fused_layers"] == ["conv1", "conv2"]
    assert inference_plan({**arch, "verified": False}, model.state_dict()) is None


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_ptq_weights_come_back_as_integers_and_per_channel_scales(bits):
    torch.manual_seed(bits)
    model = create_model("convnet", num_classes=4, in_channels=1, image_size=8, widths=[4, 8])
    qmodel, _ = quantize_model(model, bits)
    for name, w in qmodel.state_dict().items():
        if not name.endswith("weight") or w.dim() < 2:
            continue
        codes, scales = recover_grid(w, bits)
        assert codes.dtype == torch.int8 and int(codes.abs().max()) <= 2 ** (bits - 1) - 1
        assert scales.shape == (w.shape[0],)
        stored, spec = encode_quantized(name, codes, scales, bits, w.dtype)
        assert _bits_equal(decode(name, spec, stored), w)
    assert recover_grid(model.features[0].weight.detach(), bits) is None  # float: no grid


def test_qat_weights_come_back_with_their_learned_steps():
    torch.manual_seed(0)
    model = create_model("convnet", num_classes=4, in_channels=1, image_size=8, widths=[4, 8])
    qat = prepare_qat(model, 3, per_channel=True)
    with torch.no_grad():  # move the steps away from their initial values
        for layer in qat.modules():
            if hasattr(layer, "weight_quantizer"):
                layer.weight_quantizer.step.mul_(1.37)
    steps = {n: m.weight_quantizer.effective_step().detach().clone()
             for n, m in qat.named_modules() if hasattr(m, "weight_quantizer")}
    plain = convert(qat)
    for name, step in steps.items():
        w = plain.get_submodule(name).weight.detach()
        codes, scales = recover_grid(w, 3, step=step)
        assert torch.equal(scales, step) and int(codes.abs().max()) <= 3
        assert _bits_equal(codes.float() * scales.view(-1, 1, 1, 1) if w.dim() == 4
                           else codes.float() * scales.view(-1, 1), w)


def test_layouts_round_trip_and_pick_the_smallest():
    torch.manual_seed(0)
    dense = torch.randn(16, 32)
    sparse = dense * (torch.rand(16, 32) < 0.1)
    very_sparse = torch.zeros(64, 512)
    very_sparse[3, 7], very_sparse[60, 500] = 1.5, -2.0
    codes = torch.randint(-7, 8, (8, 4, 3, 3), dtype=torch.int8)
    for t, bits, layout in ((dense, None, "dense"), (sparse, None, "bitmask"),
                            (very_sparse, None, "csr"), (codes, 4, "bitpacked")):
        stored, spec = encode("w", t, bits=bits)
        assert spec["layout"] == layout
        assert sum(v.numel() * v.element_size() for v in stored.values()) <= t.numel() * (
            t.element_size())
        assert torch.equal(decode("w", spec, stored), t) and decode("w", spec, stored).dtype == (
            t.dtype)
    for layout in ("dense", "bitmask", "csr"):
        stored, spec = encode("w", sparse, layout=layout)
        assert torch.equal(decode("w", spec, stored), sparse)


TINY_CT = {
    "name": "ct-export", "seed": 0,
    "data": {"name": "synthetic", "image_size": 8, "channels": 1, "batch_size": 32,
             "options": {"num_classes": 4, "n_train": 128, "n_test": 64}},
    "model": {"name": "convnet", "kwargs": {"widths": [16, 32]}},
    "optim": {"lr": 0.05},
    "train": {"epochs": 1, "device": "cpu", "progress": False},
    "method": {"name": "compress_transfer",
               "target": {"name": "synthetic", "image_size": 8, "channels": 1, "batch_size": 16,
                          "options": {"num_classes": 4, "n_train": 32, "n_test": 16}},
               "sparsities": [0.8], "quant": ["ptq-w4a4"], "calib_size": 32,
               "methods": ["lp"], "budgets": ["2shot"], "seeds": [0], "lp": {"epochs": 1}},
}


@pytest.fixture(scope="module")
def transfer_run(tmp_path_factory):
    return Path(run_experiment(load_config(TINY_CT), tmp_path_factory.mktemp("ct"), quiet=True))


def _variant_model(root: Path, variant: str):
    summary = json.loads((root / "variants" / variant / "summary.json").read_text())
    model = create_model("convnet", num_classes=4, in_channels=1, image_size=8, widths=[16, 32])
    if summary["act_layers"]:
        insert_activation_quantizers(model, summary["act_bits"], layers=summary["act_layers"])
    holder = root / summary["weights_run"]
    model.load_state_dict(load_file(str(holder / "artifacts" / "model.safetensors")))
    return model


def test_quantized_variant_exports_integers_exactly(transfer_run, tmp_path):
    result = export_run(transfer_run / "variants" / "ptq-w4a4", tmp_path / "q")
    assert set(result.sizes) >= {"dense", "quantized"}
    assert result.sizes["quantized"] < 0.5 * result.sizes["dense"]
    quant = result.card["quantization"]
    assert quant["bits"] == 4 and not quant["float_layers"]
    assert all(layer["levels_used"] <= 15 for layer in quant["layers"].values())
    assert result.card["architecture"]["activation_quantization"]["bits"] == 4
    _same_model(_variant_model(transfer_run, "ptq-w4a4"), load_model(tmp_path / "q"))
    assert result.card["metrics"]["ece"] is not None  # the variant measured its calibration


def test_qat_variant_exports_its_learned_grid(tmp_path):
    values = json.loads(json.dumps(TINY_CT))
    values["method"].update(quant=["qat-w4"], sparsities=[], qat={"epochs": 1})
    root = Path(run_experiment(load_config(values), tmp_path / "runs", quiet=True))
    result = export_run(root / "variants" / "qat-w4", tmp_path / "q")
    steps = load_file(str(root / "variants" / "qat-w4" / "artifacts" /
                          "weight_steps.safetensors"))
    stored = load_file(str(result.files["quantized"]))
    for layer, step in steps.items():
        assert torch.equal(stored[f"{layer}.weight:scale"], step)  # the learned steps, exactly
    assert not result.card["quantization"]["float_layers"]
    _same_model(_variant_model(root, "qat-w4"), load_model(tmp_path / "q"))


@pytest.mark.parametrize("variant", ["omp-0.8", "dense"])
def test_pruned_and_dense_variants_export_from_their_weights_run(transfer_run, tmp_path, variant):
    result = export_run(transfer_run / "variants" / variant, tmp_path / variant)
    _same_model(_variant_model(transfer_run, variant), load_model(tmp_path / variant))
    assert str(transfer_run) in result.card["parents"]
    if variant == "omp-0.8":
        assert result.sizes["sparse"] < result.sizes["dense"]
        assert result.card["density"]["prunable"] == pytest.approx(0.2, abs=0.01)


def test_lottery_level_and_parent(tmp_path, capsys):
    assert main(["run", "tiny", "--out", str(tmp_path), *QUIET, "train.epochs=1",
                 "method.name=lottery", "method.levels=2"]) == 0
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    capsys.readouterr()
    assert main(["export", str(run)]) == 2
    err = capsys.readouterr().err
    assert "holds several models; export one of them" in err and "level-01" in err
    result = export_run(run / "level-01")
    assert result.card["parents"] == [str(run)]
    _same_model(_tiny_model(run / "level-01"), load_model(run / "level-01" / "export"))


def test_anytime_run_exports(tmp_path):
    cfg = load_config("tiny", ["method.name=anytime", "method.megabatches=2", "train.epochs=1",
                               "method.strategy=app", "model.name=lenet5",
                               "model.kwargs={}", "data.options.n_train=192"])
    run = Path(run_experiment(cfg, tmp_path, quiet=True))
    result = export_run(run)
    model = create_model("lenet5", num_classes=4, in_channels=1, image_size=8)
    model.load_state_dict(load_file(str(run / "artifacts" / "model.safetensors")))
    _same_model(model, load_model(run / "export"))
    assert result.card["metrics"]["cer"] is not None


def test_export_refuses_what_it_cannot_export(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing")]) == 2
    assert "no run at" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    assert main(["export", str(tmp_path / "half")]) == 2
    assert "not a finished run" in capsys.readouterr().err
    assert not (tmp_path / "half" / "export").exists()
