"""The pair of networks as one module, and extracting the one network that is deployed.

:class:`DualNet` holds F (``fast.*``) and S (``slow.*``) with their own weights; calling it
runs S, so the trainer evaluates the deployed network. :class:`SharedDual` holds one network
whose weights both use through two masks applied in the forward pass (each with its own
normalisation statistics), for the shared-weights variant.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ...sparsity import MaskSet


class DualNet(nn.Module):
    """F and S of one architecture; ``forward`` is S (the network that is deployed).

    With ``slow_frozen`` (S as an EMA of F) S stays in eval mode: it is never trained, and its
    normalisation statistics are averaged from F's instead of updated by its own passes.
    """

    def __init__(self, fast: nn.Module, slow: nn.Module, slow_frozen: bool = False):
        super().__init__()
        self.fast = fast
        self.slow = slow
        self.slow_frozen = slow_frozen

    def forward(self, x: Tensor) -> Tensor:
        return self.slow(x)

    def train(self, mode: bool = True) -> DualNet:
        super().train(mode)
        if self.slow_frozen:
            self.slow.eval()
        return self


class _Stats(nn.Module):
    """S's own copies of the network's buffers (BatchNorm statistics) in the shared variant."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.names = [n for n, _ in net.named_buffers()]
        for name, buf in net.named_buffers():
            self.register_buffer(name.replace(".", "__"), buf.detach().clone())

    def mapping(self) -> dict[str, Tensor]:
        return {n: getattr(self, n.replace(".", "__")) for n in self.names}


class SharedDual(nn.Module):
    """One set of weights used by F and S through two masks (``net.*`` names).

    ``run(x, "fast")`` and ``run(x, "slow")`` compute the network with the weights multiplied
    by that network's mask; F uses the network's own buffers, S its copies in ``slow_stats``.
    When ``capture[which]`` is set, the dense gradient with respect to that network's
    effective weights is kept in ``grads[which]`` (RigL growth needs it: the gradient of the
    shared weight is zero outside the mask).
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.slow_stats = _Stats(net)
        self.masks: dict[str, MaskSet] = {}
        self.capture = {"fast": False, "slow": False}
        self.grads: dict[str, dict[str, Tensor]] = {"fast": {}, "slow": {}}
        self._keep: dict[str, tuple] = {}

    def set_masks(self, fast: MaskSet, slow: MaskSet) -> None:
        """The two MaskSets (keyed ``net.<param>``) the forward passes use."""
        self.masks = {"fast": fast, "slow": slow}

    def _keeps(self, which: str) -> dict[str, Tensor]:
        masks = self.masks[which]
        cached = self._keep.get(which)
        ref = next(iter(self.net.parameters()))
        key = (masks.version, id(masks), ref.device, ref.dtype)
        if cached is None or cached[0] != key:
            keep = {
                n[len("net.") :]: m.to(device=ref.device, dtype=ref.dtype) for n, m in masks.items()
            }
            self._keep[which] = (key, keep)
        return self._keep[which][1]

    def run(self, x: Tensor, which: str) -> Tensor:
        params: dict[str, Tensor] = {}
        capture = self.capture.get(which, False) and torch.is_grad_enabled()
        self.grads[which] = {}
        for name, keep in self._keeps(which).items():
            w = self.net.get_parameter(name) * keep
            if capture:
                w.register_hook(self._hook(which, f"net.{name}"))
            params[name] = w
        if which == "slow":
            params.update(self.slow_stats.mapping())
        return functional_call(self.net, params, (x,))

    def _hook(self, which: str, name: str):
        def keep_grad(grad: Tensor) -> None:
            self.grads[which][name] = grad.detach()

        return keep_grad

    def forward(self, x: Tensor) -> Tensor:
        return self.run(x, "slow")


def rename(masks: MaskSet, old: str, new: str) -> MaskSet:
    """The same masks with the name prefix ``old`` replaced by ``new``."""
    return MaskSet({new + n[len(old) :]: m.clone() for n, m in masks.items()})


@torch.no_grad()
def extract(model: nn.Module, which: str, masks: MaskSet, prefix: str) -> tuple[nn.Module, MaskSet]:
    """One plain network (``which`` of the pair) and its masks under the plain names.

    For :class:`DualNet` it is the sub-module itself; for :class:`SharedDual` a copy of the
    network with the weights multiplied by the mask (and S's statistics for S).
    """
    plain = rename(masks, prefix, "")
    if isinstance(model, DualNet):
        return getattr(model, which), plain
    if isinstance(model, SharedDual):
        net = copy.deepcopy(model.net)
        for name, mask in plain.items():
            net.get_parameter(name).mul_(mask.to(device=net.get_parameter(name).device))
        if which == "slow":
            own = dict(net.named_buffers())
            for name, buf in model.slow_stats.mapping().items():
                own[name].copy_(buf)
        return net, plain
    return model, plain
