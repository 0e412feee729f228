"""The visual prompt of a VP transfer run, and the check that the source accepts its frame."""

from __future__ import annotations

import torch
from torch import nn

from ...errors import ConfigError
from ...transfer import ExpansivePrompt, PadPrompt, PatchPrompt, ShrinkPadPrompt
from .config import VPStage


def make_prompt(kind: str, size: int, channels: int, vp: VPStage) -> nn.Module:
    """The visual prompt ``kind`` whose output is ``vp.frame`` (default ``size``) pixels wide."""
    frame = vp.frame or size
    r = vp.r or max(1, round(5 * frame / 7))
    if kind == "expansive":
        return ExpansivePrompt(frame, r, channels)
    if kind in ("pad", "shrink-pad"):
        cls = PadPrompt if kind == "pad" else ShrinkPadPrompt
        return cls(frame, vp.pad or max(1, (frame - r) // 2), channels)
    return PatchPrompt(frame, vp.patch or max(1, frame // 4), channels)


@torch.no_grad()
def check_frame(model: nn.Module, frame: int, channels: int, num_classes: int, size: int) -> None:
    """Raise one ConfigError unless ``model`` maps a ``frame``-pixel image to its logits."""
    if frame == size:
        return
    was = model.training
    model.eval()
    probe = torch.zeros(1, channels, frame, frame, device=next(model.parameters()).device)
    try:
        shape = tuple(model(probe).shape)
    except Exception as exc:  # any failure of the probe means the frame does not fit
        shape = f"an error ({type(exc).__name__}: {str(exc).splitlines()[0]})"
    finally:
        model.train(was)
    if shape != (1, num_classes):
        raise ConfigError(
            f"method.vp.frame={frame}: the source model was built for {size}x{size} inputs and "
            f"gives {shape} on a {frame}x{frame} image instead of {num_classes} logits; use a "
            f"source model with a global pool (e.g. convnet, resnet18) or method.vp.frame={size}"
        )
