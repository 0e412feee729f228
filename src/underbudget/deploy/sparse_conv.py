"""A k x k convolution computed from its nonzero weights only (groups 1, zero padding).

Each nonzero ``w[o, c, i, j]`` adds ``w * x[:, c, i + s*r, j + s*q]`` to output channel ``o``:
a shifted view of the (padded) input scaled by one number. Three ways to run that
(``SparseConv2d.method``); ``"auto"`` takes the native kernel for float32 stride-1 inputs
on a CPU where it is built, and otherwise picks between the two torch ones from the work
each would do:

- ``"native"``: :func:`underbudget.deploy.native.sparse_conv2d`, the same shifted-run
  computation in compiled code, vectorised over 64 output positions at a time (stride 1,
  float32, CPU).
- ``"taps"``: one multiply-add over the whole batch per nonzero weight, into the output
  channel it feeds. With stride 1 the shifted views are taken on the padded rows laid end to
  end, so that each one is a contiguous run per example (the few positions that fall between
  rows are computed and left out of the returned view). Work: ``nnz x batch x positions``
  element operations, plus one Python-level call per nonzero; it wins on large batches when
  the dense kernel is inefficient (few input channels) and the nonzeros are few.
- ``"gather"``: the input positions of every kernel tap ``(c, i, j)`` that any output uses
  are gathered by one ``index_select`` and multiplied by the (out, taps) matrix of their
  weights in one batched matmul. Work: ``taps x batch x positions`` copies plus a small
  product; few calls, so it wins where the call overhead dominates (small batches).

Neither beats oneDNN's dense convolution on layers with many input channels unless the
weights are very sparse: measure (``rule="measure"``) or see :mod:`underbudget.deploy.rule`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from underbudget.deploy import native
from underbudget.deploy.layers import _bias, _SparseWeight

METHODS = ("auto", "native", "taps", "gather")

# Cost model for method="auto", from timing both methods on LeNet-5's and ResNet-20's
# convolutions (batch 1 to 256, one CPU thread): the taps path costs ~40 us plus ~10 us per
# nonzero and per output channel it writes, then ~1.5 ns per multiply-add on contiguous runs
# (stride 1) or ~4 ns on strided ones; the gathering path ~50 us plus ~4 ns per gathered
# element.
_TAPS_US, _CALL_US, _TAP_NS, _STRIDED_TAP_NS = 40.0, 10.0, 1.5, 4.0
_GATHER_US, _GATHER_NS = 50.0, 4.0
# Output channels without nonzeros are filled by one index_copy_ up to this many elements
# each (fewer calls), by one fill_ each above it (index_copy_ is slow on large maps).
_INDEX_FILL_MAX = 32768


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _pad4(padding, kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, ...]:
    """F.pad's (left, right, top, bottom) for a Conv2d ``padding`` (ints or a string)."""
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        out = []
        for k, d in ((kernel[1], dilation[1]), (kernel[0], dilation[0])):
            total = d * (k - 1)
            out += [total // 2, total - total // 2]
        return tuple(out)
    ph, pw = _pair(padding)
    return (pw, pw, ph, ph)


class SparseConv2d(_SparseWeight):
    """``nn.Conv2d`` (groups 1, zero padding, any kernel, stride, dilation) from nonzeros."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
                 dilation=1, method: str = "auto"):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        super().__init__(weight)
        self.out_channels, self.in_channels = self.weight_shape[:2]
        self.kernel_size = tuple(self.weight_shape[2:])
        self.stride, self.dilation = _pair(stride), _pair(dilation)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        if self.padding == "same" and self.stride != (1, 1):
            raise ValueError("padding='same' needs stride 1 (as in nn.Conv2d)")
        self.pad4 = _pad4(self.padding, self.kernel_size, self.dilation)
        self.method = method
        self.epilogue: str | None = None  # "relu_pool": set by deploy.fuse_conv_pool
        _bias(self, bias)

    @classmethod
    def from_dense(cls, layer: nn.Conv2d, method: str = "auto") -> SparseConv2d:
        if layer.groups != 1 or layer.padding_mode != "zeros":
            raise ValueError("SparseConv2d needs groups=1 and padding_mode='zeros'")
        return cls(layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation,
                   method)

    # -- storage --------------------------------------------------------------------------
    def _set_weight(self, weight: Tensor) -> None:
        weight = weight.detach()
        index = weight.nonzero()  # (nnz, 4): o, c, i, j in row-major order
        taps, tap_of = torch.unique(index[:, 1:], dim=0, return_inverse=True)
        tap_weight = weight.new_zeros(weight.shape[0], taps.shape[0])
        tap_weight[index[:, 0], tap_of] = weight[tuple(index.t())]
        self.register_buffer("index", index, persistent=False)
        self.register_buffer("values", weight[tuple(index.t())].clone(), persistent=False)
        self.register_buffer("taps", taps, persistent=False)  # (T, 3): c, i, j
        self.register_buffer("tap_weight", tap_weight, persistent=False)  # (out, T)
        used = torch.zeros(weight.shape[0], dtype=torch.bool, device=weight.device)
        used[index[:, 0]] = True
        self.register_buffer("_empty_outputs", (~used).nonzero()[:, 0], persistent=False)
        self._reset_caches()

    def _reset_caches(self) -> None:
        self._by_output: list[list[tuple[int, int, int, float]]] | None = None
        self._offsets: dict = {}  # (Hp, Wp, method) -> precomputed offsets or gather index

    def _apply(self, fn, recurse=True):
        self._reset_caches()  # moved or cast: the caches are rebuilt from the new buffers
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_by_output"], state["_offsets"] = None, {}
        return state

    def dense_weight(self) -> Tensor:
        w = self.values.new_zeros(self.weight_shape)
        w[tuple(self.index.t())] = self.values
        return w

    @property
    def tap_count(self) -> int:
        """Distinct (input channel, kernel row, kernel column) taps that any output uses."""
        return int(self.taps.shape[0])

    def to_dense(self) -> nn.Conv2d:
        """The equivalent plain :class:`torch.nn.Conv2d`."""
        w = self.dense_weight()
        layer = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size,
                          stride=self.stride, padding=self.padding, dilation=self.dilation,
                          bias=self.bias is not None, device=w.device, dtype=w.dtype)
        layer.load_state_dict(self.state_dict())
        return layer

    # -- compute --------------------------------------------------------------------------
    def _geometry(self, x: Tensor) -> tuple[Tensor, int, int, int, int]:
        """(padded contiguous input, Hp, Wp, Ho, Wo)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (N, {self.in_channels}, H, W), got "
                             f"{tuple(x.shape)}")
        x = x.to(self.values.dtype)
        x = (F.pad(x, self.pad4) if any(self.pad4) else x).contiguous()
        hp, wp = x.shape[2:]
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        ho, wo = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
        if ho <= 0 or wo <= 0:
            raise ValueError(f"input {tuple(x.shape)} (padded) is smaller than the kernel")
        return x, hp, wp, ho, wo

    def choose(self, batch: int, positions: int) -> str:
        """The torch method (taps or gather) for ``batch`` examples of ``positions`` outputs."""
        if self.method in ("taps", "gather"):
            return self.method
        elements = batch * positions
        per_tap = _TAP_NS if self.stride == (1, 1) else _STRIDED_TAP_NS
        calls = self.nnz + self.out_channels
        taps_us = _TAPS_US + calls * _CALL_US + self.nnz * elements * per_tap * 1e-3
        gather_us = _GATHER_US + self.tap_count * elements * _GATHER_NS * 1e-3
        return "taps" if taps_us <= gather_us else "gather"

    def native_ok(self, x: Tensor) -> bool:
        """Whether ``x`` can run through the native kernel (stride 1, float32, CPU, built)."""
        return (self.stride == (1, 1) and x.device.type == "cpu"
                and self.values.dtype == torch.float32 and native.available())

    def forward(self, x: Tensor) -> Tensor:
        if self.method == "native" or (self.method == "auto" and self.native_ok(x)):
            return self._native(x)
        x, hp, wp, ho, wo = self._geometry(x)
        if self.choose(x.shape[0], ho * wo) == "taps":
            out = self._taps(x, hp, wp, ho, wo)
        else:
            out = self._gather(x, hp, wp, ho, wo)
        if self.epilogue == "relu_pool":
            out = torch.relu(F.max_pool2d(out, 2))
        return out

    def _tap_offsets(self, hp: int, wp: int) -> list[list[tuple[int, float]]]:
        """Per output channel, (flat input offset, weight) of each of its nonzeros."""
        key = (hp, wp, "taps")
        if key not in self._offsets:
            if self._by_output is None:
                by_output: list[list] = [[] for _ in range(self.out_channels)]
                for (o, c, i, j), v in zip(self.index.tolist(), self.values.tolist()):
                    by_output[o].append((c, i, j, v))
                self._by_output = by_output
            (dh, dw) = self.dilation
            self._offsets[key] = [[(c * hp * wp + i * dh * wp + j * dw, v) for c, i, j, v in taps]
                                  for taps in self._by_output]
        return self._offsets[key]

    def _taps(self, x: Tensor, hp: int, wp: int, ho: int, wo: int) -> Tensor:
        n, per_example, base = x.shape[0], x[0].numel(), x.storage_offset()
        (sh, sw) = self.stride
        if (sh, sw) == (1, 1):  # rows end to end: one contiguous run per example and tap
            span = (ho - 1) * wp + wo
            out = x.new_empty(n, self.out_channels, ho * wp)
            size, stride = (n, span), (per_example, 1)
        else:
            out = x.new_empty(n, self.out_channels, ho, wo)
            size, stride = (n, ho, wo), (per_example, sh * wp, sw)
        bias = None if self.bias is None else self.bias.detach()
        empty = self._empty_outputs
        per_channel = out[0, 0].numel()
        if empty.numel() and n * per_channel <= _INDEX_FILL_MAX:  # no nonzeros: the bias
            fill = (out.new_zeros(()) if bias is None else bias[empty].view(1, -1, 1, 1))
            out.view(n, self.out_channels, -1, 1).index_copy_(
                1, empty, fill.expand(n, empty.numel(), per_channel, 1))
        elif empty.numel():
            values = [0.0] * self.out_channels if bias is None else bias.tolist()
            for o in empty.tolist():
                out[:, o].fill_(values[o])
        for o, taps in enumerate(self._tap_offsets(hp, wp)):
            if not taps:
                continue
            dst = out[:, o, :span] if (sh, sw) == (1, 1) else out[:, o]
            offset, v = taps[0]
            first = x.as_strided(size, stride, base + offset)
            if bias is None:
                torch.mul(first, v, out=dst)
            else:
                torch.add(bias[o], first, alpha=v, out=dst)
            for offset, v in taps[1:]:
                dst.add_(x.as_strided(size, stride, base + offset), alpha=v)
        if (sh, sw) == (1, 1):
            return out.view(n, self.out_channels, ho, wp)[..., :wo]
        return out

    def _native(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (N, {self.in_channels}, H, W), got "
                             f"{tuple(x.shape)}")
        if self.stride != (1, 1):
            raise ValueError("the native kernel computes stride-1 convolutions only")
        x = x.to(self.values.dtype)
        left, right, top, bottom = self.pad4
        hp, wp = x.shape[2] + top + bottom, x.shape[3] + left + right
        key = (hp, wp, "native")
        if key not in self._offsets:
            self._offsets[key] = native.conv_offsets(self.index, wp, hp, self.in_channels,
                                                     self.out_channels, self.dilation)
        crow, offsets = self._offsets[key]
        fused = self.epilogue == "relu_pool"
        return native.sparse_conv2d(x, crow, offsets, self.values, self.bias, self.out_channels,
                                    self.pad4, self.kernel_size, self.dilation, relu=fused,
                                    pool=fused)

    def _gather(self, x: Tensor, hp: int, wp: int, ho: int, wo: int) -> Tensor:
        n = x.shape[0]
        bias = None if self.bias is None else self.bias.detach().view(1, -1, 1)
        if self.tap_count == 0:
            out = x.new_zeros(n, self.out_channels, ho * wo)
            return (out if bias is None else out + bias).view(n, -1, ho, wo)
        key = (hp, wp, ho, wo, "gather")
        index = self._offsets.get(key)
        if index is None:
            (sh, sw), (dh, dw) = self.stride, self.dilation
            c, i, j = self.taps.unbind(1)
            start = c * hp * wp + i * dh * wp + j * dw  # (T,)
            rows = torch.arange(ho, device=x.device) * (sh * wp)
            cols = torch.arange(wo, device=x.device) * sw
            index = (start[:, None, None] + rows[:, None] + cols).reshape(-1)
            self._offsets[key] = index
        gathered = x.view(n, -1).index_select(1, index).view(n, self.tap_count, ho * wo)
        out = torch.matmul(self.tap_weight, gathered)  # (n, out, positions)
        if bias is not None:
            out.add_(bias)
        return out.view(n, self.out_channels, ho, wo)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"bias={self.bias is not None}, density={self.density():.4f}, "
                f"method={self.method!r}"
                + (f", epilogue={self.epilogue!r}" if self.epilogue else ""))
