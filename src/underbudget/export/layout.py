"""Compact tensor layouts in one safetensors file: dense, bitmask, CSR and integer codes.

Each tensor of a state dict is stored in whichever layout is smallest for it:

- ``dense``: the tensor itself, under its own name;
- ``bitmask``: ``NAME:mask`` (one bit per element, packed little-endian into uint8) and
  ``NAME:values`` (the nonzero values in row-major order);
- ``csr``: over the tensor viewed as ``(shape[0], -1)``: ``NAME:crow`` (row starts),
  ``NAME:col`` (column of each nonzero) and ``NAME:values``; indices use int16 when they fit;
- ``quantized``: integer codes ``NAME:q`` and one float scale per output channel
  ``NAME:scale``, the weight being ``codes * scale``. The codes (int8 up to 8 bits, else
  int16) are themselves stored dense, bitmask, CSR or ``bitpacked``: ``b`` bits per code
  (``code + 2**(b-1) - 1``, unsigned, little-endian) in one uint8 stream.

The file's metadata holds ``format`` (``underbudget-export``), ``format_version`` and
``tensors``: a JSON mapping from each tensor not stored dense to its spec (layout, shape,
dtype; bits and offset for codes). A dense tensor is simply the file's tensor of that name.
Decoding gives back every value exactly; the sign of a zero is not kept (a pruned weight
stored as ``-0.0`` comes back as ``0.0``, an equal value).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

from ..errors import CheckpointError
from ..utils.tensorfile import safetensors_bytes

FORMAT = "underbudget-export"
FORMAT_VERSION = "1"
_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_bits(mask: Tensor) -> Tensor:
    """Bool tensor -> uint8, eight elements per byte (little-endian bit order)."""
    flat = mask.reshape(-1).to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % 8)])
    return (flat.view(-1, 8) * _BITS).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, numel: int) -> Tensor:
    """Inverse of :func:`pack_bits` for a tensor of ``numel`` elements."""
    bits = (packed.view(-1, 1) & _BITS) != 0
    return bits.reshape(-1)[:numel]


def _index_dtype(largest: int) -> torch.dtype:
    return torch.int16 if largest <= 2**15 - 1 else (
        torch.int32 if largest <= 2**31 - 1 else torch.int64)


def _rows(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1) if t.dim() >= 2 else t.reshape(1, -1)


def _candidates(t: Tensor, bits: int | None = None) -> dict[str, int]:
    """Bytes each layout would take for ``t`` (``bits``: codes of that width, bit-packable)."""
    n, size = t.numel(), t.element_size()
    if n == 0 or t.dtype == torch.bool:
        return {"dense": n * size}
    nnz = int((t != 0).sum())
    rows, cols = _rows(t).shape
    packed = {"bitpacked": math.ceil(n * bits / 8)} if bits is not None and bits < 8 * size else {}
    return {**packed,
        "dense": n * size,
        "bitmask": math.ceil(n / 8) + nnz * size,
        "csr": (rows + 1) * torch.empty(0, dtype=_index_dtype(nnz)).element_size()
        + nnz * torch.empty(0, dtype=_index_dtype(max(cols - 1, 0))).element_size()
        + nnz * size,
    }


def encode(name: str, t: Tensor, layout: str | None = None,
           bits: int | None = None) -> tuple[dict[str, Tensor], dict]:
    """Store ``t`` in ``layout`` (default: the smallest); return its tensors and its spec.

    ``bits``: ``t`` holds signed integer codes of that width (allows ``bitpacked``).
    """
    t = t.detach().to("cpu").contiguous()
    sizes = _candidates(t, bits)
    layout = layout or min(sizes, key=lambda k: (sizes[k], k != "dense"))
    spec = {"layout": layout, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix(
        "torch.")}
    if layout == "dense":
        return {name: t}, spec
    if layout == "bitpacked":
        offset = 2 ** (bits - 1) - 1
        shifts = torch.arange(bits, dtype=torch.int64)
        fields = ((t.reshape(-1, 1).long() + offset) >> shifts) & 1
        return {f"{name}:packed": pack_bits(fields.bool())}, {**spec, "bits": bits,
                                                               "offset": offset}
    keep = t != 0
    values = t[keep]
    if layout == "bitmask":
        return {f"{name}:mask": pack_bits(keep), f"{name}:values": values}, spec
    rows = _rows(keep)
    counts = rows.sum(dim=1)
    crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(_index_dtype(values.numel()))
    col = rows.nonzero()[:, 1].to(_index_dtype(max(rows.shape[1] - 1, 0)))
    return {f"{name}:crow": crow, f"{name}:col": col, f"{name}:values": values}, spec


def decode(name: str, spec: Mapping, tensors: Mapping[str, Tensor]) -> Tensor:
    """The tensor that :func:`encode` (or :func:`encode_quantized`) stored under ``name``."""
    shape, layout = list(spec["shape"]), spec["layout"]
    dtype = getattr(torch, spec["dtype"])
    if layout == "dense":
        return tensors[name]
    if layout == "quantized":
        codes = decode(f"{name}:q", spec["codes"], tensors)
        scale = tensors[f"{name}:scale"]
        view = [-1] + [1] * (len(shape) - 1)
        return (codes.to(dtype) * scale.view(view)).to(dtype)
    numel = math.prod(shape)
    if layout == "bitpacked":
        bits, shifts = spec["bits"], torch.arange(spec["bits"], dtype=torch.int64)
        fields = unpack_bits(tensors[f"{name}:packed"], numel * bits).view(numel, bits)
        codes = (fields.long() << shifts).sum(dim=1) - spec["offset"]
        return codes.to(dtype).reshape(shape)
    values = tensors[f"{name}:values"]
    if layout == "bitmask":
        keep = unpack_bits(tensors[f"{name}:mask"], numel)
    elif layout == "csr":
        crow = tensors[f"{name}:crow"].long()
        rows = len(crow) - 1
        keep = torch.zeros(rows, numel // max(rows, 1), dtype=torch.bool)
        row_of = torch.repeat_interleave(torch.arange(rows), crow.diff())
        keep[row_of, tensors[f"{name}:col"].long()] = True
    else:
        raise CheckpointError(f"tensor {name!r} has unknown layout {layout!r}; export the "
                              "run again with this version")
    out = torch.zeros(numel, dtype=dtype)
    out[keep.reshape(-1)] = values
    return out.reshape(shape)


def encode_quantized(name: str, codes: Tensor, scale: Tensor, bits: int,
                     dtype: torch.dtype) -> tuple[dict[str, Tensor], dict]:
    """Integer ``codes`` (any layout that is smallest) and per-output-channel ``scale``."""
    stored, codes_spec = encode(f"{name}:q", codes, bits=bits)
    stored[f"{name}:scale"] = scale.detach().to("cpu").contiguous()
    spec = {"layout": "quantized", "shape": list(codes.shape), "bits": int(bits), "axis": 0,
            "dtype": str(dtype).removeprefix("torch."), "codes": codes_spec}
    return stored, spec


def export_bytes(entries: list[tuple[str, dict[str, Tensor], dict]],
                 metadata: Mapping[str, str] | None = None) -> bytes:
    """The safetensors file of encoded ``(name, tensors, spec)`` entries, in their order."""
    tensors: dict[str, Tensor] = {}
    for _, stored, _ in entries:
        tensors.update(stored)
    specs = {name: spec for name, _, spec in entries if spec["layout"] != "dense"}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION,
            "tensors": json.dumps(specs, separators=(",", ":"))}
    meta.update(metadata or {})
    return safetensors_bytes(tensors, meta)


def read_export(path: str | os.PathLike) -> dict[str, Tensor]:
    """The state dict in an exported file (any layout), or in a plain safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no exported model at {path}; run 'underbudget export RUN'")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"cannot read {path} ({exc}); export the run again") from None
    if meta.get("format") != FORMAT:
        return tensors
    specs = json.loads(meta["tensors"])
    out = {k: v for k, v in tensors.items() if not any(k.startswith(f"{n}:") for n in specs)}
    out.update((name, decode(name, spec, tensors)) for name, spec in specs.items())
    return out
