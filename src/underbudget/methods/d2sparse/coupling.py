"""Coupling through outputs: each network learns from the other's detached logits.

Per batch, with F's logits f and S's logits s::

    L_F = CE(f, y) + lambda_F * C(f, stopgrad(s))
    L_S = CE(s, y) + lambda_S * C(s, stopgrad(f))

and the trainer minimises L_F + L_S. The parameters of F and S are disjoint, so the gradient
of F's parameters is exactly that of L_F (and S's of L_S): the consistency term reaches each
network only through its own logits. C is the MSE between logits (default, as in CLS-ER) or
the temperature-scaled KL divergence of deep mutual learning / distillation (times T^2).

With S as an EMA of F (``slow_mode=ema``) only L_F is minimised; S's logits are computed
without gradient, except at S's own mask-update steps, where the dense gradient of L_S with
respect to S's prunable weights is computed into ``slow_grads`` (never into ``.grad``, so no
optimizer can move S) for RigL to grow S's mask.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import unknown
from .config import CONSISTENCY


def consistency(
    student: Tensor, teacher: Tensor, kind: str = "mse", temperature: float = 1.0
) -> Tensor:
    """Consistency of ``student``'s logits to ``teacher``'s (the teacher is not detached here).

    ``mse``: mean squared difference of the logits over batch and classes.
    ``kl``: T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch.
    """
    if kind == "mse":
        return F.mse_loss(student, teacher)
    if kind == "kl":
        t = float(temperature)
        return F.kl_div(
            F.log_softmax(student / t, dim=1),
            F.log_softmax(teacher / t, dim=1),
            reduction="batchmean",
            log_target=True,
        ) * (t * t)
    raise unknown("consistency", kind, CONSISTENCY)


class DualLoss:
    """``loss_fn(trainer, x, y) -> (loss, logits of S)`` for the trainer (see module doc).

    Args:
        fast, slow: forward functions of F and S (None for F: S alone, plain cross-entropy).
        slow_trained: False when S is an EMA of F (S gets no gradient from the loss).
        slow_grad_due: with ``slow_trained=False``, says whether S's mask is updated at this
            step, in which case the gradient of L_S with respect to ``slow_params``
            (``{name: parameter}``) is stored in :attr:`slow_grads`.
    """

    def __init__(
        self,
        fast: Callable | None,
        slow: Callable,
        *,
        kind: str = "mse",
        temperature: float = 1.0,
        lambda_fast: float = 0.0,
        lambda_slow: float = 0.0,
        label_smoothing: float = 0.0,
        slow_trained: bool = True,
        slow_grad_due: Callable[[object], bool] | None = None,
        slow_params: dict[str, torch.nn.Parameter] | None = None,
    ):
        self.fast, self.slow = fast, slow
        self.kind, self.temperature = kind, temperature
        self.lambda_fast, self.lambda_slow = float(lambda_fast), float(lambda_slow)
        self.label_smoothing = label_smoothing
        self.slow_trained = slow_trained
        self.slow_grad_due = slow_grad_due
        self.slow_params = dict(slow_params or {})
        self.slow_grads: dict[str, Tensor] = {}

    def _ce(self, logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    def _cons(self, student: Tensor, teacher: Tensor) -> Tensor:
        return consistency(student, teacher.detach(), self.kind, self.temperature)

    def slow_loss(self, s: Tensor, f: Tensor | None, y: Tensor) -> Tensor:
        """L_S (F's logits detached)."""
        loss = self._ce(s, y)
        if f is not None and self.lambda_slow > 0:
            loss = loss + self.lambda_slow * self._cons(s, f)
        return loss

    def fast_loss(self, f: Tensor, s: Tensor, y: Tensor) -> Tensor:
        """L_F (S's logits detached)."""
        loss = self._ce(f, y)
        if self.lambda_fast > 0:
            loss = loss + self.lambda_fast * self._cons(f, s)
        return loss

    def __call__(self, trainer, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if self.fast is None:
            s = self.slow(x)
            return self._ce(s, y), s
        f = self.fast(x)
        if self.slow_trained:
            s = self.slow(x)
            return self.fast_loss(f, s, y) + self.slow_loss(s, f, y), s
        self.slow_grads = {}
        if self.slow_grad_due is not None and self.slow_grad_due(trainer):
            s = self.slow(x)
            grads = torch.autograd.grad(
                self.slow_loss(s, f, y), list(self.slow_params.values()), allow_unused=True
            )
            self.slow_grads = {n: g for n, g in zip(self.slow_params, grads) if g is not None}
            s = s.detach()
        else:
            with torch.no_grad():
                s = self.slow(x)
        return self.fast_loss(f, s, y), s
