"""The sparse k x k convolution (SparseConv2d): F.conv2d's outputs from the nonzero weights
only, a dense state_dict, the way back to nn.Conv2d, and where to_sparse picks it."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from underbudget import deploy, sparsity
from underbudget.deploy import convert, native
from underbudget.deploy.rule import conv_threshold
from underbudget.deploy.sparse_conv import SparseConv2d
from underbudget.models import create_model

ATOL = 1e-5


def masked_conv(cin, cout, kernel, density, seed=0, **options) -> nn.Conv2d:
    gen = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(cin, cout, kernel, **options).requires_grad_(False)
    conv.weight.normal_(generator=gen)
    if conv.bias is not None:
        conv.bias.normal_(generator=gen)
    conv.weight.mul_(torch.rand(conv.weight.shape, generator=gen) < density)
    return conv


def with_nnz(conv: nn.Conv2d, nnz: int, seed: int = 0) -> nn.Conv2d:
    gen = torch.Generator().manual_seed(seed)
    keep = torch.zeros(conv.weight.numel(), dtype=torch.bool)
    keep[torch.randperm(keep.numel(), generator=gen)[:nnz]] = True
    conv.requires_grad_(False).weight.mul_(keep.view_as(conv.weight))
    return conv


def reference(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation)


SHAPES = [  # in, out, kernel, density, options
    (1, 6, 5, 0.1, {"padding": 2}),  # LeNet-5's first convolution
    (6, 16, 5, 0.1, {}),  # its second
    (3, 8, 3, 0.3, {"stride": 2, "padding": 1}),
    (3, 4, 3, 0.4, {"padding": 2, "dilation": 2, "bias": False}),
    (1, 5, (3, 2), 0.5, {"stride": (2, 1), "padding": (1, 0), "dilation": (1, 2)}),
    (3, 6, 3, 0.3, {"padding": "same", "dilation": 2}),
    (3, 4, 1, 0.5, {"padding": 1, "bias": False}),  # 1x1 with padding: not a CSR candidate
    (3, 7, 3, 0.0, {"padding": 1}),  # every weight pruned: the bias alone
    (1, 4, 3, 0.0, {"bias": False}),
    (3, 16, 3, 0.02, {"padding": 1}),  # most output channels without a nonzero
]


@pytest.mark.parametrize("cin,cout,kernel,density,options", SHAPES)
@pytest.mark.parametrize("method", ["taps", "gather", "auto"])
def test_outputs_equal_conv2d(cin, cout, kernel, density, options, method):
    conv = masked_conv(cin, cout, kernel, density, **options)
    sparse = SparseConv2d.from_dense(conv, method=method)
    assert sparse.nnz == int(conv.weight.count_nonzero())
    assert sparse.density() == sparse.nnz / conv.weight.numel()
    gen = torch.Generator().manual_seed(1)
    for x in (torch.randn(3, cin, 13, 11, generator=gen), torch.randn(1, cin, 9, 9, generator=gen),
              torch.randn(4, cin, 12, 12, generator=gen)[1:],  # a view with an offset
              torch.randn(2, cin, 10, 8, generator=gen).contiguous(
                  memory_format=torch.channels_last)):
        with torch.inference_mode():
            out, ref = sparse(x), reference(conv, x)
        assert out.shape == ref.shape
        assert (out - ref).abs().max() <= ATOL


def test_auto_method_follows_the_work():
    conv = masked_conv(6, 16, 5, 0.1)
    sparse = SparseConv2d.from_dense(conv)
    assert sparse.choose(1, 100) == "gather"  # few elements per call: the fewest calls
    assert sparse.choose(256, 100) == "taps"
    with pytest.raises(ValueError, match="method"):
        SparseConv2d.from_dense(conv, method="fft")
    with pytest.raises(ValueError, match="groups"):
        SparseConv2d.from_dense(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="padding_mode"):
        SparseConv2d.from_dense(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"))


def test_state_dict_copy_save_cast_and_back_to_dense():
    conv = masked_conv(3, 8, 3, 0.2, padding=1, stride=2)
    sparse = SparseConv2d.from_dense(conv)
    x = torch.randn(2, 3, 12, 12)
    with torch.inference_mode():
        sparse(x)  # fills the offset caches
    state = sparse.state_dict()
    assert list(state) == list(conv.state_dict()) == ["weight", "bias"]
    assert torch.equal(state["weight"], conv.weight) and torch.equal(state["bias"], conv.bias)
    plain = nn.Conv2d(3, 8, 3, padding=1, stride=2)
    plain.load_state_dict(state)  # strict
    other = masked_conv(3, 8, 3, 0.5, seed=3, padding=1, stride=2)
    sparse.load_state_dict(other.state_dict())  # a new zero pattern
    assert sparse.nnz == int(other.weight.count_nonzero())
    with pytest.raises(RuntimeError, match="size mismatch"):
        copy.deepcopy(sparse).load_state_dict(nn.Conv2d(3, 8, 5).state_dict())
    buf = io.BytesIO()
    torch.save(sparse, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    wide = copy.deepcopy(sparse).to(torch.float64)
    with torch.no_grad():
        for m in (sparse, copy.deepcopy(sparse), loaded):
            assert (m(x) - reference(other, x)).abs().max() <= ATOL
        assert wide(x.double()).dtype == torch.float64
        assert (wide(x.double()).float() - reference(other, x)).abs().max() <= ATOL
        back = loaded.to_dense()
        assert type(back) is nn.Conv2d and torch.equal(back.weight, other.weight)
        assert (back.stride, back.padding, back.dilation) == ((2, 2), (1, 1), (1, 1))
        assert torch.equal(back(x), other(x))
    assert "density=" in repr(sparse) and "kernel_size=(3, 3)" in repr(sparse)
    same = SparseConv2d.from_dense(masked_conv(3, 6, 3, 0.3, padding="same")).to_dense()
    assert same.padding == "same"


def test_lenet5_to_sparse_and_back_gives_the_same_logits():
    model = create_model("lenet5", 10, 1, 28, seed=0).eval()
    probe = copy.deepcopy(model)
    masks = sparsity.prune(probe, 0.1, "magnitude", "layerwise")
    fast = deploy.to_sparse(model, masks, where="all", kxk=True, fast_pool=True)
    forms = {c.name: (c.kind, c.form) for c in fast.sparse_choices}
    assert forms["conv1"] == ("conv", "taps") and forms["conv2"] == ("conv", "taps")
    assert forms["fc1"] == ("linear", "csr")
    assert isinstance(fast.conv1, SparseConv2d) and isinstance(fast.conv2, SparseConv2d)
    assert list(fast.state_dict()) == list(model.state_dict())
    x = torch.randn(5, 1, 28, 28)
    with torch.inference_mode():
        ref, out = probe(x), fast(x)
    assert (out - ref).abs().max() <= ATOL and torch.equal(out.argmax(1), ref.argmax(1))
    back = deploy.to_dense(fast)
    assert type(back.conv1) is nn.Conv2d and type(back.conv2) is nn.Conv2d
    assert not any(isinstance(m, convert.DEPLOY_LAYERS) for m in back.modules())
    assert torch.equal(back.conv1.weight, probe.conv1.weight)
    with torch.inference_mode():
        assert torch.equal(back(x), probe(x))
    fresh = create_model("lenet5", 10, 1, 28, seed=4).eval()
    fresh.load_state_dict(fast.state_dict())
    with torch.inference_mode():
        assert torch.equal(fresh(x), probe(x))


def test_kxk_convs_are_candidates_only_when_asked():
    conv = masked_conv(3, 8, 3, 0.05)
    assert deploy.eligible(conv) is None and deploy.eligible(conv, kxk=True) == "conv"
    assert deploy.eligible(nn.Conv2d(8, 8, 1), kxk=True) == "conv1x1"  # the CSR form first
    assert deploy.eligible(nn.Conv2d(4, 4, 3, groups=2), kxk=True) is None
    assert deploy.eligible(nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"),
                           kxk=True) is None
    assert deploy.to_sparse(nn.Sequential(conv), where="all").sparse_choices == []


def test_native_threshold_rule_by_density():
    cpu = torch.device("cpu")
    lenet2 = with_nnz(nn.Conv2d(6, 16, 5), 480)  # 20 % of 2400 weights: the limit
    stem = with_nnz(nn.Conv2d(1, 6, 5, padding=2), 75)  # 25 weights per output: 0.5
    assert conv_threshold(lenet2, cpu, native_kernels=True)[0] == 480
    assert conv_threshold(stem, cpu, native_kernels=True)[0] == 75
    strided = nn.Conv2d(16, 16, 3, stride=2)
    assert conv_threshold(strided, cpu, native_kernels=True)[0] < 0
    assert conv_threshold(lenet2, torch.device("cuda"), native_kernels=True)[0] < 0
    if native.available():
        denser = with_nnz(nn.Conv2d(6, 16, 5), 481)
        choices = deploy.sparse_plan(nn.Sequential(lenet2, nn.ReLU(), denser), kxk=True)
        assert [c.form for c in choices] == ["taps", "dense"]
        assert "native kernel" in choices[0].reason


def test_threshold_rule_picks_taps_up_to_one_nonzero_per_output_channel():
    with native.disabled():  # the limits of torch's kernels
        _torch_threshold_rule()


def _torch_threshold_rule():
    cpu = torch.device("cpu")
    net = nn.Sequential(
        with_nnz(nn.Conv2d(3, 6, 5, padding=2), 6),  # = out channels, 75 per output: taps
        with_nnz(nn.Conv2d(6, 16, 5, padding=2), 17),  # one more than out channels: dense
        with_nnz(nn.Conv2d(16, 16, 3, padding=1), 10),  # below: taps
        with_nnz(nn.Conv2d(16, 16, 3, stride=2, padding=1), 2),  # strided: dense
    )
    assert conv_threshold(net[0], cpu)[0] == 6 and conv_threshold(net[3], cpu)[0] < 0
    assert conv_threshold(net[0], torch.device("cuda"))[0] < 0
    choices = deploy.sparse_plan(net, kxk=True)
    assert [c.form for c in choices] == ["taps", "dense", "taps", "dense"]
    assert "6 nonzeros <= 6" in choices[0].reason and "17 nonzeros > 16" in choices[1].reason
    assert "strided" in choices[3].reason
    fast = deploy.to_sparse(net, kxk=True)
    assert [type(m) for m in fast] == [SparseConv2d, nn.Conv2d, SparseConv2d, nn.Conv2d]
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        assert (fast(x) - net(x)).abs().max() <= ATOL
    assert deploy.sparse_plan(net) == []  # without kxk: no candidates
    stem = nn.Sequential(with_nnz(nn.Conv2d(1, 6, 5, padding=2), 2))  # 25 weights per output
    (choice,) = deploy.sparse_plan(stem, kxk=True)
    assert choice.form == "dense" and "25 weights per output channel < 64" in choice.reason
    assert [c.form for c in deploy.sparse_plan(stem, kxk=True, where=0.1)] == ["taps"]


def test_measured_rule_times_the_taps_form():
    net = nn.Sequential(masked_conv(1, 6, 5, 0.1, padding=2), nn.ReLU())
    (choice,) = deploy.sparse_plan(net, kxk=True, rule="measure", input_shape=(1, 12, 12),
                                   batch_size=4)
    assert choice.dense_us > 0 and choice.sparse_us > 0 and choice.form in ("taps", "dense")
    assert "(4, 1, 12, 12)" in choice.reason
    (unshaped,) = deploy.sparse_plan(net, kxk=True, rule="measure")
    assert unshaped.dense_us is None and "needs input_shape" in unshaped.reason
