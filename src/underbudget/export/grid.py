"""Integer codes and scales back from fake-quantized float weights, exactly.

Post-training quantization (:func:`underbudget.quant.fake_quantize`) and converted QAT layers
store each weight as ``q * s_c`` in float, with integer ``q`` in ``[-Qp, Qp]`` and one step
``s_c`` per output channel. :func:`recover_grid` finds ``q`` and ``s_c`` such that
``q * s_c`` (computed in the weight's dtype) equals the stored weight exactly, or reports that
the weight is not on such a grid. The step is the learned one when known (QAT), else
``max|w_c| / Qp`` (PTQ); because the stored maximum is ``Qp * s_c`` rounded, the search also
tries the few floats next to that estimate.
"""

from __future__ import annotations

import torch
from torch import Tensor

MAX_ULPS = 4


def code_dtype(bits: int) -> torch.dtype:
    """The integer type of ``bits``-bit codes."""
    return torch.int8 if bits <= 8 else torch.int16


def _neighbours(x: Tensor, k: int) -> Tensor:
    """``x`` moved ``k`` floats up (k > 0) or down (k < 0)."""
    target = torch.full_like(x, float("inf") if k > 0 else 0.0)
    for _ in range(abs(k)):
        x = torch.nextafter(x, target)
    return x


def recover_grid(w: Tensor, bits: int, step: Tensor | None = None) -> tuple[Tensor, Tensor] | None:
    """``(codes, scales)`` with ``codes * scales.view(-1, 1, ...) == w`` element for element,
    or None when ``w`` is not on a symmetric per-output-channel ``bits``-bit grid.

    ``step``: the learned step (per channel or one for the tensor), tried first.
    """
    if not w.is_floating_point() or w.dim() < 1 or not 2 <= bits <= 16:
        return None
    qp = 2 ** (bits - 1) - 1
    rows = w.detach().to("cpu").reshape(w.shape[0], -1)
    amax = rows.abs().amax(dim=1)
    if step is not None:
        base = step.detach().to("cpu", w.dtype).reshape(-1).expand(rows.shape[0]).clone()
    else:
        base = amax / qp
    scales = torch.where(amax == 0, base, torch.zeros_like(base))
    codes = torch.zeros_like(rows)
    found = amax == 0  # an all-zero channel is code 0 on any grid
    for k in [0] + [s * i for i in range(1, MAX_ULPS + 1) for s in (1, -1)]:
        cand = _neighbours(base, k)
        safe = torch.where(cand > 0, cand, torch.ones_like(cand))
        q = torch.clamp(torch.round(rows / safe[:, None]), -qp, qp)
        ok = ((q * cand[:, None]) == rows).all(dim=1) & (cand > 0) & ~found
        codes[ok], scales[ok] = q[ok], cand[ok]
        found |= ok
        if bool(found.all()):
            view = [-1] + [1] * (w.dim() - 1)
            check = codes.reshape(w.shape) * scales.view(view)
            if not torch.equal(check.to(w.dtype), w.detach().to("cpu")):
                return None
            return codes.reshape(w.shape).to(code_dtype(bits)), scales
    return None


def levels_used(codes: Tensor) -> int:
    """Most distinct codes in any output channel."""
    rows = codes.reshape(codes.shape[0], -1)
    return max(int(torch.unique(r).numel()) for r in rows) if rows.numel() else 0
