"""What the data-driven pruning criteria share: scoring batches, a side-effect-free scoring
context, and the gradient of the loss summed over the scoring batches.

``data`` is an iterable of ``(x, y, ...)`` batches or one ``(x, y)`` batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from underbudget.errors import ConfigError
from underbudget.sparsity.mask import MaskSet
from underbudget.utils.seeding import derive_seed

LossFn = Callable[[Tensor, Tensor], Tensor]


# -- data helpers -----------------------------------------------------------------------------
def scoring_batches(data: Any, max_batches: int | None) -> Iterator[tuple[Tensor, Tensor]]:
    if (
        isinstance(data, tuple | list)
        and len(data) >= 2
        and all(isinstance(t, Tensor) for t in data[:2])
    ):
        data = [data]
    for i, batch in enumerate(data):
        if max_batches is not None and i >= max_batches:
            return
        if isinstance(batch, Mapping):
            yield (
                batch["x"] if "x" in batch else batch["input"],
                batch.get("y", batch.get("target")),
            )
        else:
            yield batch[0], batch[1]


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@contextlib.contextmanager
def scoring_context(model: nn.Module, seed: int, train: bool = True):
    """Run ``model`` in train mode under a seeded RNG; restore mode, buffers and RNG after."""
    was_training = model.training
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    device = model_device(model)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derive_seed(seed, "scoring"))
        model.train(train)
        try:
            yield
        finally:
            model.train(was_training)
            with torch.no_grad():
                for n, b in model.named_buffers():
                    if n in buffers:
                        b.copy_(buffers[n])


def require_data(name: str, data: Any, what: str) -> None:
    if data is None:
        raise ConfigError(
            f"criterion {name!r} needs {what}: pass data=<iterable of (x, y) batches> "
            "(a small scoring subset of the training data is enough)"
        )


def prunable_params(model: nn.Module, masks: MaskSet) -> list[nn.Parameter]:
    return [model.get_parameter(n) for n in masks]


@contextlib.contextmanager
def grads_enabled(params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Let autograd differentiate ``params`` inside the block; restore their flags after."""
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def summed_grads(
    model: nn.Module,
    masks: MaskSet,
    data: Any,
    loss_fn: LossFn,
    max_batches: int | None,
    temperature: float = 1.0,
    per_batch: Callable[[list[Tensor]], None] | None = None,
) -> list[Tensor]:
    """Sum over batches of dL/dw for the prunable weights (without touching ``.grad``)."""
    params = prunable_params(model, masks)
    total = [torch.zeros_like(p) for p in params]
    device = model_device(model)
    seen = 0
    with grads_enabled(params):
        for x, y in scoring_batches(data, max_batches):
            x, y = x.to(device), y.to(device)
            loss = loss_fn(model(x) / temperature, y)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
            if per_batch is not None:
                per_batch(grads)
            torch._foreach_add_(total, grads)
            seen += 1
    if seen == 0:
        raise ConfigError("the scoring data yielded no batches; pass at least one (x, y) batch")
    return total
