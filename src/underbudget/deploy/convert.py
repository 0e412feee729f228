"""Convert a pruned model to its deploy form (sparse kernels where chosen) and back."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from underbudget.deploy.fuse import PooledAbove, fuse_conv_pool
from underbudget.deploy.layers import (
    SPARSE_LAYERS,
    MaxPool2x2,
    SemiStructuredLinear,
    SparseConv1x1,
    SparseLinear,
)
from underbudget.deploy.rule import (
    MARGIN,
    RULES,
    SEMI_MIN_DIM,
    LayerChoice,
    conv_threshold,
    csr_threshold,
    measure_layer,
    semi_structured_fits,
)
from underbudget.deploy.sparse_conv import SparseConv2d
from underbudget.errors import ConfigError
from underbudget.sparsity.mask import MaskSet
from underbudget.sparsity.targets import unwrap

DEPLOY_LAYERS = (*SPARSE_LAYERS, SparseConv2d, PooledAbove)
"""Every layer type :func:`to_sparse` puts in, each with a ``to_dense``."""


def eligible(module: nn.Module, kxk: bool = False) -> str | None:
    """``"linear"`` or ``"conv1x1"`` for layers that have a CSR form, else None.

    With ``kxk``, also ``"conv"`` for any other :class:`torch.nn.Conv2d` with one group and
    zero padding (:class:`~underbudget.deploy.sparse_conv.SparseConv2d`).

    Exact types only: a subclass of Linear may compute something else with its weight.
    """
    if type(module) is nn.Linear:
        return "linear"
    if type(module) is not nn.Conv2d or module.groups != 1:
        return None
    if tuple(module.kernel_size) == (1, 1) and module.padding in ((0, 0), "valid"):
        return "conv1x1"
    if kxk and module.padding_mode == "zeros":
        return "conv"
    return None


def _check_where(where: str | float) -> None:
    if isinstance(where, str):
        if where not in ("wins", "all"):
            raise ConfigError(f"where must be 'wins', 'all' or a density in (0, 1], got {where!r}")
    elif isinstance(where, bool) or not isinstance(where, (int, float)) or not 0 < where <= 1:
        raise ConfigError(f"where must be 'wins', 'all' or a density in (0, 1], got {where!r}")


def _sparse_form(module: nn.Module, kind: str, form: str) -> nn.Module:
    if form == "2:4":
        return SemiStructuredLinear.from_dense(module)
    if kind == "conv":
        return SparseConv2d.from_dense(module)
    return SparseLinear.from_dense(module) if kind == "linear" else SparseConv1x1.from_dense(module)


def _input_shapes(net: nn.Module, names: list[str], input_shape, batch_size: int,
                  device: torch.device) -> dict[str, tuple[int, ...]]:
    """Shape of each named layer's input for a batch of ``batch_size`` (one forward pass)."""
    shapes: dict[str, tuple[int, ...]] = {}
    if input_shape is None:
        return shapes
    modules = dict(net.named_modules())

    def recorder(name: str):
        def hook(_module, args) -> None:
            shapes.setdefault(name, tuple(args[0].shape))
        return hook

    hooks = [modules[n].register_forward_pre_hook(recorder(n)) for n in names]
    try:
        with torch.inference_mode():
            net(torch.randn(batch_size, *input_shape, device=device))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _decide(name: str, module: nn.Module, kind: str, where, rule: str, device: torch.device,
            example_shape: tuple[int, ...] | None,
            batch_size: int = 256) -> tuple[LayerChoice, nn.Module | None]:
    weight = module.weight.detach()
    numel = weight.numel()
    density = int(weight.count_nonzero()) / max(1, numel)
    choice = LayerChoice(name, kind, tuple(weight.shape), round(density, 6), "dense", "")
    if density == 1.0:
        choice.reason = "no zeros"
        return choice, None
    semi, semi_why = semi_structured_fits(module, device)
    sparse_kind = "taps" if kind == "conv" else "2:4" if semi else "csr"
    if where == "all" or not isinstance(where, str):
        if where == "all" or density <= where:
            choice.form, choice.reason = sparse_kind, f"where={where!r}"
            return choice, _sparse_form(module, kind, sparse_kind)
        choice.reason = f"density {density:.3f} > where={where}"
        return choice, None
    if rule == "measure" and example_shape is not None:
        sparse = _sparse_form(module, kind, sparse_kind)
        example = torch.randn(example_shape, device=device)
        choice.dense_us, choice.sparse_us = (
            round(t, 2) for t in measure_layer(module, sparse, example, device))
        wins = choice.sparse_us * MARGIN <= choice.dense_us
        choice.reason = f"measured at input {tuple(example_shape)}"
        if wins:
            choice.form = sparse_kind
            return choice, sparse
        return choice, None
    note = "" if rule == "threshold" else "measured rule needs input_shape; "
    if kind == "conv":
        max_nnz, why = conv_threshold(module, device)
        nnz = int(weight.count_nonzero())
        if nnz <= max_nnz:
            choice.form, choice.reason = "taps", f"{note}{nnz} nonzeros <= {max_nnz} ({why})"
            return choice, _sparse_form(module, kind, "taps")
        choice.reason = f"{note}{nnz} nonzeros > {max_nnz} ({why})"
        return choice, None
    if semi:
        if min(weight.shape) >= SEMI_MIN_DIM:
            choice.form, choice.reason = "2:4", "2:4 pattern on a GPU with 2:4 kernels"
            return choice, _sparse_form(module, kind, "2:4")
        choice.reason = f"2:4 layer smaller than {SEMI_MIN_DIM} in one dimension"
        return choice, None
    limit = csr_threshold(numel, device, batch_size)
    if limit > 0 and density <= limit:
        choice.form = "csr"
        choice.reason = f"{note}density <= {limit} for {numel} weights on {device.type}"
        return choice, _sparse_form(module, kind, "csr")
    extra = f"; {semi_why}" if device.type == "cuda" else ""
    choice.reason = (f"{note}density {density:.3f} above the {device.type} threshold "
                     f"{limit} for {numel} weights{extra}")
    return choice, None


def _replace(net: nn.Module, mapping: dict[int, nn.Module]) -> None:
    """Swap modules everywhere they appear (a shared module is swapped at every use)."""
    for parent in net.modules():
        for key, child in list(parent._modules.items()):
            if child is not None and id(child) in mapping:
                parent._modules[key] = mapping[id(child)]


def _zero_masked(net: nn.Module, masks: MaskSet | Mapping[str, Tensor]) -> None:
    masks = masks if isinstance(masks, MaskSet) else MaskSet(masks)
    masks.validate(net)  # without binding: the caller's MaskSet keeps its model
    with torch.no_grad():
        for name, mask in masks.items():
            param = net.get_parameter(name)
            param.mul_(mask.to(param.device, param.dtype))


def to_sparse(model: nn.Module, masks: MaskSet | Mapping[str, Tensor] | None = None, *,
              where: str | float = "wins", rule: str = "threshold", batch_size: int = 256,
              input_shape: tuple[int, ...] | None = None,
              device: torch.device | str | None = None, fast_pool: bool = False,
              kxk: bool = False, fuse: bool = True) -> nn.Module:
    """The deploy form of a pruned ``model``: a copy in eval mode with sparse layers.

    Linear layers and 1x1 convolutions (groups 1, no padding) are candidates; every other
    layer stays as it is. Zeros come from the weights, after applying ``masks`` when given.
    ``where``: ``"wins"`` (sparse only where ``rule`` says it is faster: ``"threshold"``,
    documented in :mod:`underbudget.deploy.rule`, or ``"measure"``, which times both forms at
    ``batch_size`` and needs ``input_shape`` (C, H, W) for convolutions), ``"all"`` (every
    candidate with zeros) or a density (candidates at or below it). The sparse form is CSR,
    or 2:4 semi-structured on a GPU that supports it when a Linear weight has that pattern.
    The choices are kept in ``deployed.sparse_choices`` (a list of :class:`LayerChoice`).
    ``fast_pool`` also swaps 2x2 max-pools for :class:`MaxPool2x2` (see :func:`fast_pooling`).
    ``kxk`` also makes every other Conv2d with one group and zero padding a candidate, whose
    sparse form (``"taps"``) is :class:`~underbudget.deploy.sparse_conv.SparseConv2d`: work
    in proportion to the nonzero weights; the threshold rule for it is in
    :func:`~underbudget.deploy.rule.conv_threshold`. With ``fuse`` (the default), a sparse
    convolution followed by ReLU and a 2x2 max-pool computes both as it writes its output
    (:func:`~underbudget.deploy.fuse.fuse_conv_pool`); the fused names are kept in
    ``deployed.fused_layers``.
    """
    _check_where(where)
    if rule not in RULES:
        raise ConfigError(f"rule must be one of {RULES}, got {rule!r}")
    net = copy.deepcopy(unwrap(model))
    if device is not None:
        net = net.to(device)
    dev = torch.device(device) if device is not None else _device_of(net)
    net.eval()
    if masks is not None:
        _zero_masked(net, masks)
    named = [(n, m, k) for n, m in net.named_modules() if (k := eligible(m, kxk)) is not None
             and not (m._forward_pre_hooks or m._forward_hooks)]  # hooks would be lost
    shapes = (_input_shapes(net, [n for n, _, _ in named], input_shape, batch_size, dev)
              if rule == "measure" and where == "wins" else {})
    choices, mapping = [], {}
    for name, module, kind in named:
        example = shapes.get(name)
        if example is None and kind == "linear":
            example = (batch_size, module.in_features)
        choice, sparse = _decide(name, module, kind, where, rule, dev, example, batch_size)
        choices.append(choice)
        if sparse is not None:
            mapping[id(module)] = sparse
    if fast_pool:
        mapping.update({id(m): MaxPool2x2() for m in net.modules() if MaxPool2x2.fits(m)})
    _replace(net, mapping)
    net.sparse_choices = choices
    net.fused_layers = fuse_conv_pool(net) if fuse else []
    return net


def fast_pooling(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every 2x2 max-pool computed by :class:`MaxPool2x2`.

    Same outputs, same state_dict; faster on CPUs where torch's pooling kernel is slow.
    """
    net = copy.deepcopy(model)
    _replace(net, {id(m): MaxPool2x2() for m in net.modules() if MaxPool2x2.fits(m)})
    return net


def sparse_plan(model: nn.Module, masks=None, **options) -> list[LayerChoice]:
    """What :func:`to_sparse` would choose for each candidate layer (same options)."""
    return to_sparse(model, masks, **options).sparse_choices


def to_dense(model: nn.Module) -> nn.Module:
    """A copy of a deployed model with every sparse layer (and fast pool) in its plain form."""
    net = copy.deepcopy(model)
    mapping: dict[int, nn.Module] = {
        id(m): m.to_dense() for m in net.modules() if isinstance(m, DEPLOY_LAYERS)}
    mapping.update({id(m): nn.MaxPool2d(2) for m in net.modules() if isinstance(m, MaxPool2x2)})
    _replace(net, mapping)
    for attr in ("sparse_choices", "fused_layers"):
        if hasattr(net, attr):
            delattr(net, attr)
    return net


def _device_of(net: nn.Module) -> torch.device:
    for t in net.parameters():
        return t.device
    return torch.device("cpu")
