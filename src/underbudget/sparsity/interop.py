"""Conversion to and from ``torch.nn.utils.prune`` (``weight_orig`` / ``weight_mask``) form."""

from __future__ import annotations

from torch import nn
from torch.nn.utils import prune as torch_prune

from underbudget.errors import ConfigError
from underbudget.sparsity.mask import MaskSet
from underbudget.sparsity.targets import unwrap


def _split(name: str) -> tuple[str, str]:
    module, _, attr = name.rpartition(".")
    return module, attr


def to_torch_prune(model: nn.Module, masks: MaskSet) -> nn.Module:
    """Register ``masks`` as torch.nn.utils.prune custom masks (renames ``weight`` to
    ``weight_orig`` + ``weight_mask``; undo with :func:`from_torch_prune`). Returns the model."""
    model = unwrap(model)
    masks.validate(model)
    for name, mask in masks.items():
        mod_name, attr = _split(name)
        module = model.get_submodule(mod_name)
        param = getattr(module, attr)
        order = [f"{attr}_orig" if k == attr else k for k in module._parameters]
        torch_prune.custom_from_mask(module, attr, mask.to(param.device))
        _reorder(module, order)
    return model


def _reorder(module: nn.Module, order: list[str]) -> None:
    """Put parameters back in ``order`` (torch's prune appends the renamed one at the end)."""
    params = dict(module._parameters)
    module._parameters.clear()
    module._parameters.update({k: params[k] for k in order if k in params})
    module._parameters.update(params)


def from_torch_prune(model: nn.Module, remove: bool = True) -> MaskSet:
    """Read the masks of every torch.nn.utils.prune reparametrisation into a MaskSet.

    With ``remove`` (default) the reparametrisation is made permanent, so parameter names
    and ``state_dict`` keys are plain again and the returned masks apply to them.
    """
    model = unwrap(model)
    found: dict[str, object] = {}
    for mod_name, module in model.named_modules():
        for hook in list(module._forward_pre_hooks.values()):
            if not isinstance(hook, torch_prune.BasePruningMethod):
                continue
            attr = hook._tensor_name
            full = f"{mod_name}.{attr}" if mod_name else attr
            found[full] = getattr(module, f"{attr}_mask").detach() != 0
            if remove:
                order = [attr if k == f"{attr}_orig" else k for k in module._parameters]
                torch_prune.remove(module, attr)
                _reorder(module, order)
    if not found:
        raise ConfigError(
            "the model has no torch.nn.utils.prune masks (no weight_orig/weight_mask pairs)"
        )
    masks = MaskSet(found)
    if remove:
        masks.bind(model)
    return masks
