"""Importance scores for pruning: higher means keep.

Every criterion returns ``{param_name: scores}`` over the prunable parameters of a MaskSet,
computed on the masked (alive) network; pruned positions get ``-inf`` so they never come back.

| name      | score                                        | needs                          |
|-----------|----------------------------------------------|--------------------------------|
| magnitude | abs(w)                                       | weights                        |
| random    | uniform (seeded)                             | nothing                        |
| snip      | abs(w * sum_b dL_b/dw)                       | data                           |
| grasp     | w * (H g), g masked to alive weights         | data                           |
| synflow   | abs(w * dR/dw), R = 1^T prod(abs W) 1        | input shape (or data)          |
| taylor    | sum_b abs(w * dL_b/dw)                       | data, or scores accumulated in |
|           |                                              | training (:class:`TaylorScore`)|

``data`` is an iterable of ``(x, y, ...)`` batches or one ``(x, y)`` batch. Data-driven criteria
run the model in train mode (batch statistics, as SNIP and GraSP do at initialisation) under
a seeded RNG, and restore the mode and every buffer (BatchNorm running statistics) after, so
scoring has no side effects on the model, its ``.grad`` or the global RNG.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from underbudget.callbacks import Callback
from underbudget.errors import ConfigError, unknown
from underbudget.sparsity.mask import MaskSet
from underbudget.sparsity.scoring import (
    LossFn,
    grads_enabled,
    model_device,
    prunable_params,
    require_data,
    scoring_batches,
    scoring_context,
    summed_grads,
)
from underbudget.sparsity.targets import unwrap
from underbudget.utils.seeding import generator

Scores = dict[str, Tensor]


# -- criteria ---------------------------------------------------------------------------------
@torch.no_grad()
def magnitude(model: nn.Module, masks: MaskSet) -> Scores:
    """abs(w)."""
    return {n: p.detach().abs() for n, p in zip(masks, prunable_params(model, masks))}


@torch.no_grad()
def random(model: nn.Module, masks: MaskSet, seed: int = 0) -> Scores:
    """Uniform random scores from a generator derived from ``seed`` (one stream per layer)."""
    out = {}
    for name, p in zip(masks, prunable_params(model, masks)):
        gen = generator(seed, "random-scores", name)
        out[name] = torch.rand(p.shape, generator=gen).to(p.device)
    return out


def snip(
    model: nn.Module,
    masks: MaskSet,
    data: Any,
    loss_fn: LossFn = F.cross_entropy,
    seed: int = 0,
    max_batches: int | None = None,
) -> Scores:
    """Connection sensitivity abs(w * g), g the gradient summed over the scoring batches.

    Equal to abs(dL/dc) for a multiplicative mask c at c = 1 (SNIP).
    """
    require_data("snip", data, "data")
    with scoring_context(model, seed):
        grads = summed_grads(model, masks, data, loss_fn, max_batches)
    params = prunable_params(model, masks)
    return {n: (p.detach() * g).abs() for n, p, g in zip(masks, params, grads)}


def grasp(
    model: nn.Module,
    masks: MaskSet,
    data: Any,
    loss_fn: LossFn = F.cross_entropy,
    seed: int = 0,
    max_batches: int | None = None,
    temperature: float = 200.0,
) -> Scores:
    """GraSP keep-score w * (H g): the weights whose removal most reduces gradient flow go.

    g is the gradient summed over the scoring batches (restricted to alive weights) and H g
    the Hessian-gradient product on the same batches; logits are divided by ``temperature``
    (200 in the GraSP reference code).
    """
    require_data("grasp", data, "data")
    params = None
    with scoring_context(model, seed):
        grads = summed_grads(model, masks, data, loss_fn, max_batches, temperature)
        keep = [m.to(g.device, g.dtype) for m, g in zip(masks.values(), grads)]
        g_alive = [g * k for g, k in zip(grads, keep)]
        params = prunable_params(model, masks)
        hg = [torch.zeros_like(p) for p in params]
        device = model_device(model)
        with grads_enabled(params):
            for x, y in scoring_batches(data, max_batches):
                x, y = x.to(device), y.to(device)
                loss = loss_fn(model(x) / temperature, y)
                gs = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
                dot = sum((g * z).sum() for g, z in zip(gs, g_alive) if g is not None)
                if not isinstance(dot, Tensor) or not dot.requires_grad:
                    continue
                out = torch.autograd.grad(dot, params, allow_unused=True)
                torch._foreach_add_(
                    hg, [torch.zeros_like(p) if o is None else o for o, p in zip(out, params)]
                )
    return {n: p.detach() * h for n, p, h in zip(masks, params, hg)}


class SynFlowScorer:
    """SynFlow on a float64 copy of the model with abs weights and BatchNorm in eval mode.

    The copy is made once and reused across iterated rounds; each call copies the current
    masks into it. R = sum of the outputs for an all-ones input; score = abs(w * dR/dw).
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], dtype=torch.float64):
        base = unwrap(model)
        self.copy = copy.deepcopy(base).to(dtype).eval()
        with torch.no_grad():
            for p in self.copy.parameters():
                p.abs_()
            for b in self.copy.buffers():
                if b.is_floating_point():
                    b.abs_()
        self.original = {n: p for n, p in base.named_parameters()}
        self.input = torch.ones((1, *input_shape), dtype=dtype, device=model_device(base))

    def __call__(self, masks: MaskSet) -> Scores:
        params = [self.copy.get_parameter(n) for n in masks]
        with torch.no_grad():
            for n, p in zip(masks, params):
                p.copy_(self.original[n].detach().abs() * masks[n].to(p.device))
        flags = [p.requires_grad for p in params]
        try:
            for p in params:
                p.requires_grad_(True)
            r = self.copy(self.input).sum()
            grads = torch.autograd.grad(r, params, allow_unused=True)
        finally:
            for p, f in zip(params, flags):
                p.requires_grad_(f)
        return {
            n: torch.zeros_like(p) if g is None else (p.detach() * g).abs()
            for n, p, g in zip(masks, params, grads)
        }


def _input_shape(input_shape: Any, data: Any) -> tuple[int, ...]:
    if input_shape is not None:
        if isinstance(input_shape, Tensor):
            return tuple(input_shape.shape[1:])
        return tuple(int(s) for s in input_shape)
    if data is not None:
        for x, _ in scoring_batches(data, 1):
            return tuple(x.shape[1:])
    raise ConfigError(
        "criterion 'synflow' needs the input shape: pass input_shape=(C, H, W) "
        "(no data is needed; or pass data to read the shape from its first batch)"
    )


def synflow(
    model: nn.Module,
    masks: MaskSet,
    input_shape: tuple[int, ...] | None = None,
    data: Any = None,
    dtype: torch.dtype = torch.float64,
) -> Scores:
    """Synaptic flow abs(w * dR/dw) (data-free; computed in float64 to avoid overflow)."""
    return SynFlowScorer(model, _input_shape(input_shape, data), dtype)(masks)


class TaylorScore(Callback):
    """Accumulate abs(w * g) at every optimizer step (first-order Taylor importance).

    Add it to a Trainer's callbacks *before* any masking callback so it sees dense gradients
    (pruned positions are excluded from selection either way), then prune with
    ``criterion="taylor", accumulated=this``.
    """

    def __init__(self, masks: MaskSet | None = None):
        self.masks = masks
        self.totals: dict[str, Tensor] = {}
        self.steps = 0

    def before_optimizer_step(self, trainer: Any) -> None:
        model = unwrap(trainer.model)
        if self.masks is None:
            self.masks = MaskSet.from_model(model)
        self.accumulate(model)

    @torch.no_grad()
    def accumulate(self, model: nn.Module) -> None:
        """Add abs(w * grad) of the current gradients."""
        for name in self.masks:
            p = model.get_parameter(name)
            if p.grad is None:
                continue
            term = (p.detach() * p.grad).abs()
            if name in self.totals:
                self.totals[name].add_(term)
            else:
                self.totals[name] = term.clone()
        self.steps += 1

    def scores(self) -> Scores:
        return dict(self.totals)

    def reset(self) -> None:
        self.totals, self.steps = {}, 0

    def state_dict(self) -> dict:
        return {"totals": {n: t.cpu() for n, t in self.totals.items()}, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.totals = {n: t.clone() for n, t in state.get("totals", {}).items()}
        self.steps = int(state.get("steps", 0))


def taylor(
    model: nn.Module,
    masks: MaskSet,
    data: Any = None,
    loss_fn: LossFn = F.cross_entropy,
    seed: int = 0,
    max_batches: int | None = None,
    accumulated: TaylorScore | Mapping[str, Tensor] | None = None,
) -> Scores:
    """sum over batches (or over training steps) of abs(w * g)."""
    if accumulated is not None:
        totals = accumulated.scores() if isinstance(accumulated, TaylorScore) else accumulated
        missing = [n for n in masks if n not in totals]
        if missing:
            raise ConfigError(
                f"accumulated taylor scores lack {missing[0]!r}: run TaylorScore for at least "
                "one optimizer step over the same prunable parameters"
            )
        return {n: totals[n] for n in masks}
    if data is None:
        raise ConfigError(
            "criterion 'taylor' needs gradients: pass data=<iterable of (x, y) batches> or "
            "accumulated=<TaylorScore callback run during training>"
        )
    params = prunable_params(model, masks)
    totals = [torch.zeros_like(p) for p in params]

    def add(grads: list[Tensor]) -> None:
        for t, p, g in zip(totals, params, grads):
            t.add_((p.detach() * g).abs())

    with scoring_context(model, seed):
        summed_grads(model, masks, data, loss_fn, max_batches, per_batch=add)
    return dict(zip(masks, totals))


CRITERIA: dict[str, Callable[..., Scores]] = {
    "magnitude": magnitude,
    "random": random,
    "snip": snip,
    "grasp": grasp,
    "synflow": synflow,
    "taylor": taylor,
}

#: what each criterion needs besides the model: "data" (scoring batches) or "input_shape";
#: taylor may use accumulated training scores (``accumulated=``) instead of data
NEEDS: dict[str, tuple[str, ...]] = {
    "magnitude": (),
    "random": (),
    "snip": ("data",),
    "grasp": ("data",),
    "synflow": ("input_shape",),
    "taylor": ("data",),
}
#: criteria that always return fresh tensors (the others' scores are copied before masking)
_FRESH = ("magnitude", "random", "snip", "grasp", "synflow")


def register_criterion(
    name: str, needs: tuple[str, ...] = ()
) -> Callable[[Callable[..., Scores]], Callable[..., Scores]]:
    """Decorator adding ``fn(model, masks, **options) -> {param_name: scores}`` as criterion
    ``name`` (higher keeps; ``sparsity.criterion: <name>`` then selects it).

    ``needs`` says what it takes besides the model: ``("data",)`` for scoring batches (passed
    as ``data=``), ``("input_shape",)`` for a dummy-input shape. Options it declares in its
    signature (``seed``, ``data``, ``loss_fn``, ...) are passed when given.
    """

    def wrap(fn: Callable[..., Scores]) -> Callable[..., Scores]:
        CRITERIA[name] = fn
        NEEDS[name] = tuple(needs)
        return fn

    return wrap


def score(
    criterion: str,
    model: nn.Module,
    masks: MaskSet,
    data: Iterable | None = None,
    loss_fn: LossFn | None = None,
    seed: int = 0,
    **kwargs: Any,
) -> Scores:
    """Scores of ``criterion`` over the alive weights (pruned positions at -inf)."""
    if criterion not in CRITERIA:
        raise unknown("criterion", criterion, CRITERIA)
    fn = CRITERIA[criterion]
    accepted = inspect.signature(fn).parameters
    offered = {"data": data, "seed": seed, **kwargs}
    if loss_fn is not None:
        offered["loss_fn"] = loss_fn
    if criterion in ("snip", "grasp"):
        require_data(criterion, data, "data")
    for key in kwargs:
        if key not in accepted:
            options = [k for k in accepted if k not in ("model", "masks")]
            raise ConfigError(
                f"criterion {criterion!r} has no option {key!r}; it accepts: {', '.join(options)}"
            )
    model = unwrap(model)
    masks.validate(model)
    call = {k: v for k, v in offered.items() if k in accepted}
    scores = fn(model, masks, **call)
    out = {}
    for name, mask in masks.items():
        s = scores[name]
        if criterion not in _FRESH:
            s = s.clone()  # may be the caller's tensor (taylor's accumulator)
        s.masked_fill_(~mask.to(s.device), -math.inf)
        if bool(torch.isnan(s).any()):
            s = s.nan_to_num(nan=-math.inf, posinf=math.inf, neginf=-math.inf)
        out[name] = s
    return out
