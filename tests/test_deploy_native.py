"""The native CPU kernels against torch's dense ones, the conv-ReLU-pool fusion, and the build."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from underbudget import deploy, sparsity
from underbudget.deploy import native
from underbudget.deploy.fuse import PooledAbove, fuse_conv_pool
from underbudget.deploy.layers import csr_parts
from underbudget.deploy.sparse_conv import SparseConv2d
from underbudget.models import create_model

needs_native = pytest.mark.skipif(not native.available(),
                                  reason=f"native kernels: {native.unavailable_reason()}")
ATOL = 1e-4


def sparse_weight(shape, density: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen)
    return w * (torch.rand(shape, generator=gen) < density)


# ---------------------------------------------------------------- kernels


@needs_native
@pytest.mark.parametrize("n", [2, 3, 16, 17, 63, 64, 65, 200])
@pytest.mark.parametrize("density", [0.0, 0.1, 0.6])
def test_csr_linear_equals_linear(n, density):
    w, b = sparse_weight((37, 53), density, seed=n), torch.randn(37)
    x = torch.randn(n, 53)
    crow, col, values = csr_parts(w)
    got = native.csr_linear(x, crow, col, values, b, 37)
    assert got.shape == (n, 37)
    assert torch.allclose(got, F.linear(x, w, b), atol=ATOL)
    assert torch.allclose(native.csr_linear(x, crow, col, values, None, 37), x @ w.t(),
                          atol=ATOL)
    # its output layout (a transposed view) is read in place by the next layer
    chained = native.csr_linear(got, *csr_parts(w[:, :37]), None, 37)
    assert torch.allclose(chained, F.linear(x, w, b) @ w[:, :37].t(), atol=ATOL)


@needs_native
@pytest.mark.parametrize("cin,cout,kernel,padding,dilation,size", [
    (1, 6, (5, 5), (2, 2), (1, 1), (28, 28)),    # LeNet-5 conv1
    (6, 16, (5, 5), (0, 0), (1, 1), (14, 14)),   # LeNet-5 conv2
    (3, 8, (3, 3), (1, 1), (1, 1), (9, 13)),     # odd sizes, non-square
    (4, 5, (3, 2), (0, 1), (2, 1), (11, 10)),    # rectangular kernel, dilation
    (8, 4, (1, 1), (0, 0), (1, 1), (5, 7)),      # 1x1
])
@pytest.mark.parametrize("density", [0.05, 0.4, 1.0])
def test_sparse_conv2d_equals_conv2d(cin, cout, kernel, padding, dilation, size, density):
    w = sparse_weight((cout, cin, *kernel), density)
    b = torch.randn(cout)
    x = torch.randn(3, cin, *size)
    ref = F.conv2d(x, w, b, padding=padding, dilation=dilation)
    index = w.nonzero()
    values = w[tuple(index.t())].contiguous()
    pad4 = (padding[1], padding[1], padding[0], padding[0])
    hp, wp = size[0] + 2 * padding[0], size[1] + 2 * padding[1]
    crow, offsets = native.conv_offsets(index, wp, hp, cin, cout, dilation)
    got = native.sparse_conv2d(x, crow, offsets, values, b, cout, pad4, kernel, dilation)
    assert got.shape == ref.shape and torch.allclose(got, ref, atol=ATOL)
    fused = native.sparse_conv2d(x, crow, offsets, values, b, cout, pad4, kernel, dilation,
                                 relu=True, pool=ref.shape[-1] >= 2 and ref.shape[-2] >= 2)
    if ref.shape[-1] >= 2 and ref.shape[-2] >= 2:
        assert torch.allclose(fused, F.relu(F.max_pool2d(ref, 2)), atol=ATOL)


@needs_native
def test_layers_run_the_native_kernels_and_agree_with_torch_ones():
    lin = nn.Linear(300, 100)
    conv = nn.Conv2d(6, 16, 5, padding="same")
    one = nn.Conv2d(16, 8, 1, stride=2)
    with torch.no_grad():
        for layer in (lin, conv, one):
            layer.weight.mul_(torch.rand(layer.weight.shape) < 0.1)
    cases = [(deploy.SparseLinear.from_dense(lin), lin, torch.randn(70, 300)),
             (SparseConv2d.from_dense(conv), conv, torch.randn(5, 6, 12, 12)),
             (deploy.SparseConv1x1.from_dense(one), one, torch.randn(5, 16, 9, 9))]
    with torch.inference_mode():
        for sparse, dense, x in cases:
            fast = sparse(x)
            with native.disabled():
                assert not native.available()
                slow = sparse(x)
            assert torch.allclose(fast, dense(x), atol=ATOL)
            assert torch.allclose(slow, dense(x), atol=ATOL)
            assert torch.allclose(sparse(x.double()).float(), dense(x), atol=ATOL)


# ---------------------------------------------------------------- fusion


class ConvPoolThenReLU(nn.Module):
    """conv -> pool -> F.relu (functional ReLU after the pool), then a head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        return self.head(F.relu(self.pool(self.conv(x))).flatten(1))


class SharedPool(nn.Module):
    """One pool module used twice: it cannot become a pass-through."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.pool(self.act(self.b(self.pool(self.act(self.a(x))))))


class Branching(nn.Module):
    """The conv's output also feeds a second consumer: no fusion."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        y = self.conv(x)
        return self.pool(torch.relu(y)).sum() + y.mean()


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent branch: torch.fx cannot trace it
            x = x * 2
        return self.pool(torch.relu(self.conv(x)))


def prune_all(model: nn.Module, density: float = 0.2) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(torch.rand(m.weight.shape) < density)
    return model.eval()


@pytest.mark.parametrize("fast_pool", [False, True])
def test_lenet5_fuses_both_convolutions_and_keeps_its_logits(fast_pool):
    model = create_model("lenet5", num_classes=10, in_channels=1, image_size=28, seed=0).eval()
    sparsity.prune(model, 0.1, "magnitude", "layerwise")
    deployed = deploy.to_sparse(model, where="all", kxk=True, fast_pool=fast_pool)
    assert deployed.fused_layers == ["conv1", "conv2"]
    assert isinstance(deployed.pool1, PooledAbove) and deployed.conv1.epilogue == "relu_pool"
    x = torch.randn(9, 1, 28, 28)
    with torch.inference_mode():
        ref = model(x)
        assert torch.allclose(deployed(x), ref, atol=ATOL)
        with native.disabled():  # the torch path applies the same epilogue
            assert torch.allclose(deployed(x), ref, atol=ATOL)
    assert set(deployed.state_dict()) == set(model.state_dict())
    back = deploy.to_dense(deployed)
    assert isinstance(back.pool1, nn.MaxPool2d) and not hasattr(back, "fused_layers")
    with torch.inference_mode():
        assert torch.allclose(back(x), ref, atol=ATOL)
    unfused = deploy.to_sparse(model, where="all", kxk=True, fuse=False)
    assert unfused.fused_layers == [] and type(unfused.pool1) is nn.MaxPool2d


def test_fusion_only_where_the_graph_allows_it():
    x = torch.randn(2, 3, 8, 8)
    for model, expected in [(ConvPoolThenReLU(), ["conv"]), (SharedPool(), []),
                            (Branching(), []), (Untraceable(), [])]:
        model = prune_all(model)
        deployed = deploy.to_sparse(model, where="all", kxk=True)
        assert deployed.fused_layers == expected, type(model).__name__
        with torch.inference_mode():
            assert torch.allclose(deployed(x), model(x), atol=ATOL)
    plain = prune_all(ConvPoolThenReLU())
    assert fuse_conv_pool(plain) == []  # a dense Conv2d is never fused


# ---------------------------------------------------------------- the build


def test_build_is_cached_and_a_missing_compiler_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("UNDERBUDGET_CACHE", str(tmp_path))
    native.reset()
    try:
        if native.available():
            built = list((tmp_path / "native").glob("ub_kernels_*.so"))
            assert len(built) == 1 and not list((tmp_path / "native").glob("tmp*"))
            stamp = built[0].stat().st_mtime_ns
            native.reset()
            assert native.available() and built[0].stat().st_mtime_ns == stamp  # reused
        monkeypatch.setenv("UNDERBUDGET_CACHE", str(tmp_path / "other"))
        monkeypatch.setenv("UNDERBUDGET_CC", "no-such-compiler")
        native.reset()
        assert not native.available() and "no C compiler" in native.unavailable_reason()
        layer = deploy.SparseLinear.from_dense(prune_all(nn.Linear(20, 7)))
        x = torch.randn(5, 20)
        with torch.inference_mode():
            assert torch.allclose(layer(x), F.linear(x, layer.dense_weight(), layer.bias),
                                  atol=ATOL)
        monkeypatch.setenv("UNDERBUDGET_CC", "false")  # a compiler that fails
        native.reset()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert not native.available()
        assert any("native kernels unavailable" in str(w.message) for w in caught)
        assert not list((tmp_path / "other" / "native").glob("*"))  # nothing half-written
        monkeypatch.delenv("UNDERBUDGET_CC")
        monkeypatch.setenv("UNDERBUDGET_NATIVE", "0")
        native.reset()
        assert not native.available() and "UNDERBUDGET_NATIVE=0" in native.unavailable_reason()
    finally:
        monkeypatch.undo()
        native.reset()


@needs_native
def test_kernels_refuse_what_they_cannot_compute():
    w = sparse_weight((4, 6), 0.5)
    crow, col, values = csr_parts(w)
    with pytest.raises(ValueError, match="float32"):
        native.csr_linear(torch.randn(3, 6, dtype=torch.float64), crow, col, values, None, 4)
    with pytest.raises(ValueError, match="on meta"):
        native.csr_linear(torch.randn(3, 6, device="meta"), crow, col, values, None, 4)
    with pytest.raises(ValueError, match="torch.int32"):  # int64 indices would be misread
        native.csr_linear(torch.randn(3, 6), crow.long(), col, values, None, 4)
