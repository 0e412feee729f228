"""The training lifecycle that methods hook into: the callback protocol.

It sits at the bottom of the package so that libraries (sparsity, transfer) can offer callbacks
without importing the training loop.

The :class:`~underbudget.train.trainer.Trainer` calls, in this order::

    before_run
      before_stage(stage)            # a stage is one call of Trainer.fit (e.g. one megabatch)
        before_epoch
          before_step(batch)
          [forward, loss, backward]
          before_optimizer_step      # gradients are ready (dense); mask them here
          [optimizer.step()]
          after_optimizer_step       # re-apply masks, regrow, update EMA, ...
          after_step(outputs)
        after_epoch(metrics)
      after_stage(stage, metrics)
    after_run

Callbacks see the trainer and may read or change: ``trainer.model``, ``trainer.optimizer``,
``trainer.scheduler``, ``trainer.step`` (global optimizer steps so far), ``trainer.epoch``
(epoch within the stage, 0-based), ``trainer.stage`` (stage index), ``trainer.steps_per_epoch``,
``trainer.total_steps`` (planned steps of the current stage), ``trainer.device``,
``trainer.loader`` (training loader of the stage) and ``trainer.log(event, **values)``, which
appends one JSON object to the run's ``metrics.jsonl``.

A callback that keeps state across steps must return it from :meth:`state_dict` (tensors,
numbers, strings, lists and dicts) so that a resumed run continues exactly.

Best-epoch selection (``train.select=best``) keeps a copy of the weights of the best epoch and
restores them at the end of the stage. Only what *belongs to the weights* travels with them:
the model's own state and what each callback returns from :meth:`weight_state` (its masks, a
label mapping). Counters, schedules and cost meters are never rewound. Selection only chooses
among epochs whose model meets every callback's end-of-stage constraint
(:meth:`meets_constraints`, e.g. a pruning schedule that has reached the stage's final
density); when no epoch does, the last one is kept and the stage metrics say so.
"""

from __future__ import annotations

from typing import Any


class Callback:
    """Base class: every hook is a no-op. Override the ones you need."""

    #: name used to store this callback's state in checkpoints (defaults to the class name)
    name: str | None = None

    def before_run(self, trainer: Any) -> None:
        """Called once, before the first stage."""

    def before_stage(self, trainer: Any, stage: int) -> None:
        """Called before training on a stage (not called again when a stage resumes)."""

    def before_epoch(self, trainer: Any) -> None:
        """Called before each epoch."""

    def before_step(self, trainer: Any, batch: Any) -> None:
        """Called with the batch before the forward pass."""

    def before_optimizer_step(self, trainer: Any) -> None:
        """Called after backward, before ``optimizer.step()``; gradients are available."""

    def after_optimizer_step(self, trainer: Any) -> None:
        """Called right after ``optimizer.step()``."""

    def after_step(self, trainer: Any, outputs: dict) -> None:
        """Called at the end of a step with ``{'loss': float-tensor, 'logits': tensor, ...}``."""

    def after_epoch(self, trainer: Any, metrics: dict) -> None:
        """Called after each epoch with its metrics (train and, if evaluated, val/test)."""

    def after_stage(self, trainer: Any, stage: int, metrics: dict) -> None:
        """Called after a stage, after best-validation weights were restored if selected."""

    def after_run(self, trainer: Any) -> None:
        """Called once at the end of the run."""

    def meets_constraints(self, trainer: Any) -> bool:
        """Whether the current model already satisfies what this callback imposes on it at
        the end of the stage (default: yes). Best-epoch selection only picks such epochs."""
        return True

    def weight_state(self) -> dict:
        """State that belongs to the current weights (e.g. masks), kept and restored with the
        best epoch's weights. Never counters or schedules (default: nothing)."""
        return {}

    def load_weight_state(self, state: dict) -> None:
        """Restore what :meth:`weight_state` returned, together with the weights."""

    def state_dict(self) -> dict:
        """State to checkpoint (default: nothing)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""

    @property
    def key(self) -> str:
        """Checkpoint key of this callback."""
        return self.name or type(self).__name__
