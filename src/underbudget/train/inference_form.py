"""The form of a network that evaluation runs: the same function, cheaper to compute on CPU.

:func:`inference_form` returns a copy of a model in eval mode where

- every exact ``nn.MaxPool2d(2)`` is :class:`~underbudget.deploy.layers.MaxPool2x2`
  (the same values; torch's CPU pooling kernel is several times slower on small conv nets);
- every exact ``nn.BatchNorm2d`` that directly follows an exact ``nn.Conv2d`` inside an
  ``nn.Sequential`` (and tracks running statistics) is folded into that convolution:
  ``w' = w * g / sqrt(v + eps)``, ``b' = (b - m) * g / sqrt(v + eps) + beta``;
- a ReLU directly followed by such a pool (in an ``nn.Sequential``) runs after it, on a
  quarter of the values (the maximum of rectified values is the rectified maximum).

- with ``sparse=True`` (what evaluation asks for on a CPU where the native kernels are
  built), pruned Linear layers and convolutions run sparse kernels where the documented
  threshold rule of :mod:`underbudget.deploy.rule` says they win at the evaluation batch
  size, with ReLU and 2x2 max-pool fused into a sparse convolution's output
  (:func:`underbudget.deploy.to_sparse`); the sums run in another order, so logits move
  by rounding only.

Folding is exact in real arithmetic; in float32 the logits move by rounding only (about 1e-6
relative). Zero weights stay zero, so a pruned convolution keeps its density. A layer with
hooks (an input quantizer, a cost meter) is left as it is, and so is every module of another
type, so quantized and custom layers are evaluated exactly as they train.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..deploy import native
from ..deploy.convert import eligible, to_sparse
from ..deploy.layers import MaxPool2x2
from ..deploy.rule import conv_threshold, csr_threshold


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_pre_hooks or module._forward_hooks)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats
            and bn.running_mean is not None and bn.num_features == conv.out_channels
            and not _hooked(conv) and not _hooked(bn))


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A convolution computing ``bn(conv(x))`` (``bn`` in eval mode) in one layer."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else (
        1.0 / torch.sqrt(bn.running_var + bn.eps))
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused = copy.deepcopy(conv)
    fused.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1),
                                requires_grad=False)
    fused.bias = nn.Parameter((bias - bn.running_mean) * scale + shift, requires_grad=False)
    return fused


def _rewrite(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if type(child) is nn.MaxPool2d and MaxPool2x2.fits(child):
            setattr(module, name, MaxPool2x2())
        else:
            _rewrite(child)
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = module._modules[a], module._modules[b]
            if _foldable(conv, bn):
                module._modules[a] = fold_conv_bn(conv, bn)
                module._modules[b] = nn.Identity()
        for a, b in zip(names, names[1:]):  # relu(max(x, y)) == max(relu(x), relu(y))
            act, pool = module._modules[a], module._modules[b]
            if type(act) is nn.ReLU and type(pool) is MaxPool2x2 and not _hooked(act):
                module._modules[a], module._modules[b] = pool, act


def inference_form(model: nn.Module, sparse: bool = False,
                   batch_size: int = 256) -> nn.Module:
    """A copy of ``model`` in eval mode, with pools and conv-BN pairs in their inference form
    and, with ``sparse``, sparse kernels where they win for ``batch_size`` examples (see the
    module docstring); ``model`` itself is not touched."""
    net = copy.deepcopy(model).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    _rewrite(net)
    if sparse and sparse_wins(net, batch_size):
        net = to_sparse(net, where="wins", rule="threshold", batch_size=batch_size, kxk=True)
        for p in net.parameters():
            p.requires_grad_(False)
    return net


def has_pruned_layers(model: nn.Module) -> bool:
    """Whether a Linear or convolution that a sparse form exists for has zero weights."""
    return any(eligible(m, kxk=True) is not None and not _hooked(m)
               and bool((m.weight == 0).any()) for m in model.modules())


def sparse_wins(model: nn.Module, batch_size: int = 256) -> bool:
    """Whether the threshold rule puts any layer of ``model`` on sparse kernels on a CPU at
    ``batch_size`` (checked without building anything)."""
    cpu = torch.device("cpu")
    for m in model.modules():
        kind = eligible(m, kxk=True)
        if kind is None or _hooked(m):
            continue
        nnz, numel = int(m.weight.count_nonzero()), m.weight.numel()
        if nnz == numel:
            continue
        if kind == "conv":
            if nnz <= conv_threshold(m, cpu)[0]:
                return True
        elif nnz / numel <= csr_threshold(numel, cpu, batch_size):
            return True
    return False


def sparse_kernels_help(model: nn.Module, device: torch.device) -> bool:
    """Whether evaluation on ``device`` should ask for the sparse form: a CPU with the native
    kernels built, and pruned layers in ``model``."""
    return device.type == "cpu" and native.available() and has_pruned_layers(model)


def rewrites(model: nn.Module) -> bool:
    """Whether :func:`inference_form` would change anything in ``model``."""
    for module in model.modules():
        if type(module) is nn.MaxPool2d and MaxPool2x2.fits(module):
            return True
        if isinstance(module, nn.Sequential):
            kids = list(module.children())
            if any(_foldable(a, b) for a, b in zip(kids, kids[1:])):
                return True
    return False
