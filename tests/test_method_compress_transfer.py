"""compress_transfer: budgets, config checks, prompt geometry, fixed grids, report maths."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from underbudget.config import load_config
from underbudget.errors import ConfigError, DataError
from underbudget.methods.compress_transfer.budget import budget_split
from underbudget.methods.compress_transfer.config import (
    imp_level,
    parse_budget,
    parse_method,
    parse_quant,
)
from underbudget.methods.compress_transfer.features import TensorLoader
from underbudget.methods.compress_transfer.prompting import check_frame, make_prompt
from underbudget.methods.compress_transfer.results import aggregate, pool_reliability
from underbudget.methods.compress_transfer.transfer import fix_grid
from underbudget.methods.compress_transfer.variants import variant_specs
from underbudget.models import create_model
from underbudget.quant import activation_quantizers, prepare_qat, quantize_model
from underbudget.quant.fake import fake_quantize

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
    assert parse_method("vp-ilm-shrink-pad").prompt == "shrink-pad"
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
        ("method.quant", ["ptq-w1"], "from 2 to 16"),
        ("method.quant", ["qat-4"], "ptq-w4"),
        ("method.quant", ["ptq-w8", "ptq-w8"], "twice"),
        ("method.vp.frame", 0, "positive"),
        ("method.ece_binning", "guo", "legacy"),
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


@pytest.mark.parametrize("preset", ["transfer-demo", "transfer-cifar", "transfer-qat-demo"])
def test_presets_load(preset):
    cfg = load_config(preset)
    assert cfg.method.name == "compress_transfer"
    assert {"lp", "ft"} <= {parse_method(x).kind for x in cfg.method.methods}


def test_one_grid_holds_weight_only_ptq_and_qat_variants():
    assert parse_quant("ptq-w4").act_bits is None and parse_quant("QAT-W3A3").name == "qat-w3a3"
    cfg = load_config("transfer-qat-demo")
    specs = {v.name: v for v in variant_specs(cfg.method)}
    for bits in (8, 4, 3):
        ptq, qat = specs[f"ptq-w{bits}"], specs[f"qat-w{bits}a{bits}"]
        assert (ptq.family, ptq.bits, ptq.act_bits) == ("ptq", bits, None)
        assert (qat.family, qat.bits, qat.act_bits) == ("qat", bits, bits)


def test_transfer_cifar_vp_uses_the_ilm_vp_geometry():
    cfg = load_config("transfer-cifar")
    prompt = make_prompt(cfg.method.vp.prompt, 32, 3, cfg.method.vp)
    assert (prompt.input_size, prompt.r) == (224, 32)
    assert prompt.num_parameters == 147_456  # 3 x (224^2 - 32^2); 1,344 with r=24 in 32 px


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
    assert p.r == 20 and p.num_parameters == 28**2 - 20**2 and p.input_size == 28
    assert make_prompt("pad", 28, 1, vp).pad == 4
    assert make_prompt("shrink-pad", 28, 1, vp).r == 20
    assert make_prompt("patch", 32, 3, vp).patch == 8


def test_frame_and_resized_image_are_configurable():
    cfg = load_config(
        {"name": "x", "method": {"name": "compress_transfer"}},
        ["method.vp.frame=224", "method.vp.r=32"],
    )
    prompt = make_prompt("expansive", 32, 3, cfg.method.vp)  # a 32-pixel source input
    assert prompt.input_size == 224 and prompt.r == 32
    assert prompt.num_parameters == 3 * (224**2 - 32**2) == 147_456
    assert prompt(torch.rand(2, 3, 32, 32)).shape == (2, 3, 224, 224)
    with pytest.raises(ConfigError, match="fit in the frame"):
        load_config(
            {"name": "x", "method": {"name": "compress_transfer"}},
            ["method.vp.frame=16", "method.vp.r=20"],
        )


def test_a_source_with_a_global_pool_accepts_a_larger_frame():
    pooled = create_model("convnet", num_classes=5, in_channels=3, image_size=8, widths=[4, 8])
    check_frame(pooled, 40, 3, 5, 8)  # no error: the global pool takes any size
    assert pooled.training  # mode restored
    vp_input = make_prompt("expansive", 8, 3, load_config(
        {"name": "x", "method": {"name": "compress_transfer", "vp": {"frame": 40, "r": 8}}}
    ).method.vp)(torch.rand(2, 3, 8, 8))
    assert pooled.eval()(vp_input).shape == (2, 5)
    flat = create_model("mlp", num_classes=5, in_channels=3, image_size=8)
    check_frame(flat, 8, 3, 5, 8)  # the source's own size always passes
    with pytest.raises(ConfigError, match="global pool.*method.vp.frame=8"):
        check_frame(flat, 40, 3, 5, 8)


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
