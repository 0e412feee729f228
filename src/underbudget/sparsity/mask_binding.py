"""Masks paired with one model's parameters, as tensors ready to multiply.

A :class:`~underbudget.sparsity.mask.MaskSet` keeps one binding per model it is applied to.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from underbudget.errors import CheckpointError


class MaskBinding:
    """Parameters of one model paired with masks in their device, dtype and memory layout.

    A float mask multiplies about 3x faster than a bool one on CPU; the price is one extra
    weight-sized tensor per prunable parameter, on its device.
    """

    @torch.no_grad()
    def __init__(self, masks: dict[str, Tensor], model: nn.Module):
        self.params: list[nn.Parameter] = []
        self.keep: list[Tensor] = []
        for name, mask in masks.items():
            param = get_param(model, name)
            self.params.append(param)
            keep = torch.empty_like(param.detach(), memory_format=torch.preserve_format)
            self.keep.append(keep.copy_(mask))
        self.devices = [p.device for p in self.params]
        self.dtypes = [p.dtype for p in self.params]

    @torch.no_grad()
    def refresh(self, masks: dict[str, Tensor], model: nn.Module) -> bool:
        """Copy changed masks into the existing device tensors; False if the model changed."""
        for (name, mask), param, keep in zip(masks.items(), self.params, self.keep):
            try:
                if model.get_parameter(name) is not param:
                    return False
            except AttributeError:
                return False
            keep.copy_(mask, non_blocking=True)
        return True

    def valid(self) -> bool:
        return all(
            p.device == d and p.dtype == t and p.stride() == k.stride()
            for p, d, t, k in zip(self.params, self.devices, self.dtypes, self.keep)
        )

    @torch.no_grad()
    def apply(self) -> None:
        torch._foreach_mul_([p.data for p in self.params], self.keep)

    @torch.no_grad()
    def mask_grads(self, keep: list[Tensor] | None = None) -> None:
        keep = self.keep if keep is None else keep
        grads, masks = [], []
        for p, m in zip(self.params, keep):
            g = p.grad
            if g is not None and not g.is_sparse:
                grads.append(g)
                masks.append(m)
        if grads:
            torch._foreach_mul_(grads, masks)


def get_param(model: nn.Module, name: str) -> nn.Parameter:
    """The parameter ``name`` of ``model`` (CheckpointError naming the mismatch otherwise)."""
    try:
        return model.get_parameter(name)
    except AttributeError as exc:
        raise CheckpointError(
            f"mask names parameter {name!r}, which {type(model).__name__} does not have; "
            "these masks belong to another architecture (re-create them for this model)"
        ) from exc
