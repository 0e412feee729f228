"""Mirror a run's numbers to experiment trackers (TensorBoard, Weights & Biases, MLflow).

Trackers are optional extras (``pip install 'underbudget[track]'``) imported only when asked
for; the run directory stays the record of truth, trackers are a view of it.
"""

from __future__ import annotations

from typing import Any

from ..errors import require, unknown
from .callbacks import Callback

TRACKERS = ("tensorboard", "wandb", "mlflow")


def _scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


class TrackerCallback(Callback):
    """Logs epoch and stage metrics to the chosen trackers, keyed by global step."""

    name = "trackers"

    def __init__(self, names: list[str], run_dir: str | None = None, project: str = "underbudget",
                 run_name: str | None = None, config: dict | None = None):
        for name in names:
            if name not in TRACKERS:
                raise unknown("tracker (train.trackers)", name, TRACKERS)
        self.names, self.run_dir, self.project = list(names), run_dir, project
        self.run_name, self.config = run_name, config or {}
        self._backends: dict[str, Any] = {}

    def before_run(self, trainer) -> None:
        for name in self.names:
            self._backends[name] = getattr(self, f"_open_{name}")()

    def _open_tensorboard(self):
        require("tensorboard", "track", "train.trackers=[tensorboard]")
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=f"{self.run_dir or '.'}/tensorboard")

    def _open_wandb(self):
        wandb = require("wandb", "track", "train.trackers=[wandb]")
        return wandb.init(project=self.project, name=self.run_name, config=self.config,
                          dir=self.run_dir, reinit=True)

    def _open_mlflow(self):
        mlflow = require("mlflow", "track", "train.trackers=[mlflow]")
        mlflow.set_experiment(self.project)
        active = mlflow.start_run(run_name=self.run_name)
        mlflow.log_params({k: str(v) for k, v in self.config.items()})
        return active

    def _write(self, prefix: str, metrics: dict, step: int) -> None:
        values = {f"{prefix}/{k}": v for k, v in _scalars(metrics).items()}
        for name, backend in self._backends.items():
            if name == "tensorboard":
                for key, value in values.items():
                    backend.add_scalar(key, value, step)
            elif name == "wandb":
                backend.log(values, step=step)
            elif name == "mlflow":
                import mlflow

                mlflow.log_metrics({k.replace("/", "."): v for k, v in values.items()},
                                   step=step)

    def after_epoch(self, trainer, metrics: dict) -> None:
        self._write("epoch", metrics, trainer.step)

    def after_stage(self, trainer, stage: int, metrics: dict) -> None:
        self._write("stage", metrics, trainer.step)

    def after_run(self, trainer) -> None:
        for name, backend in self._backends.items():
            if name == "tensorboard":
                backend.close()
            elif name == "wandb":
                backend.finish()
            elif name == "mlflow":
                import mlflow

                mlflow.end_run()
        self._backends = {}
