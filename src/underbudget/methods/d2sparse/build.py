"""Assemble D2-Sparse for the shared trainer: model, masks, callbacks and loss.

:func:`build_dual` is used by the ``d2sparse`` method and can be used by any loop built on
:class:`~underbudget.train.Trainer` (e.g. a stream of megabatches): it returns the module to
train, the callbacks to register (mask dynamics, EMA, evolution analysis), the loss function,
the evaluated forward (S alone) and the parameters the optimizer trains.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ...sparsity import MaskSet, Targets
from ...train.callbacks import Callback
from ...utils.seeding import derive_seed
from .config import D2SparseConfig
from .coupling import DualLoss
from .dynamic import NetDynamic, SharedDynamic, Timescale, effective_interval, initial_masks
from .ema import SlowEMA
from .evolution import MaskEvolution
from .networks import DualNet, SharedDual, extract, rename

PREFIX = {
    "dual": {"fast": "fast.", "slow": "slow."},
    "ema": {"fast": "fast.", "slow": "slow."},
    "shared": {"fast": "net.", "slow": "net."},
    "single": {"slow": ""},
}


@dataclass
class DualSetup:
    """Everything a trainer needs to run D2-Sparse (see :func:`build_dual`)."""

    mode: str  # dual | ema | shared | single
    model: nn.Module  # the module the trainer trains
    masks: dict[str, MaskSet]  # per network, named as in ``model``
    callbacks: list[Callback]
    loss_fn: Callable
    eval_forward: Callable  # S alone
    params: list[nn.Parameter] | None  # what the optimizer trains (None: all)
    dynamics: dict[str, Any]  # per network: its mask-update callback (or view)
    evolution: MaskEvolution
    intervals: dict[str, int] = field(default_factory=dict)  # effective, in steps

    @property
    def networks(self) -> list[str]:
        return list(self.masks)

    def network(self, which: str = "slow") -> tuple[nn.Module, MaskSet]:
        """One plain network of the pair and its masks under plain parameter names."""
        return extract(self.model, which, self.masks[which], PREFIX[self.mode][which])

    def deployed(self) -> tuple[nn.Module, MaskSet]:
        """The network that is deployed (S) and its masks."""
        return self.network("slow")

    def forward_of(self, which: str) -> Callable:
        """A forward function of F or S on the trained module."""
        if self.mode == "shared":
            return lambda x: self.model.run(x, which)
        if self.mode == "single":
            return self.model
        return getattr(self.model, which)


def build_dual(
    mcfg: D2SparseConfig,
    make_net: Callable[[str], nn.Module],
    *,
    steps_per_epoch: int,
    total_steps: int,
    seed: int,
    label_smoothing: float = 0.0,
) -> DualSetup:
    """Build the pair (or S alone for ``single``) as configured by ``mcfg``.

    Args:
        make_net: ``key -> new network`` with its initialisation seeded by ``key``.
        steps_per_epoch: optimizer steps per pass over the training data (interval floor).
        total_steps: planned optimizer steps of the whole training (for T_end).
        seed: seeds the masks, SET growth and the EMA draws.
    """
    mode = mcfg.mode
    targets = Targets(exclude_first=mcfg.exclude_first, exclude_last=mcfg.exclude_last)
    total_steps = max(1, int(total_steps))
    scales = {
        w: Timescale(
            growth=getattr(mcfg, f"{w}_growth"),
            interval=effective_interval(
                getattr(mcfg, f"{w}_interval"), steps_per_epoch, mcfg.interval_floor
            ),
            alpha=getattr(mcfg, f"{w}_alpha"),
            t_end=max(1, int(getattr(mcfg, f"{w}_t_end") * total_steps)),
            decay=getattr(mcfg, f"{w}_decay"),
        )
        for w in ("fast", "slow")
    }
    seeds = {w: derive_seed(seed, "mask", w) for w in ("fast", "slow")}
    if mcfg.same_init or mode == "ema":  # an EMA of F starts as F, mask included
        seeds["slow"] = seeds["fast"]

    if mode == "shared":
        net = make_net("init-fast")
        masks = {
            w: initial_masks(copy.deepcopy(net), "net.", mcfg.density, mcfg.init, targets, seeds[w])
            for w in ("fast", "slow")
        }
        model = SharedDual(net)
        shared = SharedDynamic(model, masks, scales, seed=derive_seed(seed, "grow"))
        dynamics = shared.views
        evolution = MaskEvolution(dynamics, {"fast": "net.", "slow": "net."}, total_steps)
        loss = DualLoss(
            lambda x: model.run(x, "fast"),
            lambda x: model.run(x, "slow"),
            **_coupling(mcfg, label_smoothing),
        )
        return DualSetup(
            mode,
            model,
            masks,
            [shared, evolution],
            loss,
            model,
            None,
            dynamics,
            evolution,
            {w: s.interval for w, s in scales.items()},
        )

    if mode == "single":
        net = make_net("init-slow")
        masks = {"slow": initial_masks(net, "", mcfg.density, mcfg.init, targets, seeds["slow"])}
        dyn = _dynamic("slow", scales["slow"], masks["slow"], total_steps, seed, None)
        evolution = MaskEvolution({"slow": dyn}, {"slow": ""}, total_steps)
        loss = DualLoss(None, net, label_smoothing=label_smoothing)
        return DualSetup(
            mode,
            net,
            masks,
            [dyn, evolution],
            loss,
            net,
            None,
            {"slow": dyn},
            evolution,
            {"slow": scales["slow"].interval},
        )

    fast = make_net("init-fast")
    if mcfg.same_init or mode == "ema":
        slow = copy.deepcopy(fast)
    else:
        slow = make_net("init-slow")
    masks = {
        "fast": initial_masks(fast, "fast.", mcfg.density, mcfg.init, targets, seeds["fast"]),
        "slow": initial_masks(slow, "slow.", mcfg.density, mcfg.init, targets, seeds["slow"]),
    }
    model = DualNet(fast, slow, slow_frozen=mode == "ema")

    def peer(name: str):
        fast_name = "fast." + name[len("slow.") :]
        return model.get_parameter(fast_name), masks["fast"][fast_name]

    if mode == "ema":  # S's gradient exists only for its growth (see DualLoss)
        loss = DualLoss(
            fast,
            slow,
            **_coupling(mcfg, label_smoothing),
            slow_trained=False,
            slow_params={n: model.get_parameter(n) for n in masks["slow"]},
        )

        def slow_grad(name: str):
            return loss.slow_grads.get(name)
    else:
        loss = DualLoss(fast, slow, **_coupling(mcfg, label_smoothing))
        slow_grad = None
    dyn_fast = _dynamic("fast", scales["fast"], masks["fast"], total_steps, seed, None, None, fast)
    dyn_slow = _dynamic(
        "slow", scales["slow"], masks["slow"], total_steps, seed, peer, slow_grad, slow
    )
    dynamics = {"fast": dyn_fast, "slow": dyn_slow}
    evolution = MaskEvolution(dynamics, PREFIX[mode], total_steps)
    callbacks: list[Callback] = [dyn_fast, dyn_slow]
    params = None
    if mode == "ema":
        callbacks.append(
            SlowEMA(
                fast,
                slow,
                masks["slow"],
                "slow.",
                decay=mcfg.ema_decay,
                rate=mcfg.ema_rate,
                warmup=mcfg.ema_warmup,
                seed=derive_seed(seed, "ema"),
            )
        )
        params = list(fast.parameters())
        loss.slow_grad_due = dyn_slow.update_due
    callbacks.append(evolution)
    return DualSetup(
        mode,
        model,
        masks,
        callbacks,
        loss,
        slow,
        params,
        dynamics,
        evolution,
        {w: s.interval for w, s in scales.items()},
    )


def _coupling(mcfg: D2SparseConfig, label_smoothing: float) -> dict[str, Any]:
    return {
        "kind": mcfg.consistency,
        "temperature": mcfg.temperature,
        "lambda_fast": mcfg.lambda_fast,
        "lambda_slow": mcfg.lambda_slow,
        "label_smoothing": label_smoothing,
    }


def _dynamic(
    which: str,
    ts: Timescale,
    masks: MaskSet,
    total_steps: int,
    seed: int,
    peer,
    grad_source=None,
    network: nn.Module | None = None,
) -> NetDynamic:
    return NetDynamic(
        f"d2_{which}",
        growth=ts.growth,
        peer=peer,
        grad_source=grad_source,
        network=network,
        prefix=f"{which}." if network is not None else "",
        masks=masks,
        update_interval=ts.interval,
        alpha=ts.alpha,
        t_end=ts.t_end,
        total_steps=total_steps,
        decay=ts.decay,
        seed=derive_seed(seed, "grow", which),
    )


__all__ = ["DualSetup", "build_dual", "rename"]
