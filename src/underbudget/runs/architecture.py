"""The architecture of a run's deployed model, read from its config and checked against its
weights, and that architecture rebuilt (what ``underbudget export`` writes in a model card
and what the hidden-cost figures count); used by export and report alike.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ..config import DataConfig
from ..models import create_model
from ..quant import insert_activation_quantizers
from .deployed import RunModel
from .preflight import describe_data

__all__ = ["architecture", "build_model"]


def architecture(src: RunModel, state: dict[str, Tensor]) -> dict:
    """Model name, options and input/output shape; ``verified`` when that architecture has
    exactly the weights' names and shapes (``order``: its state-dict order, else None)."""
    model = src.config.get("model") or {}
    data = dict(src.config.get("data") or {})
    known = {f.name for f in dataclasses.fields(DataConfig)}
    info = describe_data(DataConfig(**{k: v for k, v in data.items() if k in known}))
    arch = {
        "model": model.get("name"), "kwargs": model.get("kwargs") or {},
        "num_classes": info.num_classes, "in_channels": info.channels,
        "image_size": info.image_size,
        "parameters": sum(t.numel() for t in state.values() if t.is_floating_point()),
        "activation_quantization": ({"bits": src.act_bits, "layers": src.act_layers}
                                    if src.act_layers else None),
    }
    arch["order"] = _fits(arch, state)
    arch["verified"] = arch["order"] is not None
    return arch


def build_model(arch: dict, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The plain architecture a card describes (with its activation quantizers, if any)."""
    with torch.device(device):
        model = create_model(arch["model"], num_classes=arch["num_classes"],
                             in_channels=arch["in_channels"], image_size=arch["image_size"],
                             **arch["kwargs"])
    act = arch.get("activation_quantization")
    if act:
        insert_activation_quantizers(model, act["bits"] or 8, layers=act["layers"])
    return model


def _fits(arch: dict, state: dict[str, Tensor]) -> list[str] | None:
    """The described architecture's key order when it has exactly the exported tensors'
    names and shapes (built on the meta device: no memory, no time), else None."""
    if None in (arch["model"], arch["num_classes"], arch["in_channels"], arch["image_size"]):
        return None
    try:
        expected = build_model(arch, "meta").state_dict()
    except Exception:  # the card then says the architecture could not be rebuilt
        return None
    same = set(expected) == set(state) and all(
        tuple(expected[k].shape) == tuple(state[k].shape) for k in state)
    return list(expected) if same else None
