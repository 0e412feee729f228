"""Config sections of the constraints that compose with any method, and of execution.

``stream`` (data arriving as megabatches), ``precision`` (weight and activation bits, PTQ or
QAT) and ``transfer`` (a target task trained from the result) are valid in every experiment;
each is off by default, so a config without them means one stage, float weights and no
transfer. ``executor`` and ``resources`` say where and how the experiment graph runs; they
are platform settings (left out of a run's identity), and so is ``track``.

A new constraint is one dataclass and :func:`register_section`: its key is then valid in
every config, built with the same unknown-key checks, saved with the run and part of its
identity, and applied by every method whose trainers come from
:func:`underbudget.methods.common.make_trainer` (see ``docs/extending.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, unknown
from .utils.typed import build_dataclass

EXECUTORS = ("serial", "local", "ray", "slurm")
PRECISION_MODES = ("none", "ptq", "qat")


@dataclass
class StreamConfig:
    """Training data arrives as ``megabatches`` equal parts (0: no stream, one stage)."""

    megabatches: int = 0
    replay: str = "full"  # full | none | window:K | buffer:N
    warm_start: bool = True  # False: a fresh seeded init every stage (masks kept)
    class_balanced: bool = False
    val_fraction: float = 0.1  # of each megabatch, held out for selection

    @property
    def enabled(self) -> bool:
        return self.megabatches > 0

    def __post_init__(self) -> None:
        if self.megabatches < 0 or self.megabatches == 1:
            raise ConfigError(f"stream.megabatches must be 0 (no stream) or at least 2, "
                              f"got {self.megabatches}")


@dataclass
class PrecisionConfig:
    """Numeric precision of the trained model: PTQ after training, or QAT while training."""

    mode: str = "none"  # none | ptq | qat
    weight_bits: int = 8
    act_bits: int | None = None  # None: float activations
    calib_size: int = 512  # PTQ with act_bits: training images that calibrate ranges

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def __post_init__(self) -> None:
        if self.mode not in PRECISION_MODES:
            raise unknown("precision mode (precision.mode)", self.mode, PRECISION_MODES)
        for name, bits in (("weight_bits", self.weight_bits), ("act_bits", self.act_bits)):
            if bits is not None and not 2 <= bits <= 16:
                raise ConfigError(f"precision.{name} must be between 2 and 16, got {bits}")


@dataclass
class TransferConfig:
    """Transfer of the trained (pruned, quantized) model to a target task."""

    target: dict = field(default_factory=dict)  # a data section for the target ({} : off)
    methods: list[str] = field(default_factory=lambda: ["lp"])  # lp | ft | vp-<rlm|flm|ilm>
    budgets: list[str] = field(default_factory=lambda: ["10shot"])  # Nshot | fraction | full
    seeds: list[int] = field(default_factory=lambda: [0])
    options: dict = field(default_factory=dict)  # per-method stage settings (lp/ft/vp ...)

    @property
    def enabled(self) -> bool:
        return bool(self.target)


@dataclass
class ResourcesConfig:
    """What one task of the experiment graph asks of an executor."""

    cpus: int = 1
    gpus: int = 0


@dataclass
class SlurmConfig:
    """Slurm job settings for ``executor.name=slurm`` (through submitit)."""

    partition: str | None = None
    time_min: int = 60
    cpus_per_task: int | None = None  # None: resources.cpus
    gpus_per_node: int | None = None  # None: resources.gpus
    mem_gb: int | None = None
    array_parallelism: int = 64
    max_requeue: int = 3
    folder: str | None = None  # submitit logs (default: <experiment>/slurm)
    extra: dict = field(default_factory=dict)  # other submitit slurm_* parameters


@dataclass
class ExecutorConfig:
    """How the experiment graph's tasks are dispatched."""

    name: str = "serial"  # serial | local | ray | slurm
    workers: int | None = None  # local: worker processes (default: one per core)
    ray_address: str | None = None  # ray: an existing cluster (default: start a local one)
    retries: int = 0
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def __post_init__(self) -> None:
        if self.name not in EXECUTORS:
            raise unknown("executor (executor.name)", self.name, EXECUTORS)
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"executor.workers must be at least 1, got {self.workers}")


TRACK_BACKENDS = ("tensorboard", "wandb", "mlflow")
WANDB_MODES = ("offline", "online", "disabled")

@dataclass
class TrackConfig:
    """Experiment trackers that mirror a run: config, every logged event, summary, plots."""

    backends: list[str] = field(default_factory=list)  # tensorboard | wandb | mlflow
    project: str = "underbudget"  # W&B project, MLflow experiment
    group: str | None = None  # default: the top run directory's name (experiment or sweep)
    name: str | None = None  # default: the run directory's name (children: their path in it)
    dir: str | None = None  # offline files (default: <top run directory>/track)
    wandb_mode: str = "offline"  # offline (sync later with `wandb sync`) | online | disabled
    mlflow_uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else a file store in dir
    plots: bool = True  # send the report's PNG plots

    def __post_init__(self) -> None:
        for name in self.backends:
            if name not in TRACK_BACKENDS:
                raise unknown("tracker (track.backends)", name, TRACK_BACKENDS)
        if self.wandb_mode not in WANDB_MODES:
            raise unknown("W&B mode (track.wandb_mode)", self.wandb_mode, WANDB_MODES)


# --------------------------------------------------------------------------- registered sections

#: top-level key -> dataclass of a constraint section registered by a library or a user
_SECTIONS: dict[str, type] = {}


def register_section(name: str, cls: type) -> type:
    """Make ``name:`` a config section built as ``cls`` in every experiment.

    ``cls`` is a dataclass; it may define ``validate(cfg)`` (cross-field checks) and
    ``training_callbacks(cfg, trainer) -> list`` (the callbacks that apply it while a
    trainer trains). Returns ``cls``, so it also works as a decorator factory's result.
    """
    _SECTIONS[name] = cls
    return cls


def section_class(name: str) -> type | None:
    """The dataclass registered for section ``name`` (None when there is none)."""
    return _SECTIONS.get(name)


def build_sections(values: dict[str, Any]) -> dict[str, Any]:
    """Registered sections from their mappings (unknown keys rejected with suggestions)."""
    out = {}
    for name, mapping in values.items():
        if mapping is not None and not isinstance(mapping, dict):
            raise ConfigError(f"{name}: expected a mapping, got {mapping!r}")
        out[name] = build_dataclass(_SECTIONS[name], mapping or {}, name)
    return out
