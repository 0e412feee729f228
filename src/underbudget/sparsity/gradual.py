"""Gradual magnitude pruning (Zhu & Gupta, 2017) as a training callback."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from underbudget.errors import ConfigError, unknown
from underbudget.sparsity.allocation import SCOPES, check_density, keep_count, select
from underbudget.sparsity.criteria import score
from underbudget.sparsity.enforce import MaskCallback
from underbudget.sparsity.mask import MaskSet
from underbudget.sparsity.schedules import cubic_density
from underbudget.sparsity.targets import TargetsLike, unwrap


class GradualMagnitude(MaskCallback):
    """Prune on the cubic schedule every ``dt`` optimizer steps from ``t0`` to ``t0 + n dt``.

    Density goes from ``d_initial`` to ``d_final``; masks are nested (only alive weights are
    scored) and enforced between pruning events like :class:`MaskCallback`. Steps are counted
    by the callback (optimizer steps it has seen), so a resumed run continues exactly.
    """

    name = "gradual_magnitude"

    def __init__(
        self,
        d_final: float,
        d_initial: float = 1.0,
        t0: int = 0,
        n: int = 10,
        dt: int = 100,
        scope: str | Mapping[str, float] = "global",
        masks: MaskSet | None = None,
        targets: TargetsLike = None,
        log: bool = True,
        input_shape: tuple[int, ...] | None = None,
    ):
        super().__init__(masks, targets, log, input_shape)
        self.d_final = check_density(d_final, "final density")
        self.d_initial = check_density(d_initial, "initial density")
        if self.d_final > self.d_initial:
            raise ConfigError(
                f"gradual pruning goes down: d_final={d_final} exceeds d_initial={d_initial}"
            )
        if n < 1 or dt < 1 or t0 < 0:
            raise ConfigError(
                f"gradual pruning needs n >= 1, dt >= 1, t0 >= 0 (got {n}, {dt}, {t0})"
            )
        if not isinstance(scope, Mapping) and scope not in SCOPES:
            raise unknown("scope", scope, SCOPES)
        self.t0, self.n, self.dt, self.scope = int(t0), int(n), int(dt), scope
        self.steps = 0

    def target(self, step: int) -> float:
        """Scheduled density after ``step`` optimizer steps."""
        return cubic_density(step, self.d_final, self.d_initial, self.t0, self.n, self.dt)

    def is_event(self, step: int) -> bool:
        return self.t0 <= step <= self.t0 + self.n * self.dt and (step - self.t0) % self.dt == 0

    def held(self, step: int) -> float:
        """Density the masks hold after ``step`` steps: the target of the last event so far."""
        if step < self.t0:
            return self.d_initial
        last = self.t0 + min(self.n, (step - self.t0) // self.dt) * self.dt
        return self.target(last)

    def meets_constraints(self, trainer: Any) -> bool:
        """True once no pruning event is left before the end of the current stage."""
        end = getattr(trainer, "stage_end_step", None)
        if end is None:
            return True
        remaining = max(0, int(end) - int(trainer.step))
        return self.held(self.steps) == self.held(self.steps + remaining)

    def before_run(self, trainer: Any) -> None:
        super().before_run(trainer)
        if self.steps == 0 and self.is_event(0):
            self.prune_to(trainer, self.target(0))

    def after_optimizer_step(self, trainer: Any) -> None:
        super().after_optimizer_step(trainer)
        self.steps += 1
        if self.is_event(self.steps):
            self.prune_to(trainer, self.target(self.steps))

    def prune_to(self, trainer: Any, density: float) -> None:
        """Prune the alive weights by magnitude down to ``density`` (no-op if already there)."""
        model = unwrap(trainer.model)
        if keep_count(density, self.masks.numel()) >= self.masks.nonzeros():
            return
        scores = score("magnitude", model, self.masks)
        self.masks.update(select(scores, self.masks, density, self.scope))
        self.masks.apply(model)
        self.enforcer.sync(trainer.optimizer)
        self.on_change(trainer, schedule_density=density, pruning_step=self.steps)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["steps"] = self.steps
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.steps = int(state.get("steps", 0))
