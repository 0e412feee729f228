"""One training stage of a :class:`~underbudget.train.Trainer` across torchrun ranks.

The trainer holds a :class:`StageParallel` while it trains a stage under torchrun: it wraps
the model in DDP, gives the loop this rank's slice of every global batch
(:class:`~underbudget.train.distributed.RankShard`), weights the loss so that the averaged
gradient is the global batch's, all-reduces the epoch's totals, and checks that weights and
masks agree on every rank. See :mod:`underbudget.train.distributed` for the design.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .distributed import (
    RankShard,
    all_reduce_,
    all_reduce_grads,
    assert_in_sync,
    broadcast_masks,
    rank,
    sync_batchnorm,
    world_size,
    wrap_model,
)


def _is_maskset(obj: Any) -> bool:
    return all(hasattr(obj, a) for a in ("items", "update", "version"))


def callback_masks(callbacks: Iterable[Any]) -> dict[str, Any]:
    """The mask sets callbacks hold (``cb.masks``: a MaskSet or a dict of them), by name."""
    found = {}
    for cb in callbacks:
        masks = getattr(cb, "masks", None)
        key = getattr(cb, "key", type(cb).__name__)
        if _is_maskset(masks):
            found[key] = masks
        elif isinstance(masks, Mapping):
            found.update({f"{key}.{k}": m for k, m in masks.items() if _is_maskset(m)})
    return found


def named_state(model: nn.Module, callbacks: Iterable[Any]) -> dict[str, Tensor]:
    """The tensors that must agree across ranks: parameters and callbacks' masks."""
    out = {f"param:{n}": p for n, p in model.named_parameters()}
    for key, masks in callback_masks(callbacks).items():
        out.update({f"mask:{key}:{n}": m for n, m in masks.items()})
    return out


class StageParallel:
    """One training stage of a Trainer across ranks: the DDP-wrapped forward, this rank's
    batches, the loss weighting, the all-reduced epoch totals and the sync checks."""

    def __init__(self, trainer: Any, loader: Iterable):
        self.trainer = trainer
        for masks in callback_masks(trainer.callbacks).values():
            broadcast_masks(masks)
        self.shard = RankShard(loader, rank(), world_size())
        # CUDA: batch norm over the global batch; CPU (no SyncBatchNorm): per-rank statistics
        self.restore = (sync_batchnorm(trainer.model) if trainer.device.type == "cuda"
                        else lambda: None)
        self.ddp = wrap_model(trainer.model, trainer.device)
        owned = set() if self.ddp is None else {id(p) for p in trainer.model.parameters()}
        self.extra = [p for g in trainer.optimizer.param_groups for p in g["params"]
                      if id(p) not in owned and p.requires_grad]
        if self.ddp is not None:
            trainer.forward = torch.compile(self.ddp) if trainer.cfg.compile else self.ddp
        if not trainer.history:
            trainer.log("data_parallel", world_size=self.shard.world, backend=dist.get_backend(),
                        ddp=self.ddp is not None, extra_params=len(self.extra))

    def backward(self, loss: Tensor, n_local: int, n_global: int) -> None:
        """Backward of the rank's loss weighted so the averaged gradient is the global one."""
        scale = self.shard.loss_scale(n_local, n_global)
        (loss if scale == 1.0 else loss * scale).backward()
        if self.extra:
            all_reduce_grads(self.extra)

    def totals(self, loss_sum: Tensor, correct: Tensor, seen: int) -> tuple[float, int, int]:
        """Sum of losses, correct predictions and examples over all ranks."""
        both = torch.stack([loss_sum.double(), correct.double(),
                            torch.tensor(float(seen), dtype=torch.float64,
                                         device=loss_sum.device)])
        all_reduce_(both)
        return float(both[0]), int(both[1]), int(both[2])

    def check(self) -> None:
        """Raise when weights or masks differ across ranks."""
        assert_in_sync(named_state(self.trainer.model, self.trainer.callbacks),
                       "weights or masks")

    def end(self, plain_forward: Any) -> None:
        """Back to the plain forward (evaluation runs on every rank without DDP)."""
        self.trainer.forward = plain_forward
        self.restore()
