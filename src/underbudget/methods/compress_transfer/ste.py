"""Straight-through gradients for calibrated activation quantizers (visual prompting).

:class:`~underbudget.quant.ActivationQuantizer` rounds with ``torch.round``, whose gradient is
zero, so no gradient reaches the input of an activation-quantized model and a visual prompt
could never learn. Here each quantizer is swapped for a subclass that computes the same
forward values and passes gradients straight through inside the quantization range (zero
outside it, where the clamp is active). Buffers and state-dict keys are unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...quant import ActivationQuantizer
from ...quant.fake import qmax

INPUT_QUANTIZER = "input_quantizer"


class STEActivationQuantizer(ActivationQuantizer):
    """An ActivationQuantizer whose backward is the clipped straight-through estimator."""

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        if not (torch.is_grad_enabled() and x.requires_grad) or not self._calibrated:
            return out
        if self._scale <= 0:
            return out
        if self._signed:
            lo, hi = -qmax(self.bits) * self._scale, qmax(self.bits) * self._scale
        else:
            lo, hi = 0.0, (2**self.bits - 1) * self._scale
        inside = ((x >= lo) & (x <= hi)).to(x.dtype)
        return out.detach() + (x - x.detach()) * inside


def with_straight_through(model: nn.Module) -> int:
    """Swap every calibrated activation quantizer in ``model`` for the STE one; return count."""
    swapped = 0
    for module in list(model.modules()):
        q = getattr(module, INPUT_QUANTIZER, None)
        if isinstance(q, ActivationQuantizer) and not isinstance(q, STEActivationQuantizer):
            new = STEActivationQuantizer(q.bits, q.method, q.percentile)
            new.to(q.scale.device)
            new.load_state_dict(q.state_dict())
            setattr(module, INPUT_QUANTIZER, new)
            swapped += 1
    return swapped
