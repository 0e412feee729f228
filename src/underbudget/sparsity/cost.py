"""What a (sparse) model costs: parameters, nonzeros, FLOPs of one forward pass, bytes.

FLOP convention (one sample, one forward pass, eval mode; 1 multiply-add = **2 FLOPs**):

- **Weight MACs** (``macs_dense``/``macs_nonzero`` minus ``macs_activation``), counted exactly
  from forward hooks on a dummy input: each weight of a Conv or Linear layer is used a known
  number of times (output positions for a conv, input positions for a transposed conv, rows
  for a linear layer); ``nn.MultiheadAttention``'s query/key/value and output projections
  likewise (query rows once per query position, key and value rows once per key position).
  Nonzero-aware counts use only the weights that are nonzero (and kept by the masks): each
  zero weight saves exactly its multiply-adds.
- **Activation MACs** (``macs_activation``): matmuls whose operands are both activations,
  which weight sparsity does not reduce: the attention scores ``Q K^T`` and the weighted
  values ``A V`` of ``nn.MultiheadAttention`` and of every ``F.scaled_dot_product_attention``
  call (all positions, causal masks ignored), and ``torch.matmul``/``@``/``bmm``/``mm``
  between two activations. They are in both ``macs_dense`` and ``macs_nonzero``.
- **Bias adds** (``flops_bias``): 1 FLOP per output element of every biased Conv/Linear
  layer and attention projection.
- **Element-wise** (``flops_elementwise``), dense: normalisation 2 FLOPs per output element
  (inference affine form), activations 1 per output element, softmax 3 per element
  (exponential, sum, division), each attention score 4 (its 1/sqrt(d) scale and softmax),
  pooling one per window element, adaptive pooling one per input element; dropout, identity
  and reshapes are free.
- ``flops_dense = 2 * macs_dense + flops_bias + flops_elementwise`` (``flops_nonzero`` the
  same with ``macs_nonzero``).

Not counted: residual additions and other functional element-wise ops, attention masks,
averaging the returned attention weights over heads. Leaf modules with no rule are listed
under ``uncounted_modules``, as are modules that multiply by a weight outside Conv/Linear
(``x @ w``); prunable weights never used by a counted layer are listed under
``uncounted_weights``.

``torch.utils.flop_counter.FlopCounterMode`` counts the same matmuls and convolutions at
2 FLOPs per MAC (zeros included) and nothing element-wise, so it is the dense reference for
``2 * macs_dense``. On CPU it sees attention only through the math backend
(``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``); its fused CPU kernel has no formula.

Bytes: ``bytes_dense`` stores every parameter at ``bits``; ``bytes_bitmask`` stores the
nonzero values of prunable tensors plus one bit per position; ``bytes_csr`` stores nonzero
values plus a 32-bit column index each and a 32-bit pointer per row (first dimension) plus
one; ``bytes_sparse`` takes the cheapest of dense/bitmask/CSR per tensor. Non-prunable
parameters are stored dense in every encoding. Buffers (e.g. BatchNorm statistics) are not
counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from underbudget.errors import ConfigError
from underbudget.sparsity.flop_rules import FunctionCounter, leaf_flops, mha_count
from underbudget.sparsity.mask import MaskSet
from underbudget.sparsity.targets import prunable_parameters, unwrap


@dataclass
class FlopProfile:
    """Per-weight use counts and dense FLOPs of other work, measured once per input shape.

    ``weight_uses`` is the MACs per weight per sample; where the rows of one parameter are
    used unequally (the packed ``in_proj_weight`` of cross-attention), ``row_uses`` holds
    ``(rows, uses)`` blocks along its first dimension and ``weight_uses`` the average.
    """

    weight_uses: dict[str, int | float] = field(default_factory=dict)
    row_uses: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    bias_flops: dict[str, int] = field(default_factory=dict)  # module -> bias adds
    activation_macs: dict[str, int] = field(default_factory=dict)  # module -> act x act MACs
    elementwise_flops: dict[str, int] = field(default_factory=dict)  # module -> dense FLOPs
    uncounted: list[str] = field(default_factory=list)

    @property
    def other_flops(self) -> dict[str, int]:
        """Per module, the dense FLOPs that weight sparsity leaves unchanged (bias excluded):
        element-wise work plus 2 x activation MACs."""
        out = dict(self.elementwise_flops)
        for name, macs in self.activation_macs.items():
            out[name] = out.get(name, 0) + 2 * macs
        return out

    def count(self, model: nn.Module, masks: MaskSet | None = None) -> dict[str, Any]:
        """Dense and nonzero-aware MACs/FLOPs of ``model`` (weights zeroed by ``masks`` too)."""
        model = unwrap(model)
        layers = {}
        w_dense = w_nonzero = 0
        for name, uses in self.weight_uses.items():
            w = model.get_parameter(name)
            mask = masks[name] if masks is not None and name in masks else None
            blocks = self.row_uses.get(name)
            if blocks is None:
                dense, nonzero = w.numel() * uses, _nonzeros(w, mask) * uses
            else:
                dense = nonzero = 0
                start, per_row = 0, w[0].numel()
                for rows, n in blocks:
                    part = slice(start, start + rows)
                    dense += rows * per_row * n
                    nonzero += _nonzeros(w[part], None if mask is None else mask[part]) * n
                    start += rows
            dense, nonzero = int(round(dense)), int(round(nonzero))
            layers[name] = {
                "macs_dense": dense,
                "macs_nonzero": nonzero,
                "flops_dense": 2 * dense,
                "flops_nonzero": 2 * nonzero,
            }
            w_dense += dense
            w_nonzero += nonzero
        act = sum(self.activation_macs.values())
        bias = sum(self.bias_flops.values())
        elementwise = sum(self.elementwise_flops.values())
        return {
            "macs_dense": w_dense + act,
            "macs_nonzero": w_nonzero + act,
            "macs_activation": act,
            "flops_bias": bias,
            "flops_elementwise": elementwise,
            "flops_dense": 2 * (w_dense + act) + bias + elementwise,
            "flops_nonzero": 2 * (w_nonzero + act) + bias + elementwise,
            "layers": layers,
        }


def _nonzeros(w: Tensor, mask: Tensor | None) -> int:
    w = w.detach()
    nz = w != 0
    if mask is not None:
        nz &= mask.to(nz.device)
    return int(nz.count_nonzero())


def _example(model: nn.Module, input_shape: Any) -> Tensor:
    if isinstance(input_shape, Tensor):
        return input_shape
    try:
        shape = tuple(int(s) for s in input_shape)
    except TypeError:
        raise ConfigError(
            f"input_shape must be a shape like (3, 32, 32) (no batch) or an example tensor, "
            f"got {input_shape!r}"
        ) from None
    ref = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = ref.dtype if ref is not None else torch.float32
    device = ref.device if ref is not None else torch.device("cpu")
    return torch.zeros((1, *shape), dtype=dtype, device=device)


#: layers whose weights are counted; children they own (fake quantizers) are part of them
_WEIGHT_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


class _Recorder:
    """Forward hooks that fill a :class:`FlopProfile` (totals, divided by the batch later)."""

    def __init__(self, model: nn.Module):
        self.prof = FlopProfile()
        self.names = {id(p): n for n, p in model.named_parameters()}
        self.root = type(model).__name__
        self.stack: list[str] = []
        self.counted: set[str] = set()  # modules in which a tensor function was counted
        self.functions = FunctionCounter(self.on_function, self.on_weight_matmul)

    def _add(self, table: dict, key: str, value: float) -> None:
        table[key] = table.get(key, 0) + value

    def _uncounted(self, name: str) -> None:
        if name not in self.prof.uncounted:
            self.prof.uncounted.append(name)

    def _here(self) -> str:
        return self.stack[-1] if self.stack else self.root

    def on_function(self, macs: int, elementwise: int) -> None:
        here = self._here()
        self.counted.add(here)
        self._add(self.prof.activation_macs, here, macs)
        if elementwise:
            self._add(self.prof.elementwise_flops, here, elementwise)

    def on_weight_matmul(self) -> None:
        self._uncounted(self._here())

    def enter(self, module: nn.Module, name: str) -> None:
        self.stack.append(name or self.root)
        if isinstance(module, nn.MultiheadAttention):
            self.functions.suspended += 1

    def leave(self, module: nn.Module, name: str, args: tuple, kwargs: dict, output: Any):
        self.stack.pop()
        name = name or self.root
        if isinstance(module, nn.MultiheadAttention):
            self.functions.suspended -= 1
            self.attention(module, name, args, kwargs)
        elif next(module.children(), None) is None or isinstance(module, _WEIGHT_LAYERS):
            self.leaf(module, name, args, output)  # a layer's own children: its quantizers

    def attention(self, module: nn.MultiheadAttention, name: str, args, kwargs) -> None:
        count = mha_count(module, args, kwargs)
        for local, blocks in count.row_uses.items():
            param = module.get_parameter(local)
            key = self.names.get(id(param), f"{name}.{local}")
            self._add(self.prof.weight_uses, key,
                      sum(rows * uses for rows, uses in blocks) / param.shape[0])
            old = self.prof.row_uses.get(key, [(rows, 0) for rows, _ in blocks])
            self.prof.row_uses[key] = [(r, u + v) for (r, u), (_, v) in zip(old, blocks)]
        self._add(self.prof.bias_flops, name, count.bias_flops)
        self._add(self.prof.activation_macs, name, count.activation_macs)
        self._add(self.prof.elementwise_flops, name, count.elementwise_flops)

    def leaf(self, module: nn.Module, name: str, args: tuple, output: Any) -> None:
        out = output if isinstance(output, Tensor) else None
        inp = args[0] if args and isinstance(args[0], Tensor) else None
        if isinstance(module, nn.modules.conv._ConvNd | nn.Linear):
            if inp is None or out is None:
                self._uncounted(name)
                return
            if isinstance(module, nn.Linear):  # each weight: once per input row
                uses = inp.numel() // max(module.in_features, 1)
            elif isinstance(module, nn.modules.conv._ConvTransposeNd):  # once per input position
                uses = inp.numel() // max(module.in_channels, 1)
            else:  # once per output position
                uses = out.numel() // max(module.out_channels, 1)
            self._add(self.prof.weight_uses, self.names.get(id(module.weight), f"{name}.weight"),
                      uses)
            if getattr(module, "bias", None) is not None:
                self._add(self.prof.bias_flops, name, out.numel())
            return
        flops = leaf_flops(module, inp, out)
        if flops is None and name not in self.counted:
            self._uncounted(name)
        elif flops:
            self._add(self.prof.elementwise_flops, name, flops)

    def per_sample(self, batch: int) -> FlopProfile:
        prof = self.prof
        for table in (prof.bias_flops, prof.activation_macs, prof.elementwise_flops):
            for key in table:
                table[key] //= batch
        for key, uses in prof.weight_uses.items():
            uses = uses / batch
            prof.weight_uses[key] = int(uses) if float(uses).is_integer() else uses
        for key, blocks in prof.row_uses.items():
            prof.row_uses[key] = [(rows, uses // batch) for rows, uses in blocks]
        return prof


@torch.no_grad()
def profile_flops(model: nn.Module, input_shape: Any) -> FlopProfile:
    """Run one dummy sample through ``model`` in eval mode and record what every layer does.

    ``input_shape`` excludes the batch dimension, or is an example input (its first dimension
    is the batch; counts are divided by it). PyTorch's fused attention fast path is turned off
    for the pass so that every submodule of a transformer layer runs (and is counted).
    """
    model = unwrap(model)
    x = _example(model, input_shape)
    batch = x.shape[0] if x.dim() > 0 else 1
    rec = _Recorder(model)
    inside_mha = {
        id(sub)
        for m in model.modules() if isinstance(m, (nn.MultiheadAttention, *_WEIGHT_LAYERS))
        for sub in m.modules() if sub is not m
    }  # attention: counted by its rule; a Conv/Linear's children (quantizers): part of it
    handles = []
    for mod_name, module in model.named_modules():
        if id(module) in inside_mha:  # its parameters are counted by the attention rule
            continue
        handles.append(module.register_forward_pre_hook(
            lambda m, a, _n=mod_name: rec.enter(m, _n)))
        handles.append(module.register_forward_hook(
            lambda m, a, k, o, _n=mod_name: rec.leave(m, _n, a, k, o), with_kwargs=True))
    was_training = model.training
    fastpath = torch.backends.mha.get_fastpath_enabled()
    model.eval()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with rec.functions:
            model(x)
    except Exception as exc:
        raise ConfigError(
            f"cannot count FLOPs: the model failed on an input of shape {tuple(x.shape)} "
            f"({type(exc).__name__}: {exc}); pass the per-sample input_shape, e.g. (3, 32, 32)"
        ) from exc
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        model.train(was_training)
        for h in handles:
            h.remove()
    return rec.per_sample(batch)


def _tensor_bytes(numel: int, nnz: int, rows: int, bits: int) -> dict[str, float]:
    dense = numel * bits / 8
    bitmask = nnz * bits / 8 + math.ceil(numel / 8)
    csr = nnz * (bits + 32) / 8 + (rows + 1) * 4
    return {"dense": dense, "bitmask": bitmask, "csr": csr, "best": min(dense, bitmask, csr)}


def cost(
    model: nn.Module,
    input_shape: Any,
    masks: MaskSet | None = None,
    bits: int = 32,
    profile: FlopProfile | None = None,
) -> dict[str, Any]:
    """Parameters, nonzeros, dense and nonzero FLOPs of one forward pass, and bytes.

    Nonzeros are measured from the weights (a weight counts when it is nonzero and kept by
    ``masks``). Prunable layers are the masks' parameters, or the default targets without
    masks. See the module docstring for the FLOP and byte conventions.
    """
    model = unwrap(model)
    profile = profile or profile_flops(model, input_shape)
    if masks is not None:
        prunable = masks.names()
    else:
        try:
            prunable = list(prunable_parameters(model))
        except ConfigError:
            prunable = []
    flops = profile.count(model, masks)
    params = nonzeros = 0
    prunable_numel = prunable_nnz = 0
    b_dense = b_bitmask = b_csr = b_best = 0.0
    layers: dict[str, dict[str, Any]] = {}
    for name, p in model.named_parameters():
        mask = masks[name] if masks is not None and name in masks else None
        nnz = _nonzeros(p, mask)
        params += p.numel()
        nonzeros += nnz
        sizes = _tensor_bytes(p.numel(), nnz, p.shape[0] if p.dim() else 1, bits)
        b_dense += sizes["dense"]
        if name in prunable:
            prunable_numel += p.numel()
            prunable_nnz += nnz
            b_bitmask += sizes["bitmask"]
            b_csr += sizes["csr"]
            b_best += sizes["best"]
        else:
            b_bitmask += sizes["dense"]
            b_csr += sizes["dense"]
            b_best += sizes["dense"]
        if name in prunable or name in flops["layers"]:
            entry = {
                "params": p.numel(),
                "nonzeros": nnz,
                "density": nnz / p.numel() if p.numel() else 1.0,
                "prunable": name in prunable,
            }
            entry.update(flops["layers"].get(name, {}))
            layers[name] = entry
    return {
        "params": params,
        "nonzeros": nonzeros,
        "density_all": nonzeros / params if params else 1.0,
        "prunable": prunable_numel,
        "prunable_nonzeros": prunable_nnz,
        "density": prunable_nnz / prunable_numel if prunable_numel else 1.0,
        "macs_dense": flops["macs_dense"],
        "macs_nonzero": flops["macs_nonzero"],
        "flops_dense": flops["flops_dense"],
        "flops_nonzero": flops["flops_nonzero"],
        "macs_activation": flops["macs_activation"],
        "flops_bias": flops["flops_bias"],
        "flops_elementwise": flops["flops_elementwise"],
        "bits": bits,
        "bytes_dense": b_dense,
        "bytes_bitmask": b_bitmask,
        "bytes_csr": b_csr,
        "bytes_sparse": b_best,
        "layers": layers,
        "uncounted_modules": list(profile.uncounted),
        "uncounted_weights": [n for n in prunable if n not in profile.weight_uses],
    }


def training_flops(forward_flops: float, n_samples: int, factor: float = 3.0) -> float:
    """FLOPs of training on ``n_samples`` samples: ``factor`` x forward (forward + 2x backward).

    Pass the nonzero-aware forward FLOPs for a sparse run (sum per phase when density moves).
    """
    return float(factor) * float(forward_flops) * int(n_samples)
