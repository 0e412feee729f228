"""The three trackers behind one small interface: open a run, send numbers, images, close.

Each backend is imported when a session starts (so a missing package fails before training)
and opens one tracker run per run directory. Offline by default: TensorBoard event files,
a W&B offline run (``wandb sync`` uploads it later), an MLflow file store.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import TrackConfig, flatten
from ..errors import ConfigError, MissingDependencyError, require


@dataclass
class RunInfo:
    """What a tracker needs to open a run: names, the resolved config, its parent's handle."""

    project: str
    group: str
    name: str
    path: Path
    config: dict = field(default_factory=dict)
    parent: Any = None


def hyperparameters(config: dict) -> dict[str, bool | int | float | str]:
    """The config flattened to ``{'optim.lr': 0.1, ...}``; lists and None as JSON text."""
    out: dict[str, bool | int | float | str] = {}
    for key, value in flatten(config).items():
        plain = isinstance(value, (bool, int, float, str))
        out[key] = value if plain else json.dumps(value, default=str)
    return out


class Handle:
    """One open tracker run."""

    def metrics(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def texts(self, values: dict[str, str], step: int) -> None:
        """Non-numeric summary fields (status, method...)."""

    def images(self, paths: list[Path], step: int) -> None:
        raise NotImplementedError

    def close(self, ok: bool) -> None:
        raise NotImplementedError


class Backend:
    """A tracker library, imported and configured once per session."""

    name = ""

    def open(self, info: RunInfo) -> Handle:
        raise NotImplementedError

    def where(self) -> str:
        """One line saying how to look at what was written."""
        return ""


# ---------------------------------------------------------------------------- TensorBoard


class TensorBoard(Backend):
    name = "tensorboard"

    def __init__(self, cfg: TrackConfig, folder: Path):
        purpose = "track.backends=[tensorboard]"
        require("tensorboard", "tensorboard", purpose)
        self.tb = require("torch.utils.tensorboard", "tensorboard", purpose, dist="tensorboard")
        self.root = folder / "tensorboard"

    def open(self, info: RunInfo) -> Handle:
        from torch.utils.tensorboard.summary import hparams

        writer = self.tb.SummaryWriter(log_dir=str(self.root / info.group / info.name))
        _, start, end = hparams(hyperparameters(info.config), {})
        writer.file_writer.add_summary(start)  # the HParams tab
        text = json.dumps(info.config, indent=2, default=str)
        writer.add_text("config", "    " + text.replace("\n", "\n    "), 0)
        return _TensorBoardRun(writer, end)

    def where(self) -> str:
        return f"tensorboard --logdir {self.root}"


class _TensorBoardRun(Handle):
    def __init__(self, writer: Any, end: Any):
        self.writer, self.end = writer, end

    def metrics(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def texts(self, values: dict[str, str], step: int) -> None:
        lines = "\n".join(f"- {k}: {v}" for k, v in values.items())
        self.writer.add_text("summary", lines, step)

    def images(self, paths: list[Path], step: int) -> None:
        import numpy as np
        from PIL import Image

        for path in paths:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            self.writer.add_image(f"report/{path.stem}", pixels, step, dataformats="HWC")

    def close(self, ok: bool) -> None:
        self.writer.file_writer.add_summary(self.end)
        self.writer.close()


# ---------------------------------------------------------------------------- W&B

_WANDB_MIN = (0, 19, 10)  # reinit="create_new": a sweep and its children open at once


class Wandb(Backend):
    name = "wandb"

    def __init__(self, cfg: TrackConfig, folder: Path):
        self.wandb = require("wandb", "wandb", "track.backends=[wandb]")
        version = _version(getattr(self.wandb, "__version__", ""))
        if version and version < _WANDB_MIN:
            raise MissingDependencyError(
                f"track.backends=[wandb] needs wandb >= 0.19.10, found "
                f"{self.wandb.__version__}: pip install -U 'underbudget[wandb]'"
            )
        self.mode, self.folder = cfg.wandb_mode, folder

    def open(self, info: RunInfo) -> Handle:
        self.folder.mkdir(parents=True, exist_ok=True)
        run = self.wandb.init(
            project=info.project, group=info.group, name=info.name, config=info.config,
            dir=str(self.folder), mode=self.mode, reinit="create_new",
            job_type="run" if info.parent is None else "child",
            settings=self.wandb.Settings(silent=True, console="off"),
        )
        run.define_metric("step")
        run.define_metric("*", step_metric="step")  # steps may restart between trainers
        return _WandbRun(self.wandb, run)

    def where(self) -> str:
        if self.mode == "offline":
            return f"wandb sync {self.folder / 'wandb'}/offline-run-*"
        return ""


class _WandbRun(Handle):
    def __init__(self, wandb: Any, run: Any):
        self.wandb, self.run = wandb, run

    def metrics(self, values: dict[str, float], step: int) -> None:
        self.run.log({**values, "step": step})

    def texts(self, values: dict[str, str], step: int) -> None:
        self.run.summary.update(values)

    def images(self, paths: list[Path], step: int) -> None:
        images = {f"report/{p.stem}": self.wandb.Image(str(p)) for p in paths}
        self.run.log({**images, "step": step})

    def close(self, ok: bool) -> None:
        self.run.finish(exit_code=0 if ok else 1)


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


# ---------------------------------------------------------------------------- MLflow


class Mlflow(Backend):
    name = "mlflow"

    def __init__(self, cfg: TrackConfig, folder: Path):
        require("mlflow", "mlflow", "track.backends=[mlflow]")
        import mlflow.entities

        self.entities, self.project, self.folder = mlflow.entities, cfg.project, folder
        self.uri = cfg.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") \
            or (folder / "mlruns").resolve().as_uri()
        self.local = None  # the folder of a file store, made again if a --force run removes it
        if self.uri.startswith("file:") or "://" not in self.uri:
            self.local = Path(self.uri.removeprefix("file://").removeprefix("file:"))
            # Recent MLflow releases keep the file store only for those who opt in; it is what
            # a local, offline run directory wants (plain files, no database to set up).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self._connect()

    def _connect(self) -> None:
        from mlflow.tracking import MlflowClient

        artifacts = (self.folder / "mlartifacts").resolve().as_uri() \
            if self.uri.startswith("sqlite:") else None
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            found = self.client.get_experiment_by_name(self.project)
            self.experiment = found.experiment_id if found is not None else \
                self.client.create_experiment(self.project, artifact_location=artifacts)
        except Exception as exc:
            cause = f"{type(exc).__name__}: {exc}".splitlines()[0]
            raise ConfigError(
                f"MLflow cannot use the tracking store {self.uri} ({cause}); set "
                f"track.mlflow_uri to one it accepts (e.g. sqlite:///{self.folder}/mlflow.db, "
                "or a file store with MLFLOW_ALLOW_FILE_STORE=true) or unset "
                "MLFLOW_TRACKING_URI"
            ) from None

    def open(self, info: RunInfo) -> Handle:
        if self.local is not None and not self.local.exists():
            self._connect()
        tags = {"group": info.group, "underbudget.run_dir": str(info.path)}
        if info.parent is not None:
            tags["mlflow.parentRunId"] = info.parent.run_id
        run = self.client.create_run(self.experiment, run_name=info.name, tags=tags)
        handle = _MlflowRun(self.client, self.entities, run.info.run_id)
        params = [self.entities.Param(k, str(v)[:500])
                  for k, v in hyperparameters(info.config).items()]
        for i in range(0, len(params), 100):  # MLflow's limit per batch
            self.client.log_batch(handle.run_id, params=params[i:i + 100])
        return handle

    def where(self) -> str:
        opt_in = "MLFLOW_ALLOW_FILE_STORE=true " if self.local is not None else ""
        return f"{opt_in}mlflow ui --backend-store-uri {self.uri}"


class _MlflowRun(Handle):
    def __init__(self, client: Any, entities: Any, run_id: str):
        self.client, self.entities, self.run_id = client, entities, run_id

    def metrics(self, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [self.entities.Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])

    def texts(self, values: dict[str, str], step: int) -> None:
        tags = [self.entities.RunTag(k, v[:5000]) for k, v in values.items()]
        for i in range(0, len(tags), 100):
            self.client.log_batch(self.run_id, tags=tags[i:i + 100])

    def images(self, paths: list[Path], step: int) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path), "report")

    def close(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


BACKENDS: dict[str, type[Backend]] = {"tensorboard": TensorBoard, "wandb": Wandb,
                                      "mlflow": Mlflow}
