"""Sparse deploy forms: the same logits as the dense model on every converted layer type, a
state_dict that maps back to the plain architecture, and the rule that chooses the form."""

from __future__ import annotations

import copy
import io
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from underbudget import deploy, sparsity
from underbudget.deploy import layers as deploy_layers
from underbudget.deploy import native
from underbudget.errors import ConfigError
from underbudget.models import create_model

ATOL = 1e-5


def pruned(layer: nn.Module, density: float, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.mul_(torch.rand(layer.weight.shape, generator=gen) < density)
    return layer


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=ATOL, rtol=1e-4)


# ---------------------------------------------------------------- layers


@pytest.mark.parametrize("bias", [True, False])
def test_sparse_linear_matches_dense_for_every_input_shape(bias, monkeypatch):
    torch.manual_seed(0)
    dense = pruned(nn.Linear(40, 24, bias=bias), 0.2)
    sparse = deploy.SparseLinear.from_dense(dense)
    assert sparse.values.numel() == int(dense.weight.count_nonzero())
    inputs = [torch.randn(1, 40), torch.randn(7, 40), torch.randn(3, 5, 40),
              torch.randn(40, 6).t()]  # the transposed layout a previous sparse layer returns
    with torch.inference_mode():
        for x in inputs:
            assert close(sparse(x), dense(x))
        monkeypatch.setattr(deploy_layers, "MAX_COLUMNS", 4)  # the chunked path
        x = torch.randn(11, 40)
        assert close(sparse(x), dense(x))


@pytest.mark.parametrize("stride,bias", [(1, True), (2, False)])
def test_sparse_conv1x1_matches_dense(stride, bias, monkeypatch):
    torch.manual_seed(0)
    dense = pruned(nn.Conv2d(12, 20, 1, stride=stride, bias=bias), 0.3)
    sparse = deploy.SparseConv1x1.from_dense(dense)
    x = torch.randn(5, 12, 7, 6)
    with torch.inference_mode():
        assert close(sparse(x), dense(x))
        assert close(sparse(x.contiguous(memory_format=torch.channels_last)), dense(x))
        monkeypatch.setattr(deploy_layers, "MAX_COLUMNS", 50)  # a few examples per product
        assert close(sparse(x), dense(x))


def test_sparse_layers_copy_save_move_and_go_back_to_dense():
    torch.manual_seed(0)
    dense = pruned(nn.Linear(16, 8), 0.25)
    sparse = deploy.SparseLinear.from_dense(dense)
    x = torch.randn(3, 16)
    with torch.inference_mode():
        sparse(x)  # builds the cached CSR tensor inside inference mode
    twin = copy.deepcopy(sparse)
    buf = io.BytesIO()
    torch.save(sparse, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    wide = copy.deepcopy(sparse).to(torch.float64)
    with torch.no_grad():  # the cache is a normal tensor: usable outside inference mode too
        for m in (sparse, twin, loaded):
            assert close(m(x), dense(x))
        assert wide(x.double()).dtype == torch.float64
        assert close(wide(x.double()).float(), dense(x))
        back = sparse.to_dense()
        assert type(back) is nn.Linear and torch.equal(back.weight, dense.weight)


# ---------------------------------------------------------------- whole models


def _models():
    yield "mlp", create_model("mlp", 10, 1, 28, seed=0), (1, 28, 28)
    yield "lenet5", create_model("lenet5", 10, 1, 28, seed=0), (1, 28, 28)
    yield "resnet20-B", create_model("resnet20", 10, 3, 32, seed=0, shortcut="B"), (3, 32, 32)


@pytest.mark.parametrize("name,model,shape", list(_models()), ids=lambda v: v if
                         isinstance(v, str) else "")
def test_deployed_model_gives_the_dense_logits_and_predictions(name, model, shape):
    model.eval()
    masks = sparsity.prune(model, 0.2, "magnitude", "layerwise")
    fast = deploy.to_sparse(model, where="all")
    kinds = {c.kind for c in fast.sparse_choices if c.form == "csr"}
    assert "linear" in kinds and (name != "resnet20-B" or "conv1x1" in kinds)
    converted = [m for m in fast.modules() if isinstance(m, (deploy.SparseLinear,
                                                             deploy.SparseConv1x1))]
    assert len(converted) == len([c for c in fast.sparse_choices if c.form == "csr"])
    x = torch.randn(6, *shape)
    with torch.inference_mode():
        ref, out = model(x), fast(x)
    assert close(out, ref) and torch.equal(out.argmax(1), ref.argmax(1))
    assert all(type(m) is not deploy.SparseLinear for m in model.modules())  # model untouched
    assert masks.density() == pytest.approx(0.2, abs=0.01)


def test_state_dict_maps_back_to_the_plain_architecture_and_forth():
    model = create_model("lenet5", 10, 1, 28, seed=0).eval()
    sparsity.prune(model, 0.1, "magnitude", "layerwise")
    fast = deploy.to_sparse(model, where="all")
    state = fast.state_dict()
    plain_state = model.state_dict()
    assert list(state) == list(plain_state)
    assert all(state[k].shape == plain_state[k].shape for k in state)
    fresh = create_model("lenet5", 10, 1, 28, seed=5).eval()
    fresh.load_state_dict(state)  # strict
    x = torch.randn(4, 1, 28, 28)
    with torch.inference_mode():
        assert close(fresh(x), model(x))
    other = create_model("lenet5", 10, 1, 28, seed=7).eval()
    sparsity.prune(other, 0.3, "magnitude", "layerwise")
    fast.load_state_dict(other.state_dict())  # a new zero pattern goes into the CSR layers
    with torch.inference_mode():
        assert close(fast(x), other(x))
    with pytest.raises(RuntimeError, match="size mismatch"):
        fast.load_state_dict(create_model("lenet5", 7, 1, 28).state_dict())


def test_masks_are_applied_to_the_copy_only():
    model = create_model("mlp", 10, 1, 28, seed=0).eval()
    probe = copy.deepcopy(model)
    masks = sparsity.prune(probe, 0.1, "magnitude", "global")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = deploy.to_sparse(model, masks, where="all")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    masks.apply(probe)  # still bound to probe, not to the deployed copy
    x = torch.randn(3, 1, 28, 28)
    with torch.inference_mode():
        assert close(fast(x), probe(x))
    back = deploy.to_dense(fast)
    assert not any(isinstance(m, deploy_layers.SPARSE_LAYERS) for m in back.modules())
    with torch.inference_mode():
        assert close(back(x), probe(x))


# ---------------------------------------------------------------- where it wins


def test_threshold_rule_by_density_and_size():
    net = nn.Sequential(pruned(nn.Linear(800, 800), 0.05), nn.ReLU(),
                        pruned(nn.Linear(800, 100), 0.05), nn.ReLU(),
                        pruned(nn.Linear(100, 10), 0.05), nn.ReLU(), nn.Linear(10, 10))
    with native.disabled():  # torch's CSR product: only large layers pay
        choices = {c.name: c for c in deploy.sparse_plan(net)}
        assert choices["0"].form == "csr"  # 640k weights at 5 %
        assert choices["2"].form == "dense"  # 80k weights: below the size where CSR pays
        assert choices["4"].form == "dense" and choices["6"].reason == "no zeros"
        assert deploy.csr_threshold(640_000, torch.device("cpu")) == 0.15
    empty = nn.Sequential(pruned(nn.Linear(64, 10), 0.0))  # fully pruned, but small
    assert [c.form for c in deploy.sparse_plan(empty)] == ["dense"]
    cpu = torch.device("cpu")
    assert deploy.csr_threshold(640_000, cpu, native_kernels=False) == 0.15
    assert deploy.csr_threshold(640_000, cpu, native_kernels=True) == 0.3
    assert deploy.csr_threshold(80_000, cpu, native_kernels=True) == 0.2
    assert deploy.csr_threshold(80_000, cpu, batch_size=16, native_kernels=True) == 0.0
    assert deploy.csr_threshold(640_000, cpu, batch_size=1, native_kernels=True) == 0.15
    assert deploy.csr_threshold(1_000, cpu, native_kernels=True) == 0.0
    assert deploy.csr_threshold(640_000, torch.device("cuda"), native_kernels=True) == 0.0
    if native.available():
        choices = {c.name: c for c in deploy.sparse_plan(net)}
        assert choices["0"].form == choices["2"].form == "csr"  # 80k weights pay natively
        assert choices["4"].form == "dense"  # 1k weights never do
    by_density = {c.name: c.form for c in deploy.sparse_plan(net, where=0.1)}
    assert by_density == {"0": "csr", "2": "csr", "4": "csr", "6": "dense"}
    x = torch.randn(4, 800)
    with torch.inference_mode():
        assert close(deploy.to_sparse(net)(x), net(x))


def test_measured_rule_times_both_forms():
    net = nn.Sequential(pruned(nn.Linear(64, 32), 0.1), nn.ReLU())
    fast = deploy.to_sparse(net, rule="measure", batch_size=8)
    (choice,) = fast.sparse_choices
    assert choice.dense_us > 0 and choice.sparse_us > 0 and choice.form in ("csr", "dense")
    conv = nn.Sequential(pruned(nn.Conv2d(8, 16, 1), 0.1))
    (no_shape,) = deploy.sparse_plan(conv, rule="measure")
    assert no_shape.dense_us is None and "needs input_shape" in no_shape.reason
    (shaped,) = deploy.sparse_plan(conv, rule="measure", input_shape=(8, 5, 5), batch_size=2)
    assert shaped.sparse_us is not None and "(2, 8, 5, 5)" in shaped.reason


def test_bad_options_are_refused():
    net = nn.Sequential(nn.Linear(4, 4))
    for where in ("fast", 0.0, 1.5, True):
        with pytest.raises(ConfigError, match="where"):
            deploy.to_sparse(net, where=where)
    with pytest.raises(ConfigError, match="rule"):
        deploy.to_sparse(net, rule="guess")


def test_other_layer_types_are_left_dense():
    net = nn.Sequential(pruned(nn.Conv2d(3, 8, 3), 0.1), pruned(nn.Conv2d(8, 8, 1, padding=1), 0.1),
                        pruned(nn.Conv2d(8, 8, 1, groups=2), 0.1))
    assert [deploy.eligible(m) for m in net] == [None, None, None]
    assert deploy.to_sparse(net, where="all").sparse_choices == []


# ---------------------------------------------------------------- 2:4


def test_two_four_pattern_and_cpu_fallback():
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    mask = deploy.two_four_mask(w)
    assert mask.reshape(8, 4, 4).sum(-1).eq(2).all()
    kept = (w.abs() * mask).reshape(8, 4, 4).sum(-1)
    dropped = (w.abs() * ~mask).reshape(8, 4, 4).amax(-1)
    assert (kept / 2 >= dropped - 1e-6).all()  # the two largest of each group are kept
    assert deploy.is_two_four(w * mask) and not deploy.is_two_four(w)
    ok, why = deploy.semi_structured_supported("cpu")
    assert not ok and "CUDA" in why
    layer = nn.Linear(16, 64)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(64, 16) * deploy.two_four_mask(torch.randn(64, 16)))
    fast = deploy.to_sparse(nn.Sequential(layer), where="all")
    assert [c.form for c in fast.sparse_choices] == ["csr"]  # never 2:4 on a CPU


def test_fast_pooling_gives_the_same_values_and_state():
    torch.manual_seed(0)
    pool = nn.MaxPool2d(2)
    fast = deploy.MaxPool2x2()
    for x in (torch.randn(3, 4, 8, 6), torch.randn(2, 3, 7, 9), torch.randn(4, 9, 5),
              torch.randn(2, 4, 8, 8).transpose(2, 3),
              torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)):
        assert torch.equal(fast(x), pool(x))
    assert not deploy.MaxPool2x2.fits(nn.MaxPool2d(3)) and not deploy.MaxPool2x2.fits(
        nn.MaxPool2d(2, ceil_mode=True))
    model = create_model("lenet5", 10, 1, 28, seed=0).eval()
    swapped = deploy.fast_pooling(model)
    assert sum(isinstance(m, deploy.MaxPool2x2) for m in swapped.modules()) == 2
    both = deploy.to_sparse(model, where="all", fast_pool=True)
    x = torch.randn(5, 1, 28, 28)
    with torch.inference_mode():
        assert torch.equal(swapped(x), model(x)) and close(both(x), model(x))
    assert list(both.state_dict()) == list(model.state_dict())
    plain = deploy.to_dense(both)
    assert sum(type(m) is nn.MaxPool2d for m in plain.modules()) == 2


def test_the_documented_example_runs():
    text = (Path(__file__).parents[1] / "docs" / "sparsity.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"```py\n(.*?)```", text, re.S)
    namespace: dict = {}
    exec(compile(block, "docs/sparsity.md", "exec"), namespace)
    forms = {c.name: c.form for c in namespace["fast"].sparse_choices}
    assert forms["features.1"] == "csr"  # the large first layer, at 0.4 % under global pruning
