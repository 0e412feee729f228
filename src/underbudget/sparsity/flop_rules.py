"""How one forward pass of a module or a tensor function is counted (see ``sparsity.cost``).

Three kinds of rule:

- leaf modules without weights of their own (normalisation, activations, pooling, softmax):
  dense element-wise FLOPs from the output (or input) size;
- ``nn.MultiheadAttention``: its projections as weight uses (so that pruned projection
  weights save their multiply-adds) and its score and value matmuls as activation MACs;
- tensor functions seen while the model runs (:class:`FunctionCounter`):
  ``F.scaled_dot_product_attention`` and matmuls between two activations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus,
)
SOFTMAX = (nn.Softmax, nn.LogSoftmax)
POOLS = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)
ADAPTIVE = (nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)
FREE = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity, nn.Flatten, nn.Unflatten,
)

#: FLOPs per softmax element: exponential, running sum, division
SOFTMAX_FLOPS = 3
#: FLOPs per attention score besides its matmul: the 1/sqrt(d) scale and the softmax
SCORE_FLOPS = 1 + SOFTMAX_FLOPS


def leaf_flops(module: nn.Module, inp: Tensor | None, out: Tensor | None) -> int | None:
    """Dense FLOPs of a weightless leaf module (None when there is no rule for it)."""
    if isinstance(module, FREE):
        return 0
    if out is None:
        return None
    if isinstance(module, NORMS):  # inference affine form: one multiply, one add
        return 2 * out.numel()
    if isinstance(module, ACTIVATIONS):
        return out.numel()
    if isinstance(module, SOFTMAX):
        return SOFTMAX_FLOPS * out.numel()
    if isinstance(module, POOLS):
        k = module.kernel_size
        k = (k,) * (out.dim() - 2) if isinstance(k, int) else tuple(k)
        return out.numel() * math.prod(k)
    if isinstance(module, ADAPTIVE) and inp is not None:
        return inp.numel()
    return None


@dataclass
class AttentionCount:
    """What one call of an ``nn.MultiheadAttention`` did (totals over the batch)."""

    row_uses: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # param -> blocks
    bias_flops: int = 0
    activation_macs: int = 0
    elementwise_flops: int = 0


def _arg(args: tuple, kwargs: dict, i: int, name: str) -> Any:
    return args[i] if len(args) > i else kwargs.get(name)


def mha_count(module: nn.MultiheadAttention, args: tuple, kwargs: dict) -> AttentionCount:
    """Projections, biases, score/value matmuls and softmax of one attention call.

    ``row_uses`` maps a local parameter name to ``(rows, uses)`` blocks along its first
    dimension: every weight of such a block does ``uses`` multiply-adds. The packed
    ``in_proj_weight`` has three blocks (query rows used once per query position, key and
    value rows once per key position).
    """
    query, key, value = (_arg(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value")))
    e = module.embed_dim
    if query.dim() == 3:
        batch = query.shape[0] if module.batch_first else query.shape[1]
    else:
        batch = 1
    lq = query.numel() // e  # query positions over the batch
    lk = key.numel() // module.kdim
    lv = value.numel() // module.vdim
    count = AttentionCount()
    if module._qkv_same_embed_dim:
        count.row_uses["in_proj_weight"] = [(e, lq), (e, lk), (e, lv)]
    else:
        count.row_uses["q_proj_weight"] = [(e, lq)]
        count.row_uses["k_proj_weight"] = [(e, lk)]
        count.row_uses["v_proj_weight"] = [(e, lv)]
    count.row_uses["out_proj.weight"] = [(e, lq)]
    if module.in_proj_bias is not None:
        count.bias_flops += e * (lq + lk + lv)
    if module.out_proj.bias is not None:
        count.bias_flops += e * lq
    keys = lk // batch + (module.bias_k is not None) + bool(module.add_zero_attn)
    scores = module.num_heads * lq * keys  # over heads and batch
    count.activation_macs = 2 * lq * keys * e  # Q K^T and A V, head dim e / heads each
    count.elementwise_flops = SCORE_FLOPS * scores
    return count


def sdpa_count(args: tuple, kwargs: dict) -> tuple[int, int]:
    """(MACs, element-wise FLOPs) of one ``F.scaled_dot_product_attention`` call."""
    q, k, v = (_arg(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value")))
    rows = q.numel() // max(q.shape[-1], 1)  # batch x heads x query positions
    scores = rows * k.shape[-2]
    return scores * (q.shape[-1] + v.shape[-1]), SCORE_FLOPS * scores


def _param_like(t: Any) -> bool:
    """A parameter or a view of one (``w.t()``): a weight, not an activation."""
    return isinstance(t, nn.Parameter) or isinstance(getattr(t, "_base", None), nn.Parameter)


_MATMULS = {torch.matmul, torch.mm, torch.bmm, Tensor.matmul, Tensor.mm, Tensor.bmm,
            Tensor.__matmul__}


class FunctionCounter(TorchFunctionMode):
    """Counts attention and activation matmuls called by the running model.

    ``on_count(macs, elementwise)`` receives each counted call; ``on_weight()`` a matmul
    with a weight operand outside Conv/Linear modules (not counted here). Calls made inside
    an ``nn.MultiheadAttention`` are left to its module rule (``suspended`` > 0).
    """

    def __init__(self, on_count: Callable[[int, int], None], on_weight: Callable[[], None]):
        super().__init__()
        self.on_count, self.on_weight = on_count, on_weight
        self.suspended = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.suspended:
            return out
        if func is F.scaled_dot_product_attention:
            self.on_count(*sdpa_count(args, kwargs))
        elif (func in _MATMULS or func is Tensor.__rmatmul__) and isinstance(out, Tensor):
            a, b = args[:2] if func is not Tensor.__rmatmul__ else (args[1], args[0])
            if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
                return out
            if _param_like(a) or _param_like(b):
                self.on_weight()
            else:
                self.on_count(out.numel() * a.shape[-1], 0)
        return out
