"""What a (sparse) model costs: parameters, nonzeros, FLOPs of one forward pass, bytes.

FLOP convention (one sample, one forward pass):

- Conv and Linear are counted exactly from forward hooks on a dummy input: each weight is
  used a known number of times (output positions for a conv, input positions for a transposed
  conv, rows for a linear layer); one multiply-add counts as **2 FLOPs**; the bias adds
  **1 FLOP per output element**. Nonzero-aware counts use only the weights that are nonzero
  (and kept by the masks): each zero weight saves exactly its multiply-adds.
- Other modules are counted densely: normalisation 2 FLOPs per output element (inference
  affine form), element-wise activations 1 per output element, pooling one per window
  element, adaptive pooling one per input element; dropout, identity and reshapes are free.
  Modules with no rule (and functional ops such as residual additions) are not counted and
  are listed under ``uncounted_modules``; prunable weights used outside Conv/Linear modules
  are listed under ``uncounted_weights``.

``torch.utils.flop_counter`` counts zeros as work; it agrees with ``macs_dense * 2`` for conv
and linear layers and is only a dense reference.

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
from underbudget.sparsity.mask import MaskSet
from underbudget.sparsity.targets import prunable_parameters, unwrap

_NORMS = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
_ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Softplus,
)
_POOLS = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)
_ADAPTIVE = (
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
)
_FREE = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
)


@dataclass
class FlopProfile:
    """Per-weight use counts and dense FLOPs of other layers, measured once per input shape."""

    weight_uses: dict[str, int] = field(default_factory=dict)  # MACs per weight per sample
    bias_flops: dict[str, int] = field(default_factory=dict)  # module -> bias adds
    other_flops: dict[str, int] = field(default_factory=dict)  # module -> dense FLOPs
    uncounted: list[str] = field(default_factory=list)

    def count(self, model: nn.Module, masks: MaskSet | None = None) -> dict[str, Any]:
        """Dense and nonzero-aware MACs/FLOPs of ``model`` (weights zeroed by ``masks`` too)."""
        model = unwrap(model)
        layers = {}
        macs_dense = macs_nonzero = 0
        for name, uses in self.weight_uses.items():
            w = model.get_parameter(name)
            nnz = _nonzeros(w, masks[name] if masks is not None and name in masks else None)
            dense = w.numel() * uses
            layers[name] = {
                "macs_dense": dense,
                "macs_nonzero": nnz * uses,
                "flops_dense": 2 * dense,
                "flops_nonzero": 2 * nnz * uses,
            }
            macs_dense += dense
            macs_nonzero += nnz * uses
        fixed = sum(self.bias_flops.values()) + sum(self.other_flops.values())
        return {
            "macs_dense": macs_dense,
            "macs_nonzero": macs_nonzero,
            "flops_dense": 2 * macs_dense + fixed,
            "flops_nonzero": 2 * macs_nonzero + fixed,
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


@torch.no_grad()
def profile_flops(model: nn.Module, input_shape: Any) -> FlopProfile:
    """Run one dummy sample through ``model`` in eval mode and record what every layer does.

    ``input_shape`` excludes the batch dimension, or is an example input (its first dimension
    is the batch; counts are divided by it).
    """
    model = unwrap(model)
    x = _example(model, input_shape)
    batch = x.shape[0] if x.dim() > 0 else 1
    names = {id(p): n for n, p in model.named_parameters()}
    prof = FlopProfile()
    handles = []

    def hook(module: nn.Module, args: tuple, output: Any, mod_name: str) -> None:
        out = output if isinstance(output, Tensor) else None
        inp = args[0] if args and isinstance(args[0], Tensor) else None
        if isinstance(module, nn.modules.conv._ConvNd | nn.Linear):
            w = module.weight
            if isinstance(module, nn.Linear):  # each weight: once per input row
                uses = inp.numel() // max(module.in_features, 1)
            elif isinstance(module, nn.modules.conv._ConvTransposeNd):  # once per input position
                uses = inp.numel() // max(module.in_channels, 1)
            else:  # once per output position
                uses = out.numel() // max(module.out_channels, 1)
            key = names.get(id(w), f"{mod_name}.weight")
            prof.weight_uses[key] = prof.weight_uses.get(key, 0) + uses // batch
            if getattr(module, "bias", None) is not None and out is not None:
                prof.bias_flops[mod_name] = prof.bias_flops.get(mod_name, 0) + out.numel() // batch
            return
        if isinstance(module, _FREE):
            return
        flops = None
        if isinstance(module, _NORMS) and out is not None:
            flops = 2 * out.numel()
        elif isinstance(module, _ACTIVATIONS) and out is not None:
            flops = out.numel()
        elif isinstance(module, _POOLS) and out is not None:
            k = module.kernel_size
            k = (k,) * (out.dim() - 2) if isinstance(k, int) else tuple(k)
            flops = out.numel() * math.prod(k)
        elif isinstance(module, _ADAPTIVE) and inp is not None:
            flops = inp.numel()
        if flops is None:
            if mod_name not in prof.uncounted:
                prof.uncounted.append(mod_name)
            return
        prof.other_flops[mod_name] = prof.other_flops.get(mod_name, 0) + flops // batch

    for mod_name, module in model.named_modules():
        if next(module.children(), None) is None and mod_name:
            handles.append(
                module.register_forward_hook(lambda m, a, o, _n=mod_name: hook(m, a, o, _n))
            )
    was_training = model.training
    model.eval()
    try:
        model(x)
    except Exception as exc:
        raise ConfigError(
            f"cannot count FLOPs: the model failed on an input of shape {tuple(x.shape)} "
            f"({type(exc).__name__}: {exc}); pass the per-sample input_shape, e.g. (3, 32, 32)"
        ) from exc
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return prof


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
