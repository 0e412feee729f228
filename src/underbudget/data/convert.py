"""Shape conversions of uint8 image tensors: resize (bilinear) and gray <-> RGB."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from underbudget.errors import ConfigError

#: ITU-R 601-2 luma weights, the ones PIL uses for RGB -> L
LUMA = (0.299, 0.587, 0.114)


def _size2(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    h, w = (int(s) for s in size)
    if h < 1 or w < 1:
        raise ConfigError(f"image size must be positive, got {size}")
    return h, w


def resize_float(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a float batch (N, C, H, W), antialiased when shrinking."""
    h, w = _size2(size)
    if tuple(x.shape[-2:]) == (h, w):
        return x
    shrink = h < x.shape[-2] or w < x.shape[-1]
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)


def resize_images(
    images: torch.Tensor, size: int | tuple[int, int], chunk: int = 2048
) -> torch.Tensor:
    """Bilinear resize of uint8 images (N, C, H, W) -> uint8, rounded, in chunks to bound memory."""
    h, w = _size2(size)
    if tuple(images.shape[-2:]) == (h, w):
        return images
    out = torch.empty((*images.shape[:2], h, w), dtype=torch.uint8, device=images.device)
    for start in range(0, images.shape[0], chunk):
        part = resize_float(images[start : start + chunk].float(), (h, w))
        out[start : start + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Gray (1) <-> RGB (3) for uint8 or float (N, C, H, W) batches."""
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 (gray) or 3 (RGB), got {channels}")
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if have == 3 and channels == 1:
        weights = torch.tensor(LUMA, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
        gray = (images.float() * weights).sum(dim=1, keepdim=True)
        if images.dtype == torch.uint8:
            return gray.round_().clamp_(0, 255).to(torch.uint8)
        return gray.to(images.dtype)
    raise ConfigError(f"cannot convert {have}-channel images to {channels} channels")
