"""Native sparse kernels for CPU inference, compiled from ``native_kernels.c`` on first use.

torch's CSR product reaches a small fraction of the dense kernel's rate on the layer sizes of
small classifiers, so a pruned layer at 10 % density is barely faster through it. The two
kernels here (a CSR Linear and a stride-1 direct convolution, both vectorised over outputs)
touch only the nonzeros at close to the machine's multiply-add rate.

The shared library is built with the system C compiler (``$UNDERBUDGET_CC``, else ``cc``/
``gcc``) into ``$UNDERBUDGET_CACHE/native`` (default ``~/.cache/underbudget/native``), keyed
by the source, the flags and the CPU, and written atomically so that concurrent processes
never load a half-written file. Without a compiler, or with ``UNDERBUDGET_NATIVE=0``,
:func:`available` is False and the deploy layers use torch's kernels instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("native_kernels.c")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=gnu11")
LANES = 16  # as in native_kernels.c
ABI_VERSION = 2

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
_reason = ""
_disabled = 0


def _compiler() -> str | None:
    chosen = os.environ.get("UNDERBUDGET_CC")
    if chosen:
        return shutil.which(chosen)
    return next((p for p in map(shutil.which, ("cc", "gcc", "clang")) if p), None)


def _cpu_key() -> str:
    """What the compiled code depends on besides the source: the CPU and its features."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def cache_dir() -> Path:
    """Where compiled kernels are kept."""
    root = os.environ.get("UNDERBUDGET_CACHE") or Path.home() / ".cache" / "underbudget"
    return Path(root) / "native"


def _build(compiler: str) -> Path:
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(), compiler.encode(),
                                     _cpu_key().encode()])).hexdigest()[:16]
    target = cache_dir() / f"ub_kernels_{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", tmp],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {proc.stderr.strip()[:500]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _bind(lib: ctypes.CDLL) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.ub_abi_version.restype = i32
    lib.ub_csr_linear.argtypes = [p, i64, i64, i32, p, p, p, i64, p, p, i32]
    lib.ub_csr_linear.restype = i32
    lib.ub_sparse_conv2d.argtypes = [p, i64, i64, i64, i64, i64, i64, i64, i64, p, p, p, i64,
                                     p, i64, i64, i64, i32, i32, p, i32]
    lib.ub_sparse_conv2d.restype = i32


def _load() -> ctypes.CDLL | None:
    global _lib, _tried, _reason
    if _disabled:
        return None
    with _lock:
        if _tried:
            return _lib
        _tried = True
        if os.environ.get("UNDERBUDGET_NATIVE", "1") == "0":
            _reason = "disabled by UNDERBUDGET_NATIVE=0"
            return None
        compiler = _compiler()
        if compiler is None:
            _reason = "no C compiler found (set UNDERBUDGET_CC or install gcc)"
            return None
        try:
            lib = ctypes.CDLL(str(_build(compiler)))
            _bind(lib)
            if lib.ub_abi_version() != ABI_VERSION:
                raise RuntimeError("compiled kernels report another ABI version")
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            _reason = f"native kernels unavailable: {exc}"
            warnings.warn(f"{_reason}; sparse layers use torch's kernels", stacklevel=3)
            return None
        _lib = lib
        return lib


def available() -> bool:
    """Whether the native kernels are built and loaded (compiling them on the first call)."""
    return _load() is not None


@contextlib.contextmanager
def disabled():
    """Within the block, :func:`available` is False: torch's kernels run (comparisons)."""
    global _disabled
    _disabled += 1
    try:
        yield
    finally:
        _disabled -= 1


def unavailable_reason() -> str:
    """Why :func:`available` is False ('' when it is True or was not asked yet)."""
    return _reason


def reset() -> None:
    """Forget the loaded library so that the next call looks again (tests, env changes)."""
    global _lib, _tried, _reason
    with _lock:
        _lib, _tried, _reason = None, False, ""


def usable(x: Tensor) -> bool:
    """Whether ``x`` can go through the native kernels: float32 on the CPU, kernels built."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and available()


# Below this many vector multiply-adds a call runs on one thread: waking the others costs
# more than they would save.
PARALLEL_MIN_WORK = 20_000


def _threads(work: int) -> int:
    return torch.get_num_threads() if work >= PARALLEL_MIN_WORK else 1


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _kernels(floats: tuple[Tensor | None, ...],
             indices: tuple[tuple[Tensor, torch.dtype], ...]) -> ctypes.CDLL:
    """The loaded library, once every tensor is on the CPU in the dtype the C code reads:
    float32 for ``floats`` (None allowed), the given integer dtype for each index tensor."""
    lib = _load()
    if lib is None:
        raise RuntimeError(_reason or "native kernels unavailable or disabled")
    wanted = [(t, torch.float32) for t in floats if t is not None] + list(indices)
    for t, dtype in wanted:
        if t.device.type != "cpu" or t.dtype != dtype:
            raise ValueError(f"the native kernels take CPU {dtype} here (float32 data), got "
                             f"{t.dtype} on {t.device}")
    return lib


def _check(code: int) -> None:
    if code:
        raise MemoryError("native sparse kernel could not allocate its work buffers")


def csr_linear(x: Tensor, crow: Tensor, col: Tensor, values: Tensor, bias: Tensor | None,
               out_features: int) -> Tensor:
    """``x @ W^T + bias`` for 2-d float32 ``x`` (n, in), W given by int32 CSR parts.

    The result is the transposed view of an (out, n) tensor: a following sparse layer reads
    it in place. An ``x`` that is such a view (``x.t()`` contiguous) is read without a copy.
    """
    lib = _kernels((x, values, bias), ((crow, torch.int32), (col, torch.int32)))
    n, in_features = x.shape
    feature_major = x.stride(0) == 1 and x.stride(1) == n and n > 1
    if not feature_major:
        x = x.contiguous()
    y = torch.empty(out_features, n, dtype=torch.float32)
    bias = None if bias is None else bias.detach().contiguous()
    _check(lib.ub_csr_linear(_ptr(x), n, in_features, int(feature_major), _ptr(crow),
                             _ptr(col), _ptr(values), out_features, _ptr(bias), _ptr(y),
                             _threads(values.numel() * -(-n // LANES))))
    return y.t()


def conv_offsets(index: Tensor, padded_width: int, padded_height: int, in_channels: int,
                 out_channels: int, dilation: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """(crow int32, offsets int64) of a conv weight's nonzeros ``index`` (o, c, i, j rows,
    sorted by o) into a zero-padded image of the given size."""
    o, c, i, j = index.unbind(1)
    plane = padded_height * padded_width
    offsets = c * plane + i * dilation[0] * padded_width + j * dilation[1]
    counts = torch.bincount(o, minlength=out_channels)
    crow = torch.zeros(out_channels + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(counts, 0)
    return crow.to(torch.int32), offsets.to(torch.int64).contiguous()


def sparse_conv2d(x: Tensor, crow: Tensor, offsets: Tensor, values: Tensor,
                  bias: Tensor | None, out_channels: int, pad4: tuple[int, int, int, int],
                  kernel: tuple[int, int], dilation: tuple[int, int], relu: bool = False,
                  pool: bool = False) -> Tensor:
    """A stride-1 convolution of float32 NCHW ``x`` from its nonzeros; ``pad4`` as F.pad's
    (left, right, top, bottom); ``offsets`` from :func:`conv_offsets` for this padded size.

    ``relu`` and ``pool`` apply ``relu`` and ``max_pool2d(., 2)`` (floor) to the result as
    it is written: ``pool2(relu(conv(x)))`` in one pass.
    """
    lib = _kernels((x, values, bias), ((crow, torch.int32), (offsets, torch.int64)))
    x = x.contiguous()
    n, c, h, w = x.shape
    left, right, top, bottom = pad4
    ph, pw = h + top + bottom, w + left + right
    oh, ow = ph - dilation[0] * (kernel[0] - 1), pw - dilation[1] * (kernel[1] - 1)
    if oh <= 0 or ow <= 0:
        raise ValueError(f"input {tuple(x.shape)} (padded) is smaller than the kernel")
    y = torch.empty(n, out_channels, *((oh // 2, ow // 2) if pool else (oh, ow)),
                    dtype=torch.float32)
    if pool and (oh < 2 or ow < 2):
        raise ValueError(f"a {oh}x{ow} output is too small for a 2x2 pool")
    extra = dilation[1] * (kernel[1] - 1) + LANES
    bias = None if bias is None else bias.detach().contiguous()
    _check(lib.ub_sparse_conv2d(_ptr(x), n, c, h, w, top, left, ph, pw, _ptr(crow),
                                _ptr(offsets), _ptr(values), out_channels, _ptr(bias), oh, ow,
                                extra, int(relu), int(pool), _ptr(y),
                                _threads(values.numel() * n * -(-oh * pw // LANES))))
    return y
