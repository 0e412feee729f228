"""Calibrated fake quantization of activations: the input of a layer, on a fixed grid.

An :class:`ActivationQuantizer` is attached to the INPUT of a Conv/Linear layer (a child
module ``input_quantizer`` and a forward pre-hook, so parameter names never change). Its range
is calibrated on data (:func:`calibrate`) or set directly (a converted QAT model). The grids are
those of :mod:`underbudget.quant.fake`: unsigned ``clamp(round(x / s), 0, 2**b - 1) * s`` for
inputs that were never negative, symmetric ``clamp(round(x / s), -Qp, Qp) * s`` otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from underbudget.errors import ConfigError, unknown
from underbudget.quant.grid import QUANT_LAYERS, check_bits, qmax

CALIBRATION_METHODS = ("minmax", "percentile")


class _ClippedRound(torch.autograd.Function):
    """``clamp(round(x / s), lo, hi) * s`` forward; gradient 1 inside ``[lo s, hi s]``, else 0."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor, lo: int, hi: int) -> Tensor:
        ctx.save_for_backward((x >= lo * scale) & (x <= hi * scale))
        return torch.round(x / scale).clamp_(lo, hi).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None


class ActivationQuantizer(nn.Module):
    """Per-tensor fake quantizer for activations, with range calibration.

    Modes: ``observe()`` records ranges (output = input), ``freeze()`` turns them into a
    scale. Unsigned grid (``2**b`` levels on ``[0, hi]``) when every observed value was
    non-negative, else symmetric (``2**b - 1`` levels on ``[-a, a]``, ``a = max(|lo|, |hi|)``).
    ``method``: ``"minmax"`` (running min/max over all batches) or ``"percentile"`` (mean
    over batches of each batch's ``percentile`` / ``100 - percentile`` quantiles, which ignores
    rare outliers). Before calibration the quantizer passes inputs through unchanged.

    Backward: the clipped straight-through estimator, gradient 1 where the input lies inside
    the grid's range ``[lo * s, hi * s]`` and 0 where the clamp is active, so a frozen
    quantized model still passes gradients to its input (a visual prompt can learn).
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
        if torch.is_grad_enabled() and x.requires_grad:
            return _ClippedRound.apply(x, scale, lo, hi)
        return torch.round(x / scale).clamp_(lo, hi).mul_(scale)

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


def input_quantized_layers(model: nn.Module | Mapping[str, Tensor]) -> list[str]:
    """Names of the layers whose input is fake-quantized, of a model or of its state dict
    (whose keys then hold ``<layer>.input_quantizer.*``)."""
    marker = f".{INPUT_QUANTIZER}"
    if isinstance(model, nn.Module):
        return [n.removesuffix(marker) for n in activation_quantizers(model)]
    return sorted({k.split(marker + ".")[0] for k in model if marker + "." in k})


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
