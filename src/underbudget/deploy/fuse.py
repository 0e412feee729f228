"""Fuse ``conv -> ReLU -> 2x2 max-pool`` into the sparse convolution's output pass.

A small conv net at inference spends as much time streaming its largest activations through
memory (the convolution writes them, ReLU reads and writes them, the pool reads them) as
computing them. :func:`fuse_conv_pool` finds, by tracing the model with :mod:`torch.fx`, each
:class:`~underbudget.deploy.sparse_conv.SparseConv2d` (stride 1) whose only consumer is a ReLU
whose only consumer is a 2x2 max-pool (or the pool then the ReLU: max commutes with ReLU;
``nn.Identity`` modules in between, like the one a folded batch norm leaves, are skipped),
and has the convolution emit ``relu(max_pool(conv(x)))`` directly. The model keeps its class
and its ``forward``: the pool module becomes :class:`PooledAbove`, which passes its input
through, and the ReLU still runs, on the pooled values, where it changes nothing. A model
that does not trace is left unfused.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from underbudget.deploy.layers import SPARSE_LAYERS, MaxPool2x2
from underbudget.deploy.sparse_conv import SparseConv2d

EPILOGUE = "relu_pool"


class PooledAbove(nn.Module):
    """A 2x2 max-pool whose work the convolution before it has done: passes input through."""

    def forward(self, x: Tensor) -> Tensor:
        return x

    def to_dense(self) -> nn.MaxPool2d:
        """The pool it stands for."""
        return nn.MaxPool2d(2)


class _Tracer(torch.fx.Tracer):
    """Keeps deploy layers whole: their forward has device- and shape-dependent branches."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (*SPARSE_LAYERS, SparseConv2d, MaxPool2x2, PooledAbove)):
            return True
        return super().is_leaf_module(m, qualname)


def _is_relu(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return type(modules.get(node.target)) is nn.ReLU
    if node.op == "call_function":
        return node.target in (torch.relu, F.relu, torch.relu_)
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _is_pool(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op != "call_module":
        return False
    module = modules.get(node.target)
    return type(module) is MaxPool2x2 or MaxPool2x2.fits(module)


def _only_user(node: torch.fx.Node, modules: dict[str, nn.Module]) -> torch.fx.Node | None:
    """The one consumer of ``node``, looking through ``nn.Identity`` modules (a folded
    batch norm leaves one); None when there are several."""
    while True:
        users = list(node.users)
        if len(users) != 1:
            return None
        node = users[0]
        if not (node.op == "call_module" and type(modules.get(node.target)) is nn.Identity):
            return node


def _set_module(net: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, child, module)


def fuse_conv_pool(net: nn.Module) -> list[str]:
    """Fuse every eligible ``SparseConv2d -> ReLU -> 2x2 max-pool`` chain of ``net`` in place.

    Returns the names of the fused convolutions (empty when the model does not trace).
    """
    if not any(isinstance(m, SparseConv2d) for m in net.modules()):
        return []  # nothing to fuse: skip the trace
    try:
        graph = _Tracer().trace(net)
    except Exception:  # data-dependent control flow and the like: leave the model as it is
        return []
    modules = dict(net.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    fused = []
    for node in graph.nodes:
        conv = modules.get(node.target) if node.op == "call_module" else None
        if (not isinstance(conv, SparseConv2d) or conv.stride != (1, 1) or conv.epilogue
                or calls[node.target] != 1):
            continue
        first = _only_user(node, modules)
        second = _only_user(first, modules) if first is not None else None
        if second is None:
            continue
        if _is_relu(first, modules) and _is_pool(second, modules):
            pool = second
        elif _is_pool(first, modules) and _is_relu(second, modules):
            pool = first
        else:
            continue
        if calls[pool.target] != 1:  # a pool module used twice cannot become a pass-through
            continue
        conv.epilogue = EPILOGUE
        _set_module(net, pool.target, PooledAbove())
        fused.append(node.target)
    return fused
