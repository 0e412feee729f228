"""Fake quantization of weights and activations (post-training, simulated in float).

Grids (``b`` = bits, ``Qp = 2**(b-1) - 1``):

- **symmetric** (weights, signed activations): ``q = clamp(round(x / s), -Qp, Qp)`` and
  ``x_hat = q * s``; ``2**b - 1`` levels (the most negative code ``-2**(b-1)`` is unused so the
  grid is symmetric and zero is a level). Per-channel weights use ``s = max|w_c| / Qp``.
- **unsigned** (activations that are never negative, e.g. after ReLU):
  ``q = clamp(round(x / s), 0, 2**b - 1)`` with ``s = hi / (2**b - 1)``; ``2**b`` levels.
- **asymmetric** weights (``symmetric=False``): ``s = (hi - lo) / (2**b - 1)`` with the range
  widened to contain 0, integer zero point ``z = round(-lo / s)``; ``2**b`` levels.

In every grid zero is representable exactly, so pruned weights stay exactly 0. Rounding is
``torch.round`` (half to even).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from underbudget.errors import ConfigError, unknown

#: layer types whose weights (and inputs) are quantized by default
QUANT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
CALIBRATION_METHODS = ("minmax", "percentile")
_EPS = 1e-12


def check_bits(bits: int, what: str = "bits") -> int:
    """Validate a bit width (an int from 2 to 16) and return it."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ConfigError(
            f"{what} must be an integer from 2 to 16, got {bits!r}; "
            "use 8, 4, 3 or 2 (leave the model unquantized for full precision)"
        )
    return bits


def qmax(bits: int) -> int:
    """Largest symmetric code ``2**(bits-1) - 1``."""
    return 2 ** (bits - 1) - 1


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


class ActivationQuantizer(nn.Module):
    """Per-tensor fake quantizer for activations, with range calibration.

    Modes: ``observe()`` records ranges (output = input), ``freeze()`` turns them into a
    scale. Unsigned grid (``2**b`` levels on ``[0, hi]``) when every observed value was
    non-negative, else symmetric (``2**b - 1`` levels on ``[-a, a]``, ``a = max(|lo|, |hi|)``).
    ``method``: ``"minmax"`` (running min/max over all batches) or ``"percentile"`` (mean
    over batches of each batch's ``percentile`` / ``100 - percentile`` quantiles, which ignores
    rare outliers). Before calibration the quantizer passes inputs through unchanged.
    """

    def __init__(self, bits: int = 8, method: str = "minmax", percentile: float = 99.99):
        super().__init__()
        self.bits = check_bits(bits, "activation bits")
        if method not in CALIBRATION_METHODS:
            raise unknown("calibration method", method, CALIBRATION_METHODS)
        if not 50.0 < percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {percentile}")
        self.method = method
        self.percentile = float(percentile)
        self.observing = False
        self.register_buffer("scale", torch.zeros(()))
        self.register_buffer("signed", torch.zeros((), dtype=torch.bool))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))
        self._signed = False
        self._calibrated = False
        self._scale = 0.0
        self._reset_observer()
        self.register_load_state_dict_post_hook(_sync_after_load)

    def _sync_flags(self) -> None:
        """Mirror the flag buffers in Python so the forward pass never syncs a device."""
        self._signed = bool(self.signed)
        self._calibrated = bool(self.calibrated)
        self._scale = float(self.scale)

    def _reset_observer(self) -> None:
        self._min = float("inf")
        self._max = float("-inf")
        self._lo_sum = 0.0
        self._hi_sum = 0.0
        self._batches = 0

    @property
    def levels(self) -> int:
        """Number of representable values of the current grid."""
        return 2**self.bits - 1 if self._signed else 2**self.bits

    def set_range(self, scale: float, signed: bool) -> ActivationQuantizer:
        """Fix the grid directly (used when converting a QAT model)."""
        self.scale.fill_(float(scale))
        self.signed.fill_(bool(signed))
        self.calibrated.fill_(True)
        self.observing = False
        self._sync_flags()
        return self

    def observe(self) -> ActivationQuantizer:
        """Start recording ranges; the forward pass returns its input unchanged."""
        self._reset_observer()
        self.observing = True
        return self

    @torch.no_grad()
    def _record(self, x: Tensor) -> None:
        flat = x.detach().flatten().float()
        if flat.numel() == 0:
            return
        self._min = min(self._min, float(flat.min()))
        self._max = max(self._max, float(flat.max()))
        if self.method == "percentile":
            n = flat.numel()
            k_hi = min(n, max(1, int(round(self.percentile / 100.0 * n))))
            k_lo = max(1, n - k_hi + 1)
            self._hi_sum += float(flat.kthvalue(k_hi).values)
            self._lo_sum += float(flat.kthvalue(k_lo).values)
        self._batches += 1

    def freeze(self) -> dict[str, float]:
        """End observation; compute the scale from what was recorded and return the range."""
        self.observing = False
        if self._batches == 0:
            raise ConfigError(
                "activation quantizer saw no data during calibration; "
                "pass calib_data with at least one batch that reaches every quantized layer"
            )
        if self.method == "percentile":
            lo, hi = self._lo_sum / self._batches, self._hi_sum / self._batches
        else:
            lo, hi = self._min, self._max
        signed = self._min < 0
        if signed:
            scale = max(abs(lo), abs(hi)) / qmax(self.bits)
        else:
            scale = max(hi, 0.0) / (2**self.bits - 1)
        self.set_range(scale, signed)
        return {"lo": lo, "hi": hi, "signed": signed, "scale": scale}

    def forward(self, x: Tensor) -> Tensor:
        if self.observing:
            self._record(x)
            return x
        if not self._calibrated:
            return x
        if self._scale <= 0:
            return x * 0.0
        lo, hi = (-qmax(self.bits), qmax(self.bits)) if self._signed else (0, 2**self.bits - 1)
        scale = self.scale.to(x.dtype)  # a device tensor: true division, as in QAT
        q = torch.round(x / scale)
        if q.requires_grad:
            return torch.clamp(q, lo, hi) * scale
        return q.clamp_(lo, hi).mul_(scale)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, method={self.method!r}"


def _sync_after_load(module: nn.Module, incompatible: Any) -> None:
    module._sync_flags()


INPUT_QUANTIZER = "input_quantizer"


def _quantize_input_hook(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: pass the layer's first input through its ``input_quantizer``."""
    quantizer = getattr(module, INPUT_QUANTIZER, None)
    if quantizer is None or not args:
        return args
    return (quantizer(args[0]), *args[1:])


def attach_input_quantizer(layer: nn.Module, quantizer: ActivationQuantizer) -> None:
    """Make ``layer`` quantize its input with ``quantizer`` (child module + pre-hook).

    The quantizer is registered as the child ``input_quantizer`` so it moves with ``.to()``,
    deep-copies and saves with the model; the layer's own parameter names do not change.
    """
    if getattr(layer, INPUT_QUANTIZER, None) is None:
        layer.register_forward_pre_hook(_quantize_input_hook)
    setattr(layer, INPUT_QUANTIZER, quantizer)


def insert_activation_quantizers(
    model: nn.Module,
    bits: int = 8,
    method: str = "minmax",
    percentile: float = 99.99,
    layers: Sequence[str] | None = None,
) -> list[str]:
    """Attach an :class:`ActivationQuantizer` to the INPUT of every Conv/Linear layer, in place.

    ``layers``: module names to quantize (default every Conv/Linear, including the first, whose
    input is the normalized image). Returns the names of the layers that got a quantizer.
    Ranges are unset until :func:`calibrate` runs.
    """
    modules = dict(model.named_modules())
    if layers is None:
        names = [n for n, m in modules.items() if isinstance(m, QUANT_LAYERS)]
    else:
        names = list(layers)
        for name in names:
            if name not in modules:
                raise unknown("layer", name, [n for n in modules if n])
    for name in names:
        attach_input_quantizer(modules[name], ActivationQuantizer(bits, method, percentile))
    return names


def activation_quantizers(model: nn.Module) -> dict[str, ActivationQuantizer]:
    """All activation quantizers in ``model`` by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, ActivationQuantizer)}


def _batch_inputs(batch: Any) -> Any:
    if isinstance(batch, dict):
        for key in ("x", "input", "inputs", "image"):
            if key in batch:
                return batch[key]
        raise ConfigError(f"cannot find the inputs in a batch with keys {sorted(batch)}")
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch


def _model_device(model: nn.Module) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def calibrate(model: nn.Module, data_batches: Iterable[Any], method: str | None = None) -> dict:
    """Run ``model`` in eval mode over ``data_batches`` and set every activation range.

    All quantizers observe during the same passes and are transparent meanwhile, so each range
    is that of the float activations of the (already weight-quantized) model.

    Batches may be tensors, ``(x, y, ...)`` tuples or dicts with an ``"x"`` key. ``method``
    overrides each quantizer's calibration method. Returns ``{layer: {lo, hi, signed, scale}}``.
    """
    quantizers = activation_quantizers(model)
    if not quantizers:
        return {}
    if method is not None:
        if method not in CALIBRATION_METHODS:
            raise unknown("calibration method", method, CALIBRATION_METHODS)
        for q in quantizers.values():
            q.method = method
    was_training = model.training
    device = _model_device(model)
    model.eval()
    try:
        for q in quantizers.values():
            q.observe()
        for batch in data_batches:
            model(_batch_inputs(batch).to(device))
        ranges = {name: q.freeze() for name, q in quantizers.items()}
    finally:
        for q in quantizers.values():
            q.observing = False
        model.train(was_training)
    return {name.removesuffix(f".{INPUT_QUANTIZER}"): r for name, r in ranges.items()}


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
