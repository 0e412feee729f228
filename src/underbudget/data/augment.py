"""Batched, seeded augmentation on the training device: resize, random crop with zero padding,
horizontal flip. One gather per batch; no per-sample Python loop."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from underbudget.data.convert import resize_float, resize_images
from underbudget.errors import ConfigError


@dataclass(frozen=True)
class Augment:
    """Random crop (after zero padding by ``crop_padding``), random flip, optional resize.

    Call it with a batch (N, C, H, W), uint8 or float, on any device, and a ``torch.Generator``.
    One random integer per image (its crop offset and, with ``flip``, its coin) is drawn on the
    generator's device, so a CPU generator gives the same crops and flips whatever device holds
    the batch.
    ``resize`` is applied first (bilinear, deterministic).
    """

    crop_padding: int = 0
    flip: bool = False
    resize: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.crop_padding, bool) or not isinstance(self.crop_padding, int):
            raise ConfigError(f"crop_padding must be an integer >= 0, got {self.crop_padding!r}")
        if self.crop_padding < 0:
            raise ConfigError(f"crop_padding must be >= 0, got {self.crop_padding}")
        if self.resize is not None and (
            isinstance(self.resize, bool) or not isinstance(self.resize, int) or self.resize < 1
        ):
            raise ConfigError(f"resize must be a positive integer or None, got {self.resize!r}")

    @property
    def random(self) -> bool:
        """Whether the augmentation draws random numbers at all."""
        return self.crop_padding > 0 or bool(self.flip)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if x.dim() != 4:
            raise ConfigError(f"Augment expects a batch (N, C, H, W), got shape {tuple(x.shape)}")
        if self.resize is not None:
            x = (
                resize_images(x, self.resize)
                if x.dtype == torch.uint8
                else resize_float(x, self.resize)
            )
        if not self.random or x.shape[0] == 0:
            return x
        n, c, h, w = x.shape
        p = self.crop_padding
        where = generator.device if generator is not None else "cpu"
        if p == 0:
            flips = torch.rand(n, generator=generator, device=where) < 0.5
            return torch.where(flips.to(x.device).view(n, 1, 1, 1), x.flip(3), x)
        # one gather over the flattened zero-padded planes: output pixel (r, q) of an image
        # cropped at (oy, ox) reads (oy + r) * width + ox + q, or ox + w - 1 - q when flipped
        k = 2 * p + 1
        choices = k * k * (2 if self.flip else 1)  # uniform over offsets (and the coin)
        pick = torch.randint(0, choices, (n,), generator=generator, device=where).to(x.device)
        width = w + 2 * p
        if choices * h * w <= _TABLE_LIMIT:
            source = _source_table(h, w, p, bool(self.flip), x.device).index_select(0, pick)
        else:
            grids = _source_grids(h, w, width, x.device)
            flips = pick % 2 if self.flip else torch.zeros_like(pick)
            offset = pick // 2 if self.flip else pick
            base = (offset // k) * width + offset % k
            source = grids.index_select(0, flips).add_(base.view(n, 1))
        padded = F.pad(x, (p, p, p, p)).view(n, c, -1)
        out = padded.gather(2, source.view(n, 1, h * w).expand(n, c, h * w))
        return out.view(n, c, h, w)


#: largest (choices x pixels) index table kept per shape; beyond it sources are computed per call
_TABLE_LIMIT = 1 << 21


@functools.lru_cache(maxsize=32)
def _source_grids(h: int, w: int, width: int, device: torch.device) -> torch.Tensor:
    """Flattened source offsets of an (h, w) crop at (0, 0): row 0 plain, row 1 mirrored."""
    rows = torch.arange(h, device=device).view(h, 1) * width
    cols = torch.arange(w, device=device)
    return torch.stack([(rows + cols).reshape(-1), (rows + cols.flip(0)).reshape(-1)])


@functools.lru_cache(maxsize=16)
def _source_table(h: int, w: int, p: int, flip: bool, device: torch.device) -> torch.Tensor:
    """Source offsets for every choice ``(oy * k + ox) * 2 + flipped`` (or ``oy * k + ox``)."""
    k, width = 2 * p + 1, w + 2 * p
    grids = _source_grids(h, w, width, device)[: 2 if flip else 1]  # (flips, h * w)
    offsets = torch.arange(k, device=device)
    base = (offsets.view(k, 1) * width + offsets.view(1, k)).reshape(-1, 1, 1)  # (k*k, 1, 1)
    return (base + grids.unsqueeze(0)).reshape(-1, h * w)
