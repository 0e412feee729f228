"""Visual prompts: learnable input perturbations that reprogram a frozen source model.

All prompts take target images ``x`` of shape (B, C, H, W), float in [0, 1], any H and W, and
return (B, channels, S, S) images with ``S = input_size``, the side of the frame fed to the
source model, in image space BEFORE normalization (the caller normalizes with the SOURCE
mean/std). ``S`` need not be the source's training resolution: any S works for a source model
with a global pool. A single-channel input is repeated to ``channels`` channels. Resizing is
bilinear (``align_corners=False``, no antialiasing) and is skipped when the image already has
the target size. With ``theta`` the learnable tensor and ``M`` the prompt's 0/1 mask:

- :class:`ExpansivePrompt` (ILM-VP, Chen et al. 2023): ``out = place(resize(x, r), S) +
  M * sigmoid(theta)``, where ``place`` puts the r×r image at rows/cols ``[l, l + r)`` of a
  zero S×S canvas with ``l = (S - r) // 2`` (an odd margin leaves the extra pixel at the
  bottom/right) and ``M`` is 1 OUTSIDE that window. ``theta`` has shape (channels, S, S),
  initialised to 0; entries inside the window never affect the output, so the effective
  parameter count is ``channels * (S**2 - r**2)``: 147,456 for ILM-VP's 32-pixel CIFAR image
  in a 224-pixel frame.
- :class:`PadPrompt` (Bahng et al. 2022, the padding prompt): the image keeps the full frame,
  ``out = resize(x, S) + M * theta`` with ``M`` 1 on the outer ``p`` pixels of every side (a
  learnable border drawn OVER the image's own outer pixels), no sigmoid by default;
  ``channels * (S**2 - (S - 2p)**2)`` parameters (69,840 for Bahng et al.'s p = 30 at 224).
- :class:`ShrinkPadPrompt`: the image is shrunk to ``S - 2p`` and framed by a learnable border
  of width ``p``, ``out = place(resize(x, S - 2p), S) + M * theta`` (the expansive geometry
  with ``r = S - 2p``, no sigmoid); the same count as the pad prompt, but no image pixel is
  covered.
- :class:`PatchPrompt` (Bahng et al. 2022, fixed patch): the image is resized to S×S and a
  learnable ``patch``×``patch`` square is added at the top-left corner:
  ``out = resize(x, S) + M * theta`` with ``theta`` of shape (channels, patch, patch) placed at
  rows/cols ``[0, patch)``; ``channels * patch**2`` parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from underbudget.errors import ConfigError


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def resize(x: Tensor, size: int) -> Tensor:
    """Bilinear resize of (B, C, H, W) to (B, C, size, size); identity when already that size."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class _Prompt(nn.Module):
    """Shared input checks, geometry and bookkeeping of the prompts."""

    input_size: int
    channels: int
    mask: Tensor

    def _prepare(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ConfigError(
                f"a visual prompt expects images shaped (batch, channels, height, width), "
                f"got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ConfigError(
                f"a visual prompt expects float images in [0, 1], got dtype {x.dtype}: "
                "convert with x.float() / 255"
            )
        if x.shape[1] != self.channels:
            if x.shape[1] == 1:
                x = x.expand(-1, self.channels, -1, -1)
            else:
                raise ConfigError(
                    f"the target images have {x.shape[1]} channels but the prompt was built "
                    f"for {self.channels}: build it with channels={x.shape[1]} or convert the "
                    "images"
                )
        return x.to(self.theta.dtype)

    @property
    def num_parameters(self) -> int:
        """Number of prompt values that can change the output (the documented formula)."""
        return int(self.mask.sum()) * self.channels

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, channels={self.channels}"


class ExpansivePrompt(_Prompt):
    """ILM-VP's expansive prompt: image shrunk to ``r``×``r`` in the centre, sigmoid border."""

    def __init__(self, input_size: int, r: int, channels: int = 3, sigmoid: bool = True):
        super().__init__()
        self.input_size = _positive("input_size", input_size)
        self.r = _positive("r (the resized image side)", r)
        self.channels = _positive("channels", channels)
        if r > input_size:
            raise ConfigError(
                f"the resized image side r={r} exceeds the source input size {input_size}; "
                f"choose r <= {input_size}"
            )
        self.sigmoid = sigmoid
        self.offset = (input_size - r) // 2
        mask = torch.ones(1, input_size, input_size)
        window = slice(self.offset, self.offset + r)
        mask[:, window, window] = 0
        self.register_buffer("mask", mask)
        self.theta = nn.Parameter(torch.zeros(channels, input_size, input_size))

    @property
    def window(self) -> tuple[slice, slice]:
        """Row and column slices of the output where the resized image sits."""
        w = slice(self.offset, self.offset + self.r)
        return w, w

    def prompt(self) -> Tensor:
        """The additive prompt, (channels, S, S), zero inside the image window."""
        values = torch.sigmoid(self.theta) if self.sigmoid else self.theta
        return self.mask * values

    def forward(self, x: Tensor) -> Tensor:
        x = resize(self._prepare(x), self.r)
        lo = self.offset
        hi = self.input_size - self.r - lo
        return F.pad(x, (lo, hi, lo, hi)) + self.prompt()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, sigmoid={self.sigmoid}"


def _check_pad(input_size: int, pad: int) -> None:
    _positive("input_size", input_size)
    _positive("pad", pad)
    if 2 * pad >= input_size:
        raise ConfigError(
            f"pad={pad} leaves no room for the image in a {input_size}×{input_size} input; "
            f"choose pad < {(input_size + 1) // 2}"
        )


class ShrinkPadPrompt(ExpansivePrompt):
    """The image shrunk to ``S - 2p`` inside a learnable border of width ``p`` (no sigmoid)."""

    def __init__(self, input_size: int, pad: int, channels: int = 3, sigmoid: bool = False):
        _check_pad(input_size, pad)
        super().__init__(input_size, input_size - 2 * pad, channels, sigmoid=sigmoid)
        self.pad = pad

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pad={self.pad}"


class PadPrompt(_Prompt):
    """Bahng et al.'s padding prompt: the full-size image plus a learnable border of width p."""

    def __init__(self, input_size: int, pad: int, channels: int = 3, sigmoid: bool = False):
        super().__init__()
        _check_pad(input_size, pad)
        self.input_size = input_size
        self.pad = pad
        self.channels = _positive("channels", channels)
        self.sigmoid = sigmoid
        mask = torch.ones(1, input_size, input_size)
        mask[:, pad : input_size - pad, pad : input_size - pad] = 0
        self.register_buffer("mask", mask)
        self.theta = nn.Parameter(torch.zeros(channels, input_size, input_size))

    def prompt(self) -> Tensor:
        """The additive prompt, (channels, S, S), zero inside the border."""
        values = torch.sigmoid(self.theta) if self.sigmoid else self.theta
        return self.mask * values

    def forward(self, x: Tensor) -> Tensor:
        return resize(self._prepare(x), self.input_size) + self.prompt()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pad={self.pad}, sigmoid={self.sigmoid}"


class PatchPrompt(_Prompt):
    """Bahng et al.'s fixed patch: a learnable ``patch``×``patch`` square at the top-left."""

    def __init__(self, input_size: int, patch: int, channels: int = 3, sigmoid: bool = False):
        super().__init__()
        self.input_size = _positive("input_size", input_size)
        self.patch = _positive("patch", patch)
        self.channels = _positive("channels", channels)
        if patch > input_size:
            raise ConfigError(
                f"patch={patch} exceeds the source input size {input_size}; "
                f"choose patch <= {input_size}"
            )
        self.sigmoid = sigmoid
        mask = torch.zeros(1, input_size, input_size)
        mask[:, :patch, :patch] = 1
        self.register_buffer("mask", mask)
        self.theta = nn.Parameter(torch.zeros(channels, patch, patch))

    def prompt(self) -> Tensor:
        """The additive prompt on the full canvas, (channels, S, S)."""
        values = torch.sigmoid(self.theta) if self.sigmoid else self.theta
        rest = self.input_size - self.patch
        return F.pad(values, (0, rest, 0, rest))

    def forward(self, x: Tensor) -> Tensor:
        return resize(self._prepare(x), self.input_size) + self.prompt()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, patch={self.patch}, sigmoid={self.sigmoid}"
