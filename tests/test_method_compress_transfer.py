"""compress_transfer: budgets, config checks, STE quantizers, report maths, end-to-end grid."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from underbudget.cli import main as cli_main
from underbudget.config import load_config
from underbudget.errors import ConfigError, DataError
from underbudget.methods.compress_transfer.budget import budget_split
from underbudget.methods.compress_transfer.config import imp_level, parse_budget, parse_method
from underbudget.methods.compress_transfer.features import TensorLoader
from underbudget.methods.compress_transfer.results import aggregate, pool_reliability
from underbudget.methods.compress_transfer.ste import STEActivationQuantizer, with_straight_through
from underbudget.methods.compress_transfer.transfer import fix_grid, make_prompt
from underbudget.models import read_state_dict
from underbudget.quant import (
    ActivationQuantizer,
    activation_quantizers,
    attach_input_quantizer,
    prepare_qat,
    quantize_model,
)
from underbudget.quant.fake import fake_quantize
from underbudget.runs.launch import run_experiment
from underbudget.sparsity import MaskSet

# --------------------------------------------------------------------------- parsing


def test_budget_and_method_strings():
    assert parse_budget("10shot").kind == "kshot" and parse_budget("10-shot").value == 10
    assert parse_budget("full").label == "full"
    frac = parse_budget("25%")
    assert frac.kind == "fraction" and frac.value == pytest.approx(0.25)
    assert parse_budget(0.1).label == "frac0.1"
    for bad in ("tenshot", "1.5", "0"):
        with pytest.raises(ConfigError):
            parse_budget(bad)
    assert parse_method("vp-ilm").mapping == "ilm" and parse_method("vp-ilm").prompt is None
    assert parse_method("vp-flm-pad").label == "vp-flm-pad"
    with pytest.raises(ConfigError, match="did you mean"):
        parse_method("vp-ilmm")
    with pytest.raises(ConfigError):
        parse_method("probe")


def test_imp_levels_match_requested_sparsities():
    # density 0.8^k nearest (in log) to 1 - s: 0.512, 0.210, 0.107, 0.055
    assert [imp_level(s, 0.2) for s in (0.5, 0.8, 0.9, 0.95)] == [3, 7, 10, 13]
    for s in (0.5, 0.8, 0.9, 0.95):
        k = imp_level(s, 0.2)
        best = min(range(1, 30), key=lambda j: abs(math.log(0.8**j) - math.log(1 - s)))
        assert k == best


def test_config_rejects_impossible_settings():
    base = {"name": "x", "method": {"name": "compress_transfer"}}
    for key, value, pattern in [
        ("method.sparsities", [1.2], "REMOVED"),
        ("method.budgets", ["tenshot"], "cannot read"),
        ("method.target.kshot", 5, "method.budgets"),
        ("method.prune_methods", ["snip"], "pruning method"),
        ("method.bits", [1], "from 2 to 16"),
        ("method.methods", ["lp", "lp"], "twice"),
        ("method.vp.prompt", "pads", "did you mean"),
        ("method.ft.optim.name", "adagrad", "optimizer"),
    ]:
        with pytest.raises(ConfigError, match=pattern):
            load_config(base, [f"{key}={json.dumps(value)}"])


def test_stage_overrides_keep_stage_defaults():
    cfg = load_config(
        {"name": "x", "method": {"name": "compress_transfer"}}, ["method.vp.optim.lr=0.02"]
    )
    vp = cfg.method.vp.optim
    assert (vp.name, vp.lr, vp.schedule, vp.milestones) == ("adam", 0.02, "multistep", [0.5, 0.72])


@pytest.mark.parametrize("preset", ["transfer-demo", "transfer-cifar"])
def test_presets_load(preset):
    cfg = load_config(preset)
    assert cfg.method.name == "compress_transfer"
    assert {"lp", "ft"} <= {parse_method(x).kind for x in cfg.method.methods}


# --------------------------------------------------------------------------- budgets


def _labels(per_class=(30, 25, 40)):
    return torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])[
        torch.randperm(sum(per_class), generator=torch.Generator().manual_seed(1))
    ]


def test_kshot_budget_validation_outside_the_budget_and_nested():
    labels = _labels()
    prev = None
    for k in (1, 5, 10):
        tr, va = budget_split(
            labels, parse_budget(f"{k}shot"), seed=3, val_cap=6, full_val_fraction=0.1
        )
        assert torch.bincount(labels[tr]).tolist() == [k, k, k]
        assert torch.bincount(labels[va]).tolist() == [min(k, 6)] * 3
        assert not set(tr.tolist()) & set(va.tolist())
        if prev is not None:
            assert set(prev.tolist()) <= set(tr.tolist())  # nested across k
        prev = tr
    again = budget_split(labels, parse_budget("5shot"), 3, 6, 0.1)
    other = budget_split(labels, parse_budget("5shot"), 4, 6, 0.1)
    assert torch.equal(again[0], budget_split(labels, parse_budget("5shot"), 3, 6, 0.1)[0])
    assert not torch.equal(again[0], other[0])


def test_full_and_fraction_budgets():
    labels = _labels()
    tr, va = budget_split(labels, parse_budget("full"), 0, val_cap=3, full_val_fraction=0.2)
    # per class: v = min(3, round(0.2 n)) = 3, train = the rest
    assert torch.bincount(labels[va]).tolist() == [3, 3, 3]
    assert torch.bincount(labels[tr]).tolist() == [27, 22, 37]
    assert sorted(tr.tolist() + va.tolist()) == list(range(labels.numel()))
    tr, va = budget_split(labels, parse_budget("0.2"), 0, val_cap=50, full_val_fraction=0.1)
    assert torch.bincount(labels[tr]).tolist() == [6, 5, 8]
    assert torch.bincount(labels[va]).tolist() == [6, 5, 8]
    with pytest.raises(DataError, match="too few"):
        budget_split(labels, parse_budget("25shot"), 0, 5, 0.1)


# --------------------------------------------------------------------------- pieces


def test_straight_through_quantizer_matches_forward_and_passes_gradients():
    layer = torch.nn.Linear(4, 3)
    q = ActivationQuantizer(bits=4)
    q.set_range(0.1, signed=True)
    attach_input_quantizer(layer, q)
    x = torch.linspace(-1.2, 1.2, 8).repeat(4, 1).T.contiguous().requires_grad_(True)
    plain = layer(x)
    plain.sum().backward()
    assert x.grad.abs().sum() == 0  # torch.round blocks every gradient
    expected_out = plain.detach()
    assert with_straight_through(layer) == 1
    assert isinstance(layer.input_quantizer, STEActivationQuantizer)
    x.grad = None
    out = layer(x)
    assert torch.equal(out.detach(), expected_out)
    out.sum().backward()
    # d/dx of sum(W q(x) + b) = column sums of W inside the range [-0.7, 0.7], 0 outside
    inside = (x.detach().abs() <= 7 * 0.1).float()
    expected = inside * layer.weight.detach().sum(0)
    assert torch.allclose(x.grad, expected)


def test_quantized_fine_tune_trains_through_the_variants_fixed_grid():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5)
    )
    calib = [torch.randn(16, 1, 8, 8) for _ in range(2)]
    variant, _ = quantize_model(model, 3, activations=True, calib_data=calib)
    x = torch.randn(6, 1, 8, 8)
    expected = variant(x)
    act = {n.removesuffix(".input_quantizer"): q for n, q in activation_quantizers(variant).items()}
    net = prepare_qat(
        copy.deepcopy(variant), 3, activations=True, per_channel=True, layers=["0", "3"]
    )
    fix_grid(net, 3, act)
    for name in ("0", "3"):
        layer = net.get_submodule(name)
        w = dict(variant.named_parameters())[f"{name}.weight"].detach()
        assert torch.allclose(layer.quantized_weight().detach(), w, atol=1e-7)
        assert torch.allclose(layer.quantized_weight().detach(), fake_quantize(w, 3), atol=1e-7)
        assert not layer.weight_quantizer.step.requires_grad
        assert not layer.input_quantizer.step.requires_grad
    assert torch.allclose(net(x), expected, atol=1e-6)  # the variant's function, unchanged
    net(x).sum().backward()
    assert net[0].weight.grad.abs().sum() > 0  # gradients pass the fixed grid (STE)


def test_quantized_fine_tune_keeps_learned_qat_steps():
    layer = torch.nn.Linear(4, 2, bias=False)
    step = torch.tensor([0.1, 0.05])
    with torch.no_grad():  # on a 3-bit grid (Qp = 3) but never reaching the largest code
        layer.weight.copy_(torch.tensor([[0.1, -0.2, 0.0, 0.1], [0.05, 0.0, -0.05, 0.1]]))
    net = prepare_qat(torch.nn.Sequential(layer), 3, per_channel=True)
    fix_grid(net, 3, {}, {"0": step})
    assert torch.equal(net[0].weight_quantizer.step.detach(), step)
    assert torch.allclose(net[0].quantized_weight().detach(), layer.weight.detach())
    fix_grid(net, 3, {})  # without the steps: max|w| / Qp, another grid
    assert not torch.allclose(net[0].quantized_weight().detach(), layer.weight.detach())


def test_prompt_defaults_follow_the_input_size():
    from underbudget.config import load_config as lc

    vp = lc({"name": "x", "method": {"name": "compress_transfer"}}).method.vp
    p = make_prompt("expansive", 28, 1, vp)
    assert p.r == 20 and p.num_parameters == 28**2 - 20**2
    assert make_prompt("pad", 28, 1, vp).pad == 4
    assert make_prompt("patch", 32, 3, vp).patch == 8


def test_tensor_loader_replays_the_image_loader_order():
    from underbudget.data import ImageSet, Loader

    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    loader = Loader(
        ImageSet(images, torch.arange(10) % 2, ["a", "b"]), 4, shuffle=True, normalize=False, seed=7
    )
    feats = TensorLoader(torch.arange(10.0).view(10, 1), torch.arange(10) % 2, 4, True, seed=7)
    for epoch in (0, 3):
        loader.set_epoch(epoch)
        feats.set_epoch(epoch)
        a = torch.cat([(x.flatten() * 255).round() for x, _ in loader])
        b = torch.cat([x.flatten() for x, _ in feats])
        assert torch.equal(a, b)


def test_paired_differences_and_pooled_reliability():
    def s(variant, seed, acc, ece):
        rel = [
            {"lo": 0.0, "hi": 0.5, "count": 2, "confidence": 0.4, "accuracy": acc},
            {"lo": 0.5, "hi": 1.0, "count": 2 * seed, "confidence": 0.9, "accuracy": 1.0},
        ]
        return {
            "method": "lp",
            "budget": "full",
            "variant": variant,
            "seed": seed,
            "acc": acc,
            "ece": ece,
            "ece_ts": ece / 2,
            "nll": 1.0,
            "time": 1.0,
            "reliability": rel,
        }

    studies = [
        {
            "transfers": [
                s("dense", 0, 0.8, 0.10),
                s("dense", 1, 0.9, 0.20),
                s("omp-0.9", 0, 0.7, 0.15),
                s("omp-0.9", 1, 0.7, 0.30),
            ]
        }
    ]
    rows = aggregate(studies)
    d = rows[("lp", "full", "omp-0.9")]["d_acc"]
    assert d[0] == pytest.approx(-0.15) and d[1] == pytest.approx(math.sqrt(0.005))
    assert rows[("lp", "full", "omp-0.9")]["d_ece"][0] == pytest.approx(0.075)
    assert "d_acc" not in rows[("lp", "full", "dense")]
    pooled = pool_reliability(rows[("lp", "full", "dense")]["runs"])
    assert pooled[0]["count"] == 4 and pooled[0]["accuracy"] == pytest.approx(0.85)
    assert pooled[1]["count"] == 2 and pooled[1]["confidence"] == pytest.approx(0.9)


# --------------------------------------------------------------------------- end to end

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
        "bits": [4],
        "quant_activations": True,
        "methods": ["lp", "ft", "vp-ilm"],
        "budgets": ["3shot"],
        "seeds": [0],
        "lp": {"epochs": 2},
        "ft": {"epochs": 2},
        "vp": {"epochs": 2},
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
    assert _summary(path)["transfer_runs"] == 3 * 3
    variants = {p.name: _summary(p) for p in (path / "variants").iterdir()}
    assert set(variants) == {"dense", "omp-0.8", "ptq-w4a4"}
    assert variants["omp-0.8"]["density"] == pytest.approx(0.2, abs=2e-3)
    assert variants["ptq-w4a4"]["weight_levels_max"] <= 2**4 - 1
    assert variants["ptq-w4a4"]["act_layers"]
    for v in variants:
        for m in ("lp", "ft", "vp-ilm"):
            s = _summary(path / "transfer" / v / f"{m}-3shot-seed0")
            assert s["train_examples"] == 30 and s["val_examples"] == 30 and s["test_n"] == 90
            assert 0 <= s["ece"] <= 1 and s["temperature"] > 0 and len(s["reliability"]) == 15


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
    for variant in ("dense", "omp-0.8", "ptq-w4a4"):
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
    assert s["ste_quantizers"] > 0 and s["remap_time"] >= 0


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
            "bits": [3],
            "quant_mode": "qat",
            "quant_activations": False,
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
