"""Where a sparse kernel beats the dense one: a documented threshold, or a measurement.

On a CPU where the native kernels (:mod:`underbudget.deploy.native`) are built, the threshold
rule uses their limits, measured on this project's CPU machine (2 threads) as dense time
over native time for random zero patterns:

=================================  =====  =====  =====  =====  =====
layer                              d=.05  d=.1   d=.2   d=.3   d=.5
=================================  =====  =====  =====  =====  =====
Linear 784->300, batch 256         4.91   3.13   1.26   1.36   0.84
Linear 300->100, batch 256         2.06   1.77   1.50   1.23   0.83
Linear 1024->1024, batch 256       4.66   4.09   2.05   1.33   0.71
Linear 120->84, batch 256          1.24   1.20   1.20   1.06   0.94
Linear 784->300, batch 16          2.14   1.93   1.44   1.43   0.91
Linear 300->100, batch 16          0.89   0.82   0.79   0.74   0.63
conv 1->6 5x5 (28x28), batch 256   4.43   3.65   3.48   3.31   2.91
conv 6->16 5x5 (14x14), batch 256  3.05   2.21   1.36   0.96   0.68
conv 3->16 3x3 (32x32), batch 256  5.00   5.79   4.67   4.00   3.93
conv 64->64 3x3 (8x8), batch 256   2.36   1.82   1.25   0.85   0.50
conv 6->16 5x5 (14x14), batch 16   2.43   2.81   2.26   1.82   1.31
=================================  =====  =====  =====  =====  =====

So with them: Linear layers (and 1x1 convolutions) of at least 100k weights at density <= 0.3
and of 20k to 100k weights at <= 0.2 for batches of 64 or more; of 100k weights or more at
<= 0.2 for batches of 2 to 63 (``NATIVE_THRESHOLDS``, ``NATIVE_SMALL_BATCH``); stride-1 k x k
convolutions at density <= 0.2, or <= 0.5 where an output channel reduces over fewer than
``CONV_MIN_REDUCTION`` weights. A single example runs torch's matrix-vector product, so the
torch limits below apply to it. The tables below are the limits without the native kernels.

The torch rule comes from timing torch's CSR kernels (MKL) against
dense ones on a CPU for Linear layers of 1k to 1M weights and 1x1 convolutions, at batch
sizes 1, 16 and 256. The sparse product pays a fixed cost per call and reaches only a small
fraction of the dense kernel's arithmetic rate, so it wins only on large layers at low
density, and by about the same margin at every batch size:

============================  =====================================
weights in the layer (out*in)  CSR on CPU when the density is at most
============================  =====================================
>= 500,000                    0.15
>= 100,000                    0.07
< 100,000                     never (call overhead dominates)
============================  =====================================

k x k convolutions (``to_sparse(..., kxk=True)``; form ``"taps"``,
:class:`~underbudget.deploy.sparse_conv.SparseConv2d`) were timed against torch's dense
convolution (oneDNN) on one CPU thread at batch sizes 1, 16 and 256, for LeNet-5's and
ResNet-20's shapes and random zero patterns. The taps form wins where the nonzeros are few
per output channel and the dense kernel does many multiply-adds per output; it loses on
3x3 stems with 1 or 3 input channels (oneDNN is cheap per output there) and on strided
convolutions. Sparse over dense time, at as many nonzeros as output channels:

==========================  ===========  ========  ========  =========
layer (in, out, kernel)     weights/out  batch 1   batch 16  batch 256
==========================  ===========  ========  ========  =========
3, 6, 5x5 (32x32)           75           1.65x     1.79x     2.94x
6, 16, 5x5 (LeNet conv2)    150          1.64x     1.87x     1.56x
16, 16, 3x3 (32x32)         144          1.16x     1.60x     1.80x
64, 64, 3x3 (8x8)           576          1.25x     2.11x     1.58x
1, 6, 5x5 (LeNet conv1)     25           1.52x     1.20x     2.04x
1, 16, 3x3 (28x28)          9            0.32x     0.66x     1.16x
3, 16, 3x3 (ResNet stem)    27           0.41x     0.88x     1.07x
16, 32, 3x3, stride 2       144          < 0.6x at 58 nonzeros (0.4 % density)
==========================  ===========  ========  ========  =========

At twice as many nonzeros as output channels the gains shrink to 0.9-1.5x (LeNet conv2
1.24-1.29x, 64-channel 1.04-1.49x). So the threshold rule picks the taps form on a CPU only
for stride 1, at least ``CONV_MIN_REDUCTION`` (64) weights per output channel, and at most
as many nonzeros as output channels; everything else stays dense. This is conservative: at
10 % density LeNet-5's first convolution is faster as taps at batch 256 (1.6x) but not at
batch 16; ``rule="measure"`` finds such layers at the caller's batch size.

On CUDA, cuSPARSE's CSR loses to dense GEMM at these sizes, so the threshold rule keeps
layers dense there, except Linear layers whose weights already follow the 2:4 pattern
(at most two nonzeros in every four consecutive inputs) on a GPU with semi-structured kernels
(compute capability 8.0 or newer), with both dimensions multiples of 64 and at least
``SEMI_MIN_DIM``. The measured rule (``rule="measure"``) times both forms of each layer at
the caller's batch size on the caller's device and keeps the sparse one only when it is at
least ``MARGIN`` times faster.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from underbudget.deploy import native

CPU_THRESHOLDS: tuple[tuple[int, float], ...] = ((500_000, 0.15), (100_000, 0.07))
NATIVE_THRESHOLDS: tuple[tuple[int, float], ...] = ((100_000, 0.3), (20_000, 0.2))
NATIVE_SMALL_BATCH: tuple[tuple[int, float], ...] = ((100_000, 0.2),)
NATIVE_CONV_DENSITY = 0.2
NATIVE_CONV_FEW_INPUTS_DENSITY = 0.5
SEMI_MIN_DIM = 256
CONV_MIN_REDUCTION = 64
MARGIN = 1.1
RULES = ("threshold", "measure")


@dataclass
class LayerChoice:
    """What the converter decided for one layer, and why."""

    name: str
    kind: str  # linear | conv1x1 | conv
    shape: tuple[int, ...]
    density: float
    form: str  # dense | csr | 2:4 | taps
    reason: str
    dense_us: float | None = None
    sparse_us: float | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _native(device: torch.device, native_kernels: bool | None) -> bool:
    if device.type != "cpu":
        return False
    return native.available() if native_kernels is None else native_kernels


def csr_threshold(numel: int, device: torch.device, batch_size: int = 256,
                  native_kernels: bool | None = None) -> float:
    """Highest density at which the threshold rule picks CSR for a layer of ``numel`` weights.

    On a CPU with the native kernels (``native_kernels=None``: whether they are built) and
    batches of 2 or more, the limits are ``NATIVE_THRESHOLDS`` (``NATIVE_SMALL_BATCH`` below
    64 examples); otherwise ``CPU_THRESHOLDS`` (torch's CSR product), and 0 off the CPU.
    """
    if device.type != "cpu":
        return 0.0
    if _native(device, native_kernels) and batch_size > 1:
        table = NATIVE_THRESHOLDS if batch_size >= 64 else NATIVE_SMALL_BATCH
    else:
        table = CPU_THRESHOLDS
    for min_numel, max_density in table:
        if numel >= min_numel:
            return max_density
    return 0.0


def conv_threshold(layer: nn.Module, device: torch.device,
                   native_kernels: bool | None = None) -> tuple[int, str]:
    """(most nonzeros at which the threshold rule picks the sparse form, why) for a k x k conv.

    On a CPU, stride 1 only. With the native kernels: ``NATIVE_CONV_DENSITY`` of the weights,
    or ``NATIVE_CONV_FEW_INPUTS_DENSITY`` where an output channel reduces over fewer than
    ``CONV_MIN_REDUCTION`` weights (oneDNN is slow on such stems). With torch's kernels only:
    as many nonzeros as output channels, and only for at least ``CONV_MIN_REDUCTION`` weights
    per output. Otherwise -1 (always dense). See the module's tables.
    """
    if device.type != "cpu":
        return -1, f"the sparse convolution stays dense on {device.type}"
    if tuple(layer.stride) != (1, 1):
        return -1, "strided convolutions stay dense"
    reduction = int(layer.weight[0].numel())
    if _native(device, native_kernels):
        few = reduction < CONV_MIN_REDUCTION
        limit = NATIVE_CONV_FEW_INPUTS_DENSITY if few else NATIVE_CONV_DENSITY
        why = (f"native kernel, density <= {limit}"
               + (f" ({reduction} weights per output channel)" if few else ""))
        return int(limit * layer.weight.numel()), why
    if reduction < CONV_MIN_REDUCTION:
        return -1, (f"{reduction} weights per output channel < {CONV_MIN_REDUCTION}: "
                    "the dense kernel is cheap per output")
    return int(layer.out_channels), "at most one nonzero per output channel, stride 1, CPU"


def is_two_four(weight: Tensor) -> bool:
    """True when every group of four consecutive inputs of every row has <= 2 nonzeros."""
    w = weight.detach().reshape(weight.shape[0], -1)
    if w.shape[1] % 4:
        return False
    return bool(((w != 0).reshape(w.shape[0], -1, 4).sum(-1) <= 2).all())


def two_four_mask(weight: Tensor) -> Tensor:
    """Bool mask keeping the two largest-magnitude weights of every four consecutive inputs."""
    w = weight.detach().reshape(weight.shape[0], -1)
    if w.shape[1] % 4:
        raise ValueError(f"2:4 needs the input size to be a multiple of 4, got {w.shape[1]}")
    groups = w.abs().reshape(w.shape[0], -1, 4)
    top = groups.topk(2, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return mask.reshape(weight.shape)


_SEMI_CACHE: dict[str, tuple[bool, str]] = {}


def semi_structured_supported(device: torch.device | str) -> tuple[bool, str]:
    """(True, "") when 2:4 semi-structured kernels run on ``device``; else (False, why)."""
    device = torch.device(device)
    if device.type != "cuda":
        return False, f"2:4 kernels need a CUDA GPU (device is {device.type})"
    key = str(device)
    if key not in _SEMI_CACHE:
        _SEMI_CACHE[key] = _probe_semi(device)
    return _SEMI_CACHE[key]


def _probe_semi(device: torch.device) -> tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, "CUDA is not available"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return False, f"2:4 kernels need compute capability >= 8.0, the GPU has {major}.{minor}"
    try:
        from torch.sparse import to_sparse_semi_structured

        w = torch.tensor([0, 0, 1, 1], dtype=torch.bfloat16, device=device).tile((64, 16))
        x = torch.ones(64, 64, dtype=torch.bfloat16, device=device)
        torch.nn.functional.linear(x, to_sparse_semi_structured(w))
        torch.cuda.synchronize(device)
    except Exception as exc:  # missing backend, unsupported build: stay dense, say why
        return False, f"2:4 kernels failed on this GPU ({type(exc).__name__}: {exc})"
    return True, ""


def semi_structured_fits(layer: nn.Module, device: torch.device) -> tuple[bool, str]:
    """Whether a Linear layer can run 2:4 on ``device`` (pattern, shape, GPU), with why not."""
    if not isinstance(layer, nn.Linear):
        return False, "2:4 is used for Linear layers only"
    ok, why = semi_structured_supported(device)
    if not ok:
        return False, why
    out_f, in_f = layer.weight.shape
    if out_f % 64 or in_f % 64:
        return False, f"2:4 needs both dimensions multiples of 64, the layer is {out_f}x{in_f}"
    if not is_two_four(layer.weight):
        return False, "the weights do not follow the 2:4 pattern"
    return True, ""


def _interleaved_us(first: Callable[[], object], second: Callable[[], object],
                    device: torch.device, rounds: int = 5) -> tuple[float, float]:
    """Best-of-rounds microseconds per call of two functions, timed alternately."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in (first, second):
        fn()
    sync()
    start = time.perf_counter()
    first()
    sync()
    reps = max(1, min(200, int(2e-3 / max(time.perf_counter() - start, 1e-7))))
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for i, fn in enumerate((first, second)):
            sync()
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            sync()
            best[i] = min(best[i], (time.perf_counter() - start) / reps)
    return best[0] * 1e6, best[1] * 1e6


def measure_layer(dense: nn.Module, sparse: nn.Module, example: Tensor,
                  device: torch.device) -> tuple[float, float]:
    """(dense, sparse) microseconds per call of two forms of one layer on ``example``."""
    with torch.inference_mode():
        return _interleaved_us(lambda: dense(example), lambda: sparse(example), device)
