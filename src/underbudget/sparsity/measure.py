"""The measured state of a MaskSet, logged at every mask change."""

from __future__ import annotations

from typing import Any

from torch import nn

from underbudget.sparsity.cost import FlopProfile, profile_flops
from underbudget.sparsity.mask import MaskSet


def mask_report(
    masks: MaskSet,
    model: nn.Module | None = None,
    input_shape: Any = None,
    profile: FlopProfile | None = None,
) -> dict[str, Any]:
    """Densities and counts measured from ``masks`` (and FLOPs when the input is known).

    Keys: ``density`` (over prunable weights), ``nonzeros``, ``prunable``, ``layer_densities``,
    ``layer_nonzeros``; with ``model``: ``density_all`` (over all parameters); with
    ``input_shape`` or ``profile`` too: ``flops_dense`` and ``flops_nonzero`` of one forward
    pass per sample (see :mod:`underbudget.sparsity.cost`).
    """
    layer_nnz = masks.layer_nonzeros()
    numel = masks.numel()
    nnz = sum(layer_nnz.values())
    report: dict[str, Any] = {
        "density": nnz / numel if numel else 1.0,
        "nonzeros": nnz,
        "prunable": numel,
        "layer_densities": {n: layer_nnz[n] / max(masks[n].numel(), 1) for n in masks},
        "layer_nonzeros": layer_nnz,
    }
    if model is not None:
        report["density_all"] = masks.density_all(model)
        if profile is None and input_shape is not None:
            profile = profile_flops(model, input_shape)
        if profile is not None:
            counts = profile.count(model, masks)
            report["flops_dense"] = counts["flops_dense"]
            report["flops_nonzero"] = counts["flops_nonzero"]
    return report
