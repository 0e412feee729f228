"""Training FLOPs counted step by step from the masks in force, as a training callback.

One training step on a batch costs ``factor`` x the forward FLOPs of the batch (``factor`` 3:
the forward pass and a backward pass twice as costly); see :func:`training_flops` for the
same rule over a whole phase and :mod:`underbudget.sparsity.cost` for the forward FLOPs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from underbudget.callbacks import Callback
from underbudget.sparsity.cost import FlopProfile, profile_flops, training_flops
from underbudget.sparsity.mask import MaskSet
from underbudget.sparsity.targets import unwrap


class TrainingFlops(Callback):
    """Training FLOPs counted step by step: ``factor`` x forward FLOPs x batch size.

    Forward FLOPs are those of the masks in force at each step (nonzero-aware: a pruned weight
    costs nothing; recounted only when the masks change) and, for reference, of the dense
    model. ``factor`` 3 counts the forward pass and a backward pass twice as costly. The
    totals of the run so far are added to each stage's metrics as ``train_flops``,
    ``train_flops_dense`` and ``train_samples``.
    """

    name = "training_flops"

    def __init__(
        self,
        masks: MaskSet | None = None,
        input_shape: Sequence[int] | None = None,
        factor: float = 3.0,
    ):
        self.masks, self.factor = masks, float(factor)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.forward_sum = 0.0  # sum over steps of batch size x forward FLOPs (masked)
        self.dense_sum = 0.0
        self.samples = 0
        self._profile: FlopProfile | None = None
        self._cached: tuple[int, float, float] | None = None  # (mask version, masked, dense)

    def forward_flops(self, model: nn.Module) -> tuple[float, float]:
        """(masked, dense) FLOPs of one forward pass of one sample with the current masks."""
        model = unwrap(model)
        version = -1 if self.masks is None else self.masks.version
        if self._cached is not None and self._cached[0] == version:
            return self._cached[1], self._cached[2]
        if self._profile is None:
            self._profile = profile_flops(model, self.input_shape)
        prof = self._profile
        fixed = sum(prof.bias_flops.values()) + sum(prof.other_flops.values())
        macs = dense = 0
        for name, uses in prof.weight_uses.items():
            numel = model.get_parameter(name).numel()
            kept = numel
            if self.masks is not None and name in self.masks:
                kept = int(self.masks[name].count_nonzero())
            macs += uses * kept
            dense += uses * numel
        self._cached = (version, float(2 * macs + fixed), float(2 * dense + fixed))
        return self._cached[1], self._cached[2]

    def before_step(self, trainer: Any, batch: Any) -> None:
        x = batch[0] if isinstance(batch, tuple | list) else batch
        if self.input_shape is None:
            self.input_shape = tuple(x.shape[1:])
        masked, dense = self.forward_flops(trainer.model)
        n = int(getattr(trainer, "step_examples", 0) or x.shape[0])  # global batch (DDP)
        self.forward_sum += masked * n
        self.dense_sum += dense * n
        self.samples += n

    def totals(self) -> dict[str, float]:
        return {
            "train_flops": training_flops(self.forward_sum, 1, self.factor),
            "train_flops_dense": training_flops(self.dense_sum, 1, self.factor),
            "train_samples": self.samples,
        }

    def after_stage(self, trainer: Any, stage: int, metrics: dict) -> None:
        metrics.update(self.totals())

    def state_dict(self) -> dict:
        return {
            "forward_sum": self.forward_sum,
            "dense_sum": self.dense_sum,
            "samples": self.samples,
        }

    def load_state_dict(self, state: dict) -> None:
        self.forward_sum = float(state.get("forward_sum", 0.0))
        self.dense_sum = float(state.get("dense_sum", 0.0))
        self.samples = int(state.get("samples", 0))
