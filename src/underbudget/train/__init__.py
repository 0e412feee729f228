"""The one training loop, its callbacks, optimizers, schedules and evaluation."""

from .callbacks import Callback
from .evaluate import evaluate
from .optim import build_optimizer, build_scheduler, lr_factor
from .trainer import DivergedError, Trainer, cross_entropy_loss, resolve_device

__all__ = [
    "Callback", "Trainer", "DivergedError", "evaluate", "build_optimizer", "build_scheduler",
    "lr_factor", "cross_entropy_loss", "resolve_device",
]
