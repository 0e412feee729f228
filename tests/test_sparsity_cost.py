"""Parameter, nonzero, FLOP and byte counts on a hand-computed toy network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from underbudget import sparsity


def toy():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),  # 72 weights, 4 biases; 5x5 output
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(100, 3),  # 300 weights, 3 biases
    )


def sparse_toy():
    model = toy()
    conv = torch.zeros(72, dtype=torch.bool)
    conv[:18] = True
    fc = torch.zeros(300, dtype=torch.bool)
    fc[::10] = True
    masks = sparsity.MaskSet({"0.weight": conv.reshape(4, 2, 3, 3), "3.weight": fc.reshape(3, 100)})
    masks.apply(model)
    return model, masks


def test_dense_counts_by_hand():
    c = sparsity.cost(toy(), (2, 5, 5))
    conv_macs = 4 * 2 * 9 * 25  # every output position uses all 18 weights of its filter
    fc_macs = 300
    assert c["macs_dense"] == conv_macs + fc_macs
    # 2 FLOPs per multiply-add, one add per bias and output, ReLU one per element
    assert c["flops_dense"] == 2 * (conv_macs + fc_macs) + 4 * 25 + 3 + 100
    assert c["params"] == 72 + 4 + 300 + 3
    assert c["bytes_dense"] == 4 * (72 + 4 + 300 + 3)


def test_nonzero_aware_counts_by_hand():
    model, masks = sparse_toy()
    c = sparsity.cost(model, (2, 5, 5), masks)
    assert c["macs_nonzero"] == 18 * 25 + 30
    assert c["flops_nonzero"] == 2 * (18 * 25 + 30) + 100 + 3 + 100
    assert c["prunable"] == 372 and c["prunable_nonzeros"] == 48
    assert c["nonzeros"] == 48 + 7
    assert c["layers"]["0.weight"]["flops_nonzero"] == 2 * 18 * 25
    bits = 32
    # bitmask: values + one bit per position; CSR: values + int32 index, int32 row pointers
    assert c["bytes_bitmask"] == 18 * 4 + 9 + 30 * 4 + 38 + 4 * 7
    assert c["bytes_csr"] == 18 * (bits + 32) / 8 + 5 * 4 + 30 * 8 + 4 * 4 + 4 * 7
    assert c["bytes_sparse"] == min(18 * 4 + 9, 18 * 8 + 20) + min(30 * 4 + 38, 30 * 8 + 16) + 28


def test_masks_count_even_before_they_are_applied():
    model, masks = sparse_toy()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    assert sparsity.cost(model, (2, 5, 5), masks)["macs_nonzero"] == 18 * 25 + 30


def reference_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FlopCounterMode's total: 2 FLOPs per MAC of every matmul and convolution, nothing
    element-wise. On CPU it sees attention only through the math SDPA backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def cnn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, groups=4, padding=2, dilation=2, bias=False), nn.BatchNorm2d(8),
        nn.ReLU(), nn.ConvTranspose2d(8, 4, 2, stride=2), nn.Conv2d(4, 6, 3, stride=2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5),
    )


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 32),
                         nn.Tanh(), nn.Linear(32, 10, bias=False))


class MHABlock(nn.Module):
    """Pre-norm transformer block on tokens (L, d), attention by nn.MultiheadAttention."""

    def __init__(self, d: int = 16, heads: int = 4):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        y = self.ln1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TinyViT(nn.Module):
    """Patch embedding, one MHA block, mean-pooled linear head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 4, stride=4)
        self.block = MHABlock()
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.block(self.embed(x).flatten(2).transpose(1, 2)).mean(1))


class SDPABlock(nn.Module):
    """Attention by F.scaled_dot_product_attention between qkv and output projections."""

    def __init__(self, d: int = 16, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.ReLU(),
                                 nn.Linear(2 * d, d))

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(y.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(x)


MODELS = {
    "cnn": (cnn, (3, 16, 16)),
    "mlp": (mlp, (1, 8, 8)),
    "vit_mha": (TinyViT, (3, 16, 16)),
    "sdpa_block": (SDPABlock, (10, 16)),
    "encoder_layer": (lambda: nn.TransformerEncoderLayer(16, 4, 32, 0.0, batch_first=True),
                      (10, 16)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_dense_macs_agree_with_torch_flop_counter(name):
    make, shape = MODELS[name]
    torch.manual_seed(0)
    model = make().eval()
    ref = reference_flops(model, torch.randn(1, *shape))
    c = sparsity.cost(model, shape)
    assert 2 * c["macs_dense"] == ref  # like with like: matmuls and convs only
    assert c["uncounted_modules"] == [] and c["uncounted_weights"] == []
    # our total adds bias adds and element-wise work on top, nothing else
    assert c["flops_dense"] == ref + c["flops_bias"] + c["flops_elementwise"]


def test_attention_block_flops_by_hand():
    d, h, n = 16, 4, 10  # width, heads, tokens
    c = sparsity.cost(MHABlock(d, h), (n, d))
    weight_macs = 3 * d * d * n + d * d * n + 2 * d * 4 * d * n  # in_proj, out_proj, MLP
    attention_macs = 2 * n * n * d  # Q K^T and A V over all heads
    bias = 3 * d * n + d * n + 4 * d * n + d * n
    elementwise = 2 * (2 * n * d) + 4 * d * n + 4 * h * n * n  # 2 LNs, GELU, scale+softmax
    assert c["macs_activation"] == attention_macs
    assert c["macs_dense"] == weight_macs + attention_macs
    assert c["flops_bias"] == bias and c["flops_elementwise"] == elementwise
    assert c["flops_dense"] == 2 * (weight_macs + attention_macs) + bias + elementwise


def _random_masks(model, names, seed=0):
    g = torch.Generator().manual_seed(seed)
    return sparsity.MaskSet({n: torch.rand(model.get_parameter(n).shape, generator=g) < 0.3
                             for n in names})


@pytest.mark.parametrize("name", ["vit_mha", "sdpa_block"])
def test_pruned_attention_projections_keep_the_attention_matmuls(name):
    make, shape = MODELS[name]
    torch.manual_seed(0)
    model = make().eval()
    # every weight matrix (conv kernel, in_proj_weight, Linear weights), LayerNorms not
    masks = _random_masks(model, [n for n, p in model.named_parameters() if p.dim() > 1])
    masks.apply(model)
    tokens, d = 16 if name == "vit_mha" else 10, 16
    c = sparsity.cost(model, shape, masks)
    # weights used once per token (the patch embedding once per patch, the head once)
    uses = {n: 1 if n == "head.weight" else tokens for n in masks}
    nnz_macs = sum(int(masks[n].sum()) * uses[n] for n in masks)
    attention_macs = 2 * tokens * tokens * d  # activation x activation: not reduced
    assert c["macs_activation"] == attention_macs
    assert c["macs_nonzero"] == nnz_macs + attention_macs
    zeros = sum(int((~masks[n]).sum()) * uses[n] for n in masks)
    assert c["flops_dense"] - c["flops_nonzero"] == 2 * zeros
    assert c["flops_dense"] == reference_flops(model, torch.randn(1, *shape)) + (
        c["flops_bias"] + c["flops_elementwise"])
    # readers of the profile's tables (the training-FLOPs meters) get the same dense total
    prof = sparsity.profile_flops(model, shape)
    tables = sum(prof.bias_flops.values()) + sum(prof.other_flops.values())
    weights = sum(u * model.get_parameter(n).numel() for n, u in prof.weight_uses.items())
    assert 2 * weights + tables == c["flops_dense"]


class Cross(nn.Module):
    """Cross-attention from 10 query tokens to 7 memory tokens (packed in_proj_weight)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("memory", torch.randn(1, 7, 16))
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True, add_bias_kv=True)

    def forward(self, x):
        mem = self.memory.expand(x.shape[0], -1, -1)
        return self.attn(x, mem, mem)[0]


def test_cross_attention_counts_query_and_key_rows_apart():
    torch.manual_seed(0)
    model = Cross().eval()
    masks = _random_masks(model, ["attn.in_proj_weight", "attn.out_proj.weight"])
    masks.apply(model)
    c = sparsity.cost(model, (10, 16), masks)
    w = masks["attn.in_proj_weight"]
    keys = 7 + 1  # memory tokens and the learned bias_k / bias_v token
    assert c["macs_activation"] == 2 * 10 * keys * 16
    assert c["macs_dense"] * 2 == reference_flops(model, torch.randn(1, 10, 16))
    expected = (int(w[:16].sum()) * 10 + int(w[16:].sum()) * 7
                + int(masks["attn.out_proj.weight"].sum()) * 10)
    assert c["macs_nonzero"] == expected + c["macs_activation"]


def test_uncounted_modules_are_listed_and_training_flops():
    class Odd(nn.Module):
        def forward(self, x):
            return x * 2

    model = nn.Sequential(nn.Linear(4, 4), Odd())
    c = sparsity.cost(model, (4,))
    assert c["uncounted_modules"] == ["1"]
    assert sparsity.training_flops(100, 10) == 3000
    assert sparsity.training_flops(100, 10, factor=2) == 2000


def test_mask_report_fields():
    model, masks = sparse_toy()
    report = sparsity.mask_report(masks, model, input_shape=(2, 5, 5))
    assert report["density"] == pytest.approx(48 / 372)
    assert report["layer_densities"] == {"0.weight": 0.25, "3.weight": 0.1}
    assert report["nonzeros"] == 48
    assert report["flops_nonzero"] == sparsity.cost(model, (2, 5, 5), masks)["flops_nonzero"]
    assert report["density_all"] == pytest.approx((379 - 324) / 379)
