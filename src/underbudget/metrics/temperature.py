"""Temperature scaling (Guo et al., 2017): one scalar T that divides the logits.

T is fitted on a validation split by minimising the NLL of ``softmax(logits / T)``. With
``beta = 1 / T`` that NLL is ``mean_i [logsumexp(beta z_i) - beta z_{i,y_i}]``, a convex function
of beta whose derivative is ``mean_i (E_{p_i}[z_i] - z_{i,y_i})`` and whose second derivative is
the mean variance of the logits under the model. We find the root of the derivative by Newton
steps kept inside a sign bracket (bisection in log-beta when a step leaves it): deterministic,
no learning rate, no initial guess to tune, and exact to float64 precision. Dividing by T > 0
never changes the argmax, so accuracy is unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from underbudget.metrics._inputs import (
    ArrayLike,
    MetricInputError,
    as_tensor,
    check_labels,
    check_scores,
    to_float64,
)

DEFAULT_BOUNDS = (1e-2, 1e2)


class _NLLCurve:
    """Derivatives of the mean NLL in beta, reusing one buffer across evaluations.

    Logits are shifted so each row's maximum is 0 (softmax and both derivatives are unchanged),
    so ``exp(beta * z)`` lies in (0, 1] and its row sum in [1, C]: no overflow, no underflow.
    """

    def __init__(self, z: Tensor, y: Tensor):
        self.z = z - z.amax(dim=1, keepdim=True)
        self.zy = self.z.gather(1, y[:, None]).squeeze(1)
        self.buf = torch.empty_like(self.z)

    def grad_hess(self, beta: float) -> tuple[float, float]:
        """First and second derivative of the mean NLL with respect to beta."""
        e = torch.mul(self.z, beta, out=self.buf).exp_()
        total = e.sum(dim=1)
        mean = torch.einsum("ij,ij->i", e, self.z) / total
        second = torch.einsum("ij,ij->i", e.mul_(self.z), self.z) / total
        var = (second - mean * mean).clamp_min(0.0)
        return float((mean - self.zy).mean()), float(var.mean())


def fit_temperature(
    logits: ArrayLike,
    labels: ArrayLike,
    bounds: tuple[float, float] = DEFAULT_BOUNDS,
    max_iter: int = 100,
) -> float:
    """The temperature in ``bounds`` that minimises the NLL of ``softmax(logits / T)``.

    If the optimum lies outside ``bounds`` (e.g. a validation set the model separates
    perfectly, where NLL keeps falling as T -> 0) the nearest bound is returned. Logits that are
    constant in every row carry no confidence to rescale; T = 1 is returned.
    """
    fn = "fit_temperature"
    t_min, t_max = (float(b) for b in bounds)
    if not 0 < t_min < t_max:
        raise MetricInputError(f"{fn}: bounds must satisfy 0 < low < high, got {bounds!r}")
    z = to_float64(check_scores(logits, "logits", fn))
    y = check_labels(labels, z.shape[0], fn, num_classes=z.shape[1]).to(z.device)
    if bool((z.amax(dim=1) == z.amin(dim=1)).all()):
        return 1.0
    curve = _NLLCurve(z, y)

    lo, hi = 1.0 / t_max, 1.0 / t_min  # bracket on beta
    if curve.grad_hess(lo)[0] >= 0.0:
        return t_max
    if curve.grad_hess(hi)[0] <= 0.0:
        return t_min
    beta = 1.0 if lo < 1.0 < hi else math.sqrt(lo * hi)
    for _ in range(max_iter):
        g, h = curve.grad_hess(beta)
        if g == 0.0:
            break
        if g < 0.0:
            lo = beta
        else:
            hi = beta
        step = beta - g / h if h > 0.0 else math.nan
        if abs(step - beta) <= 1e-12 * beta:  # Newton has converged
            beta = min(max(step, lo), hi)
            break
        beta = step if lo < step < hi else math.sqrt(lo * hi)
        if hi / lo - 1.0 <= 1e-12:
            break
    return 1.0 / beta


class TemperatureScaler:
    """Fit a temperature on validation logits, then rescale any logits with it.

    >>> scaler = TemperatureScaler()
    >>> t = scaler.fit(val_logits, val_labels)      # doctest: +SKIP
    >>> probs = scaler.transform(test_logits).softmax(dim=1)  # doctest: +SKIP
    """

    def __init__(
        self, temperature: float | None = None, bounds: tuple[float, float] = DEFAULT_BOUNDS
    ):
        if temperature is not None and not temperature > 0:
            raise MetricInputError(f"temperature must be positive, got {temperature!r}")
        self.temperature = None if temperature is None else float(temperature)
        self.bounds = bounds

    @property
    def fitted(self) -> bool:
        """Whether a temperature is set (by :meth:`fit` or the constructor)."""
        return self.temperature is not None

    def fit(self, val_logits: ArrayLike, val_labels: ArrayLike) -> float:
        """Fit T on the validation split (never on test) and return it."""
        self.temperature = fit_temperature(val_logits, val_labels, self.bounds)
        return self.temperature

    def transform(self, logits: ArrayLike) -> Tensor:
        """``logits / T`` in the logits' own dtype and device."""
        if self.temperature is None:
            raise MetricInputError(
                "TemperatureScaler.transform: no temperature yet; call fit(val_logits, "
                "val_labels) first"
            )
        return as_tensor(logits, "logits", "TemperatureScaler.transform") / self.temperature

    __call__ = transform

    def state_dict(self) -> dict[str, Any]:
        """The fitted temperature, for checkpoints and summaries."""
        return {"temperature": self.temperature}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.temperature = state.get("temperature")

    def __repr__(self) -> str:
        return f"TemperatureScaler(temperature={self.temperature})"
