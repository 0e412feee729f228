"""Deploy-form layers that compute with sparse weights: CSR on any device, 2:4 on CUDA.

Each layer stores only its sparse weight, yet its ``state_dict`` holds the dense ``weight``
(and ``bias``) under the keys of the layer it replaces, so a deployed model's checkpoint loads
into the plain architecture, and a plain checkpoint loads into the deployed model.

CSR layers compute ``W @ X`` with ``X`` laid out (features, examples): that is the layout the
sparse kernels are fast in, and the transposed view they return is already that layout for the
next sparse layer, so a chain of sparse Linear layers never copies activations in between.
On a CPU, float32 Linear layers run the native kernel of :mod:`underbudget.deploy.native`
when it is built; elsewhere torch's CSR product (MKL on CPU, cuSPARSE on CUDA).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from underbudget.deploy import native

# Columns (examples x positions) per sparse product: wider products leave the cache.
MAX_COLUMNS = 4096


def csr_parts(weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(crow, col, values) of a 2-d weight in CSR form, indices int32 (what MKL takes)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        csr = weight.detach().to_sparse_csr()
    return (csr.crow_indices().to(torch.int32), csr.col_indices().to(torch.int32),
            csr.values().clone())


class _SparseWeight(nn.Module):
    """A layer that holds only its weight's nonzeros yet whose state dict speaks dense.

    Subclasses keep the nonzeros in a ``values`` buffer and define ``_set_weight`` (from a
    dense weight) and ``dense_weight`` (back to it).
    """

    def __init__(self, weight: Tensor):
        super().__init__()
        self.weight_shape = tuple(weight.shape)
        self._set_weight(weight)

    def _set_weight(self, weight: Tensor) -> None:
        raise NotImplementedError

    def dense_weight(self) -> Tensor:
        raise NotImplementedError

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    def density(self) -> float:
        return self.nnz / max(1, int(torch.Size(self.weight_shape).numel()))

    # -- the state dict speaks dense ------------------------------------------------------
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.dense_weight()  # first, as in the plain layer
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + "weight"
        if key not in state_dict:
            missing_keys.append(key)
        else:
            weight = state_dict[key]
            if tuple(weight.shape) != self.weight_shape:
                error_msgs.append(f"size mismatch for {key}: copying a param with shape "
                                  f"{tuple(weight.shape)}, the layer has {self.weight_shape}")
            else:
                self._set_weight(weight.to(self.values.device, self.values.dtype))
        rest = {k: v for k, v in state_dict.items() if k != key}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


class _CSRWeight(_SparseWeight):
    """Holds a matrix as three dense buffers and builds the CSR tensor once per placement."""

    def _set_weight(self, weight: Tensor) -> None:
        crow, col, values = csr_parts(weight.reshape(weight.shape[0], -1))
        self.register_buffer("crow", crow, persistent=False)
        self.register_buffer("col", col, persistent=False)
        self.register_buffer("values", values, persistent=False)
        self._csr: Tensor | None = None
        self._native_key: tuple | None = None  # input size the native offsets are for

    def csr(self) -> Tensor:
        """The weight as a CSR matrix (out, in·k·k) sharing the buffers' memory."""
        if self._csr is None:
            rows = self.weight_shape[0]
            cols = int(torch.Size(self.weight_shape[1:]).numel())
            with torch.inference_mode(False), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support.*")
                self._csr = torch.sparse_csr_tensor(self.crow, self.col, self.values,
                                                    size=(rows, cols), check_invariants=False)
        return self._csr

    def _apply(self, fn, recurse=True):
        self._csr = None  # moved or cast: rebuilt from the new buffers on first use
        self._native_key = None
        return super()._apply(fn, recurse)

    def dense_weight(self) -> Tensor:
        return self.csr().to_dense().reshape(self.weight_shape)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_csr"] = None  # sparse tensors cannot be deep-copied; rebuilt on first use
        return state


def _bias(module: nn.Module, bias: Tensor | None) -> None:
    if bias is None:
        module.register_parameter("bias", None)
    else:
        module.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)


def _sparse_times(csr: Tensor, cols: Tensor, bias: Tensor | None) -> Tensor:
    """``csr @ cols (+ bias)`` for contiguous ``cols`` (features, n): (out, n)."""
    if cols.shape[1] == 1:
        v = cols[:, 0]
        return (torch.mv(csr, v) if bias is None else torch.addmv(bias, csr, v)).unsqueeze(1)
    if bias is not None:
        return torch.addmm(bias.unsqueeze(1), csr, cols)
    return torch.mm(csr, cols)


class SparseLinear(_CSRWeight):
    """``y = x W^T + b`` with W in CSR; drop-in for :class:`torch.nn.Linear` at inference."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None):
        super().__init__(weight)
        self.out_features, self.in_features = self.weight_shape
        _bias(self, bias)

    @classmethod
    def from_dense(cls, layer: nn.Linear) -> SparseLinear:
        return cls(layer.weight, layer.bias)

    def to_dense(self) -> nn.Linear:
        """The equivalent plain :class:`torch.nn.Linear`."""
        w = self.dense_weight()
        layer = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          device=w.device, dtype=w.dtype)
        layer.load_state_dict(self.state_dict())
        return layer

    def forward(self, x: Tensor) -> Tensor:
        csr, bias = self._csr if self._csr is not None else self.csr(), self.bias
        if x.dtype != self.values.dtype:
            x = x.to(self.values.dtype)
        if x.dim() != 2:
            lead = x.shape[:-1]
            return self(x.reshape(-1, self.in_features)).reshape(*lead, self.out_features)
        n = x.shape[0]
        if n > 1 and native.usable(x):  # the CPU kernel: reads, returns the transposed layout
            return native.csr_linear(x, self.crow, self.col, self.values, bias,
                                     self.out_features)
        if n == 1:  # matrix-vector: one call, no transposes
            v = x[0]
            out = torch.mv(csr, v) if bias is None else torch.addmv(bias, csr, v)
            return out.unsqueeze(0)
        if n <= MAX_COLUMNS:
            return _sparse_times(csr, x.t().contiguous(), bias).t()
        return torch.cat([_sparse_times(csr, x[s : s + MAX_COLUMNS].t().contiguous(), bias)
                          for s in range(0, n, MAX_COLUMNS)], dim=1).t()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, density={self.density():.4f}")


class SparseConv1x1(_CSRWeight):
    """A 1x1 convolution (groups 1, no padding, any stride) as a CSR product over positions."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None, stride=(1, 1)):
        super().__init__(weight)
        self.out_channels, self.in_channels = self.weight_shape[:2]
        self.stride = tuple(stride) if isinstance(stride, (tuple, list)) else (stride, stride)
        _bias(self, bias)

    @classmethod
    def from_dense(cls, layer: nn.Conv2d) -> SparseConv1x1:
        return cls(layer.weight, layer.bias, layer.stride)

    def to_dense(self) -> nn.Conv2d:
        """The equivalent plain :class:`torch.nn.Conv2d`."""
        w = self.dense_weight()
        layer = nn.Conv2d(self.in_channels, self.out_channels, 1, stride=self.stride,
                          bias=self.bias is not None, device=w.device, dtype=w.dtype)
        layer.load_state_dict(self.state_dict())
        return layer

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != (1, 1):
            x = x[:, :, :: self.stride[0], :: self.stride[1]]
        x = x.to(self.values.dtype)
        b, _, h, w = x.shape
        if b * h * w > 1 and native.usable(x):  # a 1x1 convolution is a run per channel
            key = (h, w)
            if self._native_key != key:
                rows = torch.repeat_interleave(torch.arange(self.out_channels),
                                               self.crow[1:].diff(prepend=self.crow[:1]))
                index = torch.stack([rows, self.col.long(), torch.zeros_like(rows),
                                     torch.zeros_like(rows)], 1)
                self._native_parts = native.conv_offsets(index, w, h, self.in_channels,
                                                         self.out_channels, (1, 1))
                self._native_key = key
            crow, offsets = self._native_parts
            return native.sparse_conv2d(x, crow, offsets, self.values, self.bias,
                                        self.out_channels, (0, 0, 0, 0), (1, 1), (1, 1))
        csr, bias = self.csr(), self.bias
        step = max(1, MAX_COLUMNS // max(1, h * w))  # examples per product
        parts = []
        for s in range(0, b, step):
            cols = x[s : s + step].transpose(0, 1).reshape(self.in_channels, -1)
            parts.append(_sparse_times(csr, cols, bias))
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return out.view(self.out_channels, b, h, w).transpose(0, 1)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size=(1, 1), "
                f"stride={self.stride}, bias={self.bias is not None}, "
                f"density={self.density():.4f}")


class SemiStructuredLinear(nn.Module):
    """A Linear layer whose weight is 2:4 sparse, run by CUDA's semi-structured kernels.

    The weight is held in ``dtype`` (bf16 by default: what the kernels take); inputs are cast
    to it and outputs back to the input's dtype. Build it only where
    :func:`~underbudget.deploy.rule.semi_structured_supported` says the device can.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None,
                 dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        from torch.sparse import to_sparse_semi_structured

        self.out_features, self.in_features = weight.shape
        self.dtype = dtype
        self.weight = nn.Parameter(
            to_sparse_semi_structured(weight.detach().to(dtype).contiguous()),
            requires_grad=False)
        if bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(bias.detach().to(dtype).clone(), requires_grad=False)

    @classmethod
    def from_dense(cls, layer: nn.Linear, dtype: torch.dtype = torch.bfloat16):
        return cls(layer.weight, layer.bias, dtype)

    def dense_weight(self) -> Tensor:
        return self.weight.to_dense()

    def to_dense(self) -> nn.Linear:
        w = self.dense_weight()
        layer = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          device=w.device, dtype=torch.float32)
        layer.load_state_dict(self.state_dict())
        return layer

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.dense_weight().float()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias.detach().float()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        from torch.sparse import to_sparse_semi_structured

        for name in ("weight", "bias") if self.bias is not None else ("weight",):
            key = prefix + name
            if key not in state_dict:
                missing_keys.append(key)
                continue
            value = state_dict[key].to(self.weight.device, self.dtype).contiguous()
            if name == "weight":
                value = to_sparse_semi_structured(value)
            setattr(self, name, nn.Parameter(value, requires_grad=False))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x.to(self.dtype), self.weight, self.bias).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, 2:4"


class MaxPool2x2(nn.Module):
    """``nn.MaxPool2d(2)`` as two element-wise maxima of strided views (the same values).

    torch's CPU max-pooling kernel is slow on NCHW maps with few channels: on the small conv
    nets here it takes most of the inference time, and two ``torch.maximum`` calls over
    views compute the same result several times faster.
    """

    @staticmethod
    def fits(module: nn.Module) -> bool:
        """Whether ``module`` is a max-pool this layer reproduces exactly."""
        def pair(v):
            return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

        return (type(module) is nn.MaxPool2d and pair(module.kernel_size) == (2, 2)
                and pair(module.stride) == (2, 2) and pair(module.padding) == (0, 0)
                and pair(module.dilation) == (1, 1) and not module.ceil_mode
                and not module.return_indices)

    def forward(self, x: Tensor) -> Tensor:
        *lead, h, w = x.shape
        h2, w2 = h // 2, w // 2
        if (h, w) != (2 * h2, 2 * w2):
            x = x[..., : 2 * h2, : 2 * w2]
        if x.is_contiguous():
            rows = x.view(*lead, h2, 2, 2 * w2)
            rows = torch.maximum(rows[..., 0, :], rows[..., 1, :]).view(*lead, h2, w2, 2)
            return torch.maximum(rows[..., 0], rows[..., 1])
        rows = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
        return torch.maximum(rows[..., 0::2], rows[..., 1::2])


SPARSE_LAYERS = (SparseLinear, SparseConv1x1, SemiStructuredLinear)
