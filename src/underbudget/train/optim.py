"""Optimizers and learning-rate schedules built from :class:`~underbudget.config.OptimConfig`."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from ..config import LR_SCHEDULES as SCHEDULES
from ..config import OPTIMIZERS
from ..errors import unknown


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov), Adam or AdamW over ``params`` (weight decay on all)."""
    params = [p for p in params if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas),
                                weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas),
                                 weight_decay=cfg.weight_decay)
    raise unknown("optimizer", cfg.name, OPTIMIZERS)


def lr_factor(step: int, steps_per_epoch: int, epochs: int, cfg) -> float:
    """Multiplier of the base LR after ``step`` optimizer steps of a stage.

    Epoch-based schedules are evaluated at fractional epochs (step / steps_per_epoch) for
    cosine and warm-up, and at whole epochs for step/multistep, as is conventional.
    """
    steps_per_epoch = max(1, steps_per_epoch)
    epoch_f = step / steps_per_epoch
    epoch_i = step // steps_per_epoch
    total = max(1, epochs)
    if cfg.warmup_epochs > 0 and epoch_f < cfg.warmup_epochs:
        return (epoch_f + 1 / steps_per_epoch) / cfg.warmup_epochs
    base = 1.0
    if cfg.schedule == "none":
        base = 1.0
    elif cfg.schedule == "step":
        base = cfg.gamma ** (epoch_i // max(1, cfg.step_size))
    elif cfg.schedule == "multistep":
        marks = [m * total if all(x < 1 for x in cfg.milestones) else m for m in cfg.milestones]
        base = cfg.gamma ** sum(epoch_i >= m for m in marks)
    elif cfg.schedule == "cosine":
        span = max(1e-12, total - cfg.warmup_epochs)
        progress = min(1.0, max(0.0, (epoch_f - cfg.warmup_epochs) / span))
        floor = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0
        base = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    else:
        raise unknown("LR schedule", cfg.schedule, SCHEDULES)
    return base


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, steps_per_epoch: int,
                    epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR following :func:`lr_factor` (restarted by building a new one)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch, epochs, cfg)
    )
