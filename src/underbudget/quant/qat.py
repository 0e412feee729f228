"""Quantization-aware training with learned step sizes (LSQ, Esser et al., ICLR 2020).

Forward: ``x_hat = round(clamp(x / s, -Qn, Qp)) * s``. Backward: the rounding is a
straight-through estimator (gradient 1 inside the clamp range, 0 outside), and the step ``s``
gets the LSQ gradient ``round(x/s) - x/s`` inside the range and ``-Qn`` / ``Qp`` outside,
multiplied by ``g = 1 / sqrt(N * Qp)``.

Choices: weights use the symmetric grid of :mod:`underbudget.quant.fake`
(``Qn = Qp = 2**(b-1) - 1``) so that zero is a level and pruned weights stay exactly 0;
activations are unsigned (``Qn = 0``, ``Qp = 2**b - 1``) when the first batch seen is
non-negative, symmetric otherwise. The step starts at ``2 * mean|w| / sqrt(Qp)`` where the
mean is over the NONZERO weights (so pruning does not shrink the first step) and ``N`` is the
number of nonzero weights (pruned weights give no gradient to ``s``); activation steps start
from the first batch with ``N`` = features per sample.

:func:`prepare_qat` swaps Conv/Linear layers for :class:`QuantLinear` / :class:`QuantConv2d`
(subclasses of the float layers that keep the same ``weight`` and ``bias`` parameters and
names); :func:`convert` folds them back into plain layers holding the quantized weights, with
a fixed :class:`~underbudget.quant.activation.ActivationQuantizer` on the input when
activations were quantized, so that the converted model computes exactly what the QAT model
computed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from underbudget.errors import ConfigError, unknown
from underbudget.quant.activation import ActivationQuantizer, attach_input_quantizer
from underbudget.quant.grid import check_bits, qmax

_EPS = 1e-8


class _RoundSTE(torch.autograd.Function):
    """Round in the forward pass, identity gradient in the backward pass."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad


class _RoundKeepSupportSTE(torch.autograd.Function):
    """Round, but a nonzero input never lands on code 0 (it takes the code ``sign(x)``);
    identity gradient. Zero stays zero, so the support of a tensor is kept exactly."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        r = torch.round(x)
        return torch.where((r == 0) & (x != 0), torch.sign(x), r)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad


class _ScaleGrad(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by ``scale`` (a tensor)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor) -> Tensor:
        ctx.save_for_backward(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (scale,) = ctx.saved_tensors
        return grad * scale, None


def lsq_fake_quantize(
    x: Tensor, step: Tensor, grad_scale: Tensor, qn: int, qp: int, keep_support: bool = False
) -> Tensor:
    """LSQ fake quantization ``round(clamp(x / s, -qn, qp)) * s`` with STE and scaled step grad.

    ``keep_support``: nonzero entries never quantize to 0 (their code is at least 1 in
    magnitude, with their sign) and zeros stay 0, so a sparse tensor keeps exactly its
    nonzero pattern; the step's gradient is the LSQ one of this rounding.
    """
    s = _ScaleGrad.apply(step.clamp_min(_EPS), grad_scale)
    rounding = _RoundKeepSupportSTE if keep_support else _RoundSTE
    return rounding.apply(torch.clamp(x / s, -qn, qp)) * s


class LSQQuantizer(nn.Module):
    """One learned step size (per tensor, or per output channel for weights).

    ``signed=None`` decides the grid from the first tensor seen (activations).
    ``keep_support`` (signed grids, weights of a pruned network): a nonzero value never
    rounds to 0, so the quantized tensor has exactly the nonzeros of the float one.
    The step initialises from the first tensor passed to :meth:`initialize` or to the forward
    pass; ``grad_scale`` and ``signed`` are buffers so a saved model restores exactly.
    """

    def __init__(self, bits: int, signed: bool | None = True, channels: int | None = None,
                 keep_support: bool = False):
        super().__init__()
        if keep_support and not signed:
            raise ConfigError("keep_support needs a signed grid (weights), not activations")
        self.bits = check_bits(bits)
        self.keep_support = bool(keep_support)
        self.channels = channels
        shape = (channels,) if channels else ()
        self.step = nn.Parameter(torch.ones(shape))
        self.register_buffer("grad_scale", torch.ones(shape))
        self.register_buffer("signed", torch.tensor(bool(signed)))
        self.register_buffer("initialized", torch.tensor(False))
        self._auto_sign = signed is None
        self._initialized = False
        self._signed = bool(signed)
        self.register_load_state_dict_post_hook(_sync_after_load)

    def _sync_flags(self) -> None:
        self._initialized = bool(self.initialized)
        self._signed = bool(self.signed)

    @property
    def qn(self) -> int:
        """Magnitude of the most negative code."""
        return qmax(self.bits) if self._signed else 0

    @property
    def qp(self) -> int:
        """Largest code."""
        return qmax(self.bits) if self._signed else 2**self.bits - 1

    def _view(self, t: Tensor, like: Tensor) -> Tensor:
        return t.view(-1, *([1] * (like.dim() - 1))) if self.channels else t

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set the sign, the step ``2 mean|x| / sqrt(Qp)`` and ``g = 1 / sqrt(N Qp)`` from ``x``."""
        x = x.detach()
        if self._auto_sign:
            self.signed.fill_(bool(x.min() < 0))
            self._signed = bool(self.signed)
        qp = self.qp
        if self.channels:  # per-channel weights: statistics over each output channel
            flat = x.reshape(x.shape[0], -1).abs()
            count = (flat != 0).sum(dim=1).clamp_min(1).to(flat.dtype)
            mean = flat.sum(dim=1) / count
            self.grad_scale.copy_(1.0 / torch.sqrt(count * qp))
        elif self._auto_sign:  # activations: N is the number of features per sample
            mean = x.abs().mean()
            if mean <= 0:
                mean = x.abs().max() / qp * math.sqrt(qp) / 2
            self.grad_scale.fill_(1.0 / math.sqrt(x[0].numel() * qp))
        else:  # per-tensor weights: pruned (zero) weights are left out of the mean and N
            nonzero = x[x != 0].abs()
            mean = nonzero.mean() if nonzero.numel() else torch.zeros((), device=x.device)
            self.grad_scale.fill_(1.0 / math.sqrt(max(1, nonzero.numel()) * qp))
        step = 2.0 * mean / math.sqrt(qp)
        self.step.copy_(torch.where(step > 0, step, torch.ones_like(step)))
        self.initialized.fill_(True)
        self._initialized = True

    def effective_step(self, like: Tensor | None = None) -> Tensor:
        """The step actually used (kept above a tiny epsilon), broadcastable to ``like``."""
        s = self.step.clamp_min(_EPS)
        return self._view(s, like) if like is not None else s

    def forward(self, x: Tensor) -> Tensor:
        if not self._initialized:
            self.initialize(x)
        step = self._view(self.step, x)
        g = self._view(self.grad_scale, x)
        return lsq_fake_quantize(x, step, g, self.qn, self.qp, self.keep_support)

    def extra_repr(self) -> str:
        keep = ", keep_support=True" if self.keep_support else ""
        return f"bits={self.bits}, channels={self.channels}{keep}"


def _sync_after_load(module: nn.Module, incompatible: Any) -> None:
    module._sync_flags()


class _LSQLayer:
    """Shared logic of the QAT layers: quantizers, quantized weight, conversion."""

    weight: nn.Parameter
    bias: nn.Parameter | None

    def _setup_quant(self, bits: int, act_bits: int | None, per_channel: bool,
                     keep_support: bool = False) -> None:
        channels = self.weight.shape[0] if per_channel else None
        device = self.weight.device
        self.weight_quantizer = LSQQuantizer(
            bits, signed=True, channels=channels, keep_support=keep_support
        ).to(device)
        if not self.weight.is_meta:
            self.weight_quantizer.initialize(self.weight)
        self.input_quantizer = (
            LSQQuantizer(act_bits, signed=None).to(device) if act_bits is not None else None
        )

    def quantized_weight(self) -> Tensor:
        """The fake-quantized weight used in the forward pass (differentiable)."""
        return self.weight_quantizer(self.weight)

    def _quant_input(self, x: Tensor) -> Tensor:
        return self.input_quantizer(x) if self.input_quantizer is not None else x

    def _float_kwargs(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_float(cls, module: nn.Module, bits: int, act_bits: int | None = None,
                   per_channel: bool = False, keep_support: bool = False) -> nn.Module:
        """A QAT layer sharing ``module``'s ``weight`` and ``bias`` parameters."""
        kwargs = _LAYER_KWARGS[cls._float_type](module)
        new = cls(**kwargs, bits=bits, device="meta")
        new.weight = module.weight
        new.bias = module.bias
        new._setup_quant(bits, act_bits, per_channel, keep_support)
        new.train(module.training)
        return new

    @torch.no_grad()
    def to_float(self) -> nn.Module:
        """A plain layer whose weight is the quantized weight (and whose input is quantized)."""
        kwargs = _LAYER_KWARGS[self._float_type](self)
        plain = self._float_type(**kwargs, device="meta")
        qweight = self.quantized_weight().detach().clone()
        plain.weight = nn.Parameter(qweight, requires_grad=self.weight.requires_grad)
        plain.bias = self.bias
        if self.input_quantizer is not None:
            q = self.input_quantizer
            if not q._initialized:
                raise ConfigError(
                    "cannot convert a QAT model whose activation steps were never initialised: "
                    "run at least one forward pass on real inputs before convert()"
                )
            fixed = ActivationQuantizer(q.bits).to(qweight.device)
            attach_input_quantizer(plain, fixed.set_range(float(q.effective_step()), q._signed))
        plain.train(self.training)
        return plain


class QuantLinear(_LSQLayer, nn.Linear):
    """``nn.Linear`` whose weight (and optionally input) is LSQ fake-quantized."""

    _float_type = nn.Linear

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        bits: int = 8,
        act_bits: int | None = None,
        per_channel: bool = False,
        device: Any = None,
        dtype: Any = None,
    ):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._setup_quant(bits, act_bits, per_channel)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self._quant_input(x), self.quantized_weight(), self.bias)


class _QuantConvNd(_LSQLayer):
    def __init__(
        self,
        *args: Any,
        bits: int = 8,
        act_bits: int | None = None,
        per_channel: bool = False,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self._setup_quant(bits, act_bits, per_channel)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self._quant_input(x), self.quantized_weight(), self.bias)


class QuantConv1d(_QuantConvNd, nn.Conv1d):
    """``nn.Conv1d`` with LSQ fake quantization."""

    _float_type = nn.Conv1d


class QuantConv2d(_QuantConvNd, nn.Conv2d):
    """``nn.Conv2d`` with LSQ fake quantization."""

    _float_type = nn.Conv2d


class QuantConv3d(_QuantConvNd, nn.Conv3d):
    """``nn.Conv3d`` with LSQ fake quantization."""

    _float_type = nn.Conv3d


def _linear_kwargs(m: nn.Linear) -> dict:
    return {"in_features": m.in_features, "out_features": m.out_features,
            "bias": m.bias is not None, "dtype": m.weight.dtype}


_CONV_FIELDS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                "groups", "padding_mode")


def _conv_kwargs(m: nn.Module) -> dict:
    return {**{k: getattr(m, k) for k in _CONV_FIELDS}, "bias": m.bias is not None,
            "dtype": m.weight.dtype}


_LAYER_KWARGS = {
    nn.Linear: _linear_kwargs,
    nn.Conv1d: _conv_kwargs,
    nn.Conv2d: _conv_kwargs,
    nn.Conv3d: _conv_kwargs,
}
_QAT_TYPES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: QuantLinear,
    nn.Conv1d: QuantConv1d,
    nn.Conv2d: QuantConv2d,
    nn.Conv3d: QuantConv3d,
}
QAT_LAYERS = tuple(_QAT_TYPES.values())


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def prepare_qat(
    model: nn.Module,
    bits: int,
    activations: bool = False,
    act_bits: int | None = None,
    per_channel: bool = False,
    layers: Iterable[str] | None = None,
    keep_support: bool = False,
) -> nn.Module:
    """Swap Conv/Linear layers of ``model`` for LSQ layers IN PLACE and return the model.

    ``layers``: module names to quantize (default every Conv/Linear). Parameter names of the
    wrapped weights and biases are unchanged (``conv1.weight`` stays ``conv1.weight``); each
    layer gains ``weight_quantizer.step`` and, with ``activations``, ``input_quantizer.step``
    (initialised from the first batch). ``keep_support``: a nonzero weight never quantizes to
    0 (pruned weights, exactly 0, stay 0), so a sparse model keeps its density through
    quantization. Build the optimizer AFTER calling this. When ``model``
    itself is a Conv/Linear layer the returned object is a new module: always use the result.
    """
    check_bits(bits)
    a_bits = check_bits(act_bits if act_bits is not None else bits, "activation bits")
    modules = dict(model.named_modules())
    if layers is None:
        names = [
            n for n, m in modules.items() if type(m) in _QAT_TYPES and not isinstance(m, QAT_LAYERS)
        ]
    else:
        names = list(layers)
        for name in names:
            if name not in modules or type(modules[name]) not in _QAT_TYPES:
                choices = [n for n, m in modules.items() if type(m) in _QAT_TYPES]
                raise unknown("Conv/Linear layer", name, choices)
    for name in names:
        module = modules[name]
        new = _QAT_TYPES[type(module)].from_float(
            module, bits, a_bits if activations else None, per_channel, keep_support
        )
        if not name:
            return new
        _set_submodule(model, name, new)
    return model


def convert(model: nn.Module) -> nn.Module:
    """Replace every QAT layer by a plain layer holding its quantized weight, IN PLACE.

    Returns the model (a new module when ``model`` itself is a QAT layer). With activation
    quantization the plain layer quantizes its input on the learned grid, so outputs match
    the QAT model's exactly.
    """
    if isinstance(model, QAT_LAYERS):
        return model.to_float()
    for name, module in list(model.named_modules()):
        if isinstance(module, QAT_LAYERS):
            _set_submodule(model, name, module.to_float())
    return model
