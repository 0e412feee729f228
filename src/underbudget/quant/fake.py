"""Fake quantization of weights (post-training, simulated in float) and the PTQ pipeline.

Grids (``b`` = bits, ``Qp = 2**(b-1) - 1``):

- **symmetric** (weights, signed activations): ``q = clamp(round(x / s), -Qp, Qp)`` and
  ``x_hat = q * s``; ``2**b - 1`` levels (the most negative code ``-2**(b-1)`` is unused so the
  grid is symmetric and zero is a level). Per-channel weights use ``s = max|w_c| / Qp``.
- **unsigned** (activations that are never negative, e.g. after ReLU):
  ``q = clamp(round(x / s), 0, 2**b - 1)`` with ``s = hi / (2**b - 1)``; ``2**b`` levels.
- **asymmetric** weights (``symmetric=False``): ``s = (hi - lo) / (2**b - 1)`` with the range
  widened to contain 0, integer zero point ``z = round(-lo / s)``; ``2**b`` levels.

In every grid zero is representable exactly, so pruned weights stay exactly 0. Rounding is
``torch.round`` (half to even). Activations are quantized by
:class:`~underbudget.quant.activation.ActivationQuantizer`; :func:`quantize_model` does both.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from underbudget.errors import ConfigError, unknown
from underbudget.quant.activation import calibrate, insert_activation_quantizers
from underbudget.quant.grid import QUANT_LAYERS, check_bits, qmax

_EPS = 1e-12


def _reduce_dims(w: Tensor, axis: int | None) -> tuple[int, ...]:
    if axis is None or w.dim() == 0:
        return tuple(range(w.dim()))
    axis = axis % w.dim()
    return tuple(d for d in range(w.dim()) if d != axis)


def channel_scale(w: Tensor, bits: int, axis: int | None = 0) -> Tensor:
    """Symmetric step per channel, ``max|w_c| / Qp``, shaped to broadcast against ``w``."""
    dims = _reduce_dims(w, axis)
    amax = w.detach().abs().amax(dim=dims, keepdim=True) if dims else w.detach().abs()
    return amax / qmax(bits)


def fake_quantize(w: Tensor, bits: int, axis: int | None = 0, symmetric: bool = True) -> Tensor:
    """Quantize then dequantize ``w`` per channel along ``axis`` (``None``: one scale per tensor).

    Symmetric: ``2**bits - 1`` levels ``{-Qp..Qp} * s_c`` with ``s_c = max|w_c| / Qp``.
    Asymmetric: ``2**bits`` levels over ``[min(w_c, 0), max(w_c, 0)]`` with an integer zero point.
    A channel that is all zero stays zero. Zeros map to exactly zero in both modes. The result
    carries no gradient (train through the grid with :mod:`underbudget.quant.qat`).
    """
    check_bits(bits)
    w_det = w.detach()
    if symmetric:
        scale = channel_scale(w_det, bits, axis)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.clamp(torch.round(w_det / safe), -qmax(bits), qmax(bits))
        return (q * scale).to(w.dtype)
    dims = _reduce_dims(w_det, axis)
    lo = w_det.amin(dim=dims, keepdim=True).clamp(max=0) if dims else w_det.clamp(max=0)
    hi = w_det.amax(dim=dims, keepdim=True).clamp(min=0) if dims else w_det.clamp(min=0)
    levels = 2**bits - 1
    scale = (hi - lo) / levels
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero_point = torch.round(-lo / safe)
    q = torch.clamp(torch.round(w_det / safe) + zero_point, 0, levels)
    return ((q - zero_point) * scale).to(w.dtype)


def default_targets(model: nn.Module) -> list[str]:
    """Names of the ``weight`` of every Conv/Linear layer, in module order."""
    return [
        f"{name}.weight" if name else "weight"
        for name, module in model.named_modules()
        if isinstance(module, QUANT_LAYERS) and getattr(module, "weight", None) is not None
    ]


def _resolve_targets(model: nn.Module, targets: Iterable[str] | None) -> list[str]:
    params = dict(model.named_parameters())
    if targets is None:
        return default_targets(model)
    names = list(targets)
    for name in names:
        if name not in params:
            raise unknown("parameter to quantize", name, params)
    return names


def _weight_stats(original: Tensor, quantized: Tensor, bits: int, axis: int | None) -> dict:
    """Per-layer record: scale statistics, levels used, quantization MSE."""
    scale = channel_scale(original, bits, axis)
    nonzero = scale.flatten()[scale.flatten() > 0]
    codes = torch.round(quantized / scale.clamp_min(_EPS))
    return {
        "shape": list(original.shape),
        "scale_min": float(nonzero.min()) if nonzero.numel() else 0.0,
        "scale_mean": float(nonzero.mean()) if nonzero.numel() else 0.0,
        "scale_max": float(nonzero.max()) if nonzero.numel() else 0.0,
        "levels_used": int(torch.unique(codes).numel()),
        "mse": float((original - quantized).pow(2).mean()),
        "zeros": int((quantized == 0).sum()),
    }


@torch.no_grad()
def _quantize_weights(model: nn.Module, bits: int, targets: Iterable[str] | None) -> dict:
    check_bits(bits)
    params = dict(model.named_parameters())
    stats = {}
    for name in _resolve_targets(model, targets):
        p = params[name]
        axis = 0 if p.dim() > 1 else None
        q = fake_quantize(p, bits, axis=axis)
        stats[name] = _weight_stats(p.detach().clone(), q, bits, axis)
        p.copy_(q)
    return stats


def quantize_weights(
    model: nn.Module, bits: int, targets: Iterable[str] | None = None
) -> nn.Module:
    """Post-training fake quantization of weights IN PLACE (copy the model first if needed).

    ``targets``: parameter names; default every Conv/Linear ``weight`` (biases and norm
    parameters stay in float). Symmetric per-output-channel grid; zeros stay zero.
    """
    _quantize_weights(model, bits, targets)
    return model


@dataclass
class QuantRecord:
    """What :func:`quantize_model` did: bit widths and per-layer statistics."""

    bits: int
    act_bits: int | None = None
    weights: dict[str, dict] = field(default_factory=dict)
    activations: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain JSON-ready dict."""
        return {
            "bits": self.bits,
            "act_bits": self.act_bits,
            "weights": self.weights,
            "activations": self.activations,
        }


def quantize_model(
    model: nn.Module,
    bits: int,
    activations: bool = False,
    calib_data: Iterable[Any] | None = None,
    act_bits: int | None = None,
    method: str = "minmax",
    targets: Iterable[str] | None = None,
) -> tuple[nn.Module, QuantRecord]:
    """Post-training quantization of a deep copy of ``model``; the original is untouched.

    Weights: symmetric per-channel ``bits``. With ``activations=True`` the input of every
    Conv/Linear layer is fake-quantized to ``act_bits`` (default ``bits``) with ranges
    calibrated on ``calib_data`` (``method`` ``"minmax"`` or ``"percentile"``).
    Returns ``(quantized_model, record)``.
    """
    check_bits(bits)
    if activations and calib_data is None:
        raise ConfigError(
            "activation quantization needs calibration data: pass calib_data=<batches of "
            "source training inputs>, or set activations=False"
        )
    act_bits = check_bits(act_bits if act_bits is not None else bits, "activation bits")
    qmodel = copy.deepcopy(model)
    record = QuantRecord(bits=bits, act_bits=act_bits if activations else None)
    record.weights = _quantize_weights(qmodel, bits, targets)
    if activations:
        insert_activation_quantizers(qmodel, act_bits, method=method)
        record.activations = calibrate(qmodel, calib_data)
    return qmodel, record
