"""Typed experiment configs: dataclasses, YAML in and out, ``key.sub=value`` overrides.

An experiment config has fixed sections (``data``, ``model``, ``optim``, ``train``,
``sparsity``) and one ``method`` section whose type is chosen by ``method.name`` from the
method registry. Unknown keys and wrong types are rejected with the closest valid name.

A run's identity (its directory name, the hash of its non-default settings) leaves out the
*platform* settings in :data:`PLATFORM_KEYS`: where and how it executes, not what it computes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import yaml

from .config_sources import (
    apply_overrides,
    check_repeated,
    get_dotted,
    list_presets,
    parse_override,
    presets_dir,
    resolve_source,
    set_dotted,
)
from .errors import ConfigError, unknown
from .schedule_registry import check_honoured, lower_schedule, register_schedule
from .sections import (
    TRACK_BACKENDS,
    WANDB_MODES,
    ExecutorConfig,
    PrecisionConfig,
    ResourcesConfig,
    StreamConfig,
    TrackConfig,
    TransferConfig,
    build_sections,
    section_class,
)
from .utils.typed import build_dataclass as _build
from .utils.yamlfile import load_yaml

__all__ = [  # the config API, re-exports from config_sources included
    "DataConfig", "ExperimentConfig", "LR_SCHEDULES", "MAX_NAME_LENGTH", "MethodConfig",
    "ModelConfig", "OPTIMIZERS", "OptimConfig", "PLATFORM_KEYS", "SparsityConfig",
    "TRACK_BACKENDS", "TrackConfig", "TrainConfig", "WANDB_MODES", "apply_overrides",
    "check_repeated", "config_hash", "flatten", "from_dict", "get_dotted", "is_platform_key",
    "list_presets", "load_config", "load_yaml", "method_config_class", "non_defaults",
    "parse_override", "presets_dir", "register_method_config", "register_schedule",
    "resolve_source", "run_name", "set_dotted", "to_dict", "to_yaml", "validate",
]

#: Settings that choose where and how a run executes, not what it computes: they are left out
#: of the run's name and hash, so a run started on one device (or with progress bars, trackers,
#: another checkpoint cadence or executor) resumes on another. A key matches an entry equal
#: to it or below it (``track`` covers ``track.project``). ``train.amp`` (bf16 autocast) and
#: ``train.compile`` are NOT platform settings: they change the arithmetic, so a run with
#: either is another run.
PLATFORM_KEYS: tuple[str, ...] = (
    "train.device",  # cpu, cuda:1, mps...: the same computation on other hardware
    "train.progress",  # progress bars and epoch lines
    "train.checkpoint",  # whether to checkpoint every epoch (resumability, not results)
    "train.channels_last",  # a CUDA memory layout
    "train.deterministic",  # deterministic CUDA kernels (reproducibility on one machine)
    "data.root",  # where a named dataset's files are here (for npz/imagefolder: the data)
    "data.download",  # whether missing files may be fetched (checksummed)
    "track",  # tracker section: backends, project, group, run name
    "executor",  # how runs are dispatched (serial, processes, Ray, Slurm) and by how many
    "resources",  # CPUs and GPUs each task asks of the executor
)
#: evaluations that ``train.curves`` can ask for every ``train.eval_every`` epochs
CURVES = ("val", "test", "train")
#: the run directory name is ``<name>-<hash>``; file systems allow 255 bytes per name
MAX_NAME_LENGTH = 200


def is_platform_key(key: str) -> bool:
    """Whether the dotted ``key`` is a platform setting (see :data:`PLATFORM_KEYS`)."""
    return any(key == p or key.startswith(p + ".") for p in PLATFORM_KEYS)


@dataclass
class DataConfig:
    """Which dataset, which part of it, and how it is fed."""

    name: str = "synthetic"
    root: str | None = None
    download: bool = False
    image_size: int | None = None
    channels: int | None = None
    limit: int | None = None  # class-balanced subset of the training set (compute, not budget)
    test_limit: int | None = None  # class-balanced subset of the test set (compute only)
    fraction: float | None = None  # data budget: fraction of the training set
    kshot: int | None = None  # data budget: k images per class
    val_fraction: float = 0.0  # held out from the training data, never the test set
    batch_size: int = 128
    eval_batch_size: int = 1000
    crop_padding: int = 0
    flip: bool | None = None  # None: the dataset's default
    options: dict = field(default_factory=dict)  # extra reader options (e.g. synthetic sizes)


@dataclass
class ModelConfig:
    """Architecture by registry name, its keyword arguments, optional weights to load."""

    name: str = "mlp"
    kwargs: dict = field(default_factory=dict)
    weights: str | None = None


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (epochs are counted within a stage)."""

    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "cosine"  # none | step | multistep | cosine
    milestones: list[float] = field(default_factory=list)  # epochs (or fractions if all < 1)
    gamma: float = 0.1
    step_size: int = 30
    warmup_epochs: float = 0.0
    min_lr: float = 0.0


@dataclass
class TrainConfig:
    """The training loop's settings."""

    epochs: int = 10
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    amp: bool = False  # bf16 autocast on CUDA
    channels_last: bool = False
    compile: bool = False
    deterministic: bool = False
    eval_every: int = 1  # epochs between validation evaluations (0: only at a stage's end)
    # evaluations also run every eval_every epochs, for learning curves (e.g. [val, test]);
    # by default test and train sets are evaluated once, at the end of each stage, on the
    # weights the stage keeps
    curves: list[str] = field(default_factory=list)
    select: str = "last"  # last | best (best validation accuracy of the stage)
    patience: int | None = None  # early stopping on validation accuracy
    min_delta: float = 0.0
    checkpoint: bool = True  # checkpoint every epoch so an interrupted run resumes
    max_loss: float = 1e4  # divergence guard: stop when the running loss exceeds this
    progress: bool = True


@dataclass
class SparsityConfig:
    """How weights become sparse, on the run's time axis (steps; stages of a ``stream``).

    ``method`` is the schedule; ``progressive`` (APP), ``iterative`` (IMP) and
    ``dual_dynamic`` (D2-Sparse) read their own settings from the mapping of that name
    (see :mod:`underbudget.schedule_registry`).
    """

    method: str = "none"  # none|prune_at_init|static|gradual|set|rigl|progressive|iterative|...
    density: float = 1.0
    criterion: str = "magnitude"
    scope: str = "global"
    exclude_first: bool = False
    exclude_last: bool = False
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    score_batches: int = 10
    iterations: int | None = None  # pruning-at-init rounds (default: 100 for SynFlow, else 1)
    start: float = 0.0  # gradual: fraction of training where pruning starts
    end: float = 0.75  # gradual: fraction where the final density is reached
    interval: int = 100  # steps between mask updates (gradual, set, rigl)
    alpha: float = 0.3  # set/rigl drop fraction
    t_end: float = 0.75  # set/rigl: fraction of training after which masks freeze
    init: str = "erk"  # set/rigl/static/dual_dynamic initial allocation
    progressive: dict = field(default_factory=dict)  # APP: d_start, shape, tau, score_* ...
    iterative: dict = field(default_factory=dict)  # IMP: rate, levels, rewind
    dual_dynamic: dict = field(default_factory=dict)  # D2-Sparse: fast_*, slow_*, lambda_* ...


@dataclass
class MethodConfig:
    """Base of every method's config section; ``name`` selects the method.

    ``honours`` names the composable constraints the method itself applies while it trains
    (``stream``: it runs over ``stream.megabatches``; ``qat``: quantization-aware training
    under ``precision.mode=qat``; ``sections``: the registered constraint sections, through
    ``methods.common.make_trainer``). A config asking a method for one it does not honour is
    refused rather than silently run without it. ``transfer`` and post-training quantization
    are stages after any method (see :mod:`underbudget.experiment.compose`).
    """

    name: str = "train"
    honours: ClassVar[tuple[str, ...]] = ()


@dataclass
class ExperimentConfig:
    """One experiment: everything needed to reproduce a run."""

    name: str = "experiment"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    sweep: dict = field(default_factory=dict)  # {"dotted.key": [values]}: a grid of child runs
    report: dict = field(default_factory=dict)  # options for the report (method-specific)
    sections: dict = field(default_factory=dict)  # registered constraint sections, by name


# --------------------------------------------------------------------------- building


#: method name -> its config section's dataclass, filled by each method as it registers
_METHOD_CONFIGS: dict[str, type] = {}


def register_method_config(name: str, cls: type) -> None:
    """Make ``method.name: <name>`` build its section as ``cls`` (called by the methods)."""
    _METHOD_CONFIGS[name] = cls


def method_config_class(name: str) -> type:
    """The config dataclass registered for method ``name``."""
    if name not in _METHOD_CONFIGS:
        raise unknown("method", name, _METHOD_CONFIGS)
    return _METHOD_CONFIGS[name]


def from_dict(values: dict) -> ExperimentConfig:
    """Build and validate an ExperimentConfig from a plain nested mapping."""
    values = dict(values or {})
    values.pop("description", None)  # presets carry a one-line description for `list`
    extra = {k: values.pop(k) for k in list(values) if section_class(k) is not None}
    method = values.pop("method", None) or {}
    if isinstance(method, str):
        method = {"name": method}
    if not isinstance(method, dict):
        raise ConfigError(f"method: expected a mapping with a 'name', got {method!r}")
    cfg = _build(ExperimentConfig, values, "")
    cls = method_config_class(method.get("name", "train"))
    cfg.method = _build(cls, method, "method")
    cfg.sections = build_sections(extra)
    cfg = lower_schedule(cfg)
    validate(cfg)
    return cfg


def to_dict(cfg: Any) -> dict:
    """A plain nested dict (YAML/JSON-able) of a config; registered sections at the top."""
    out = dataclasses.asdict(cfg)
    out.update(out.pop("sections", None) or {})
    return out


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# --------------------------------------------------------------------------- loading and names


def load_config(source: str | dict, overrides: list[str] | dict | None = None) -> ExperimentConfig:
    """Preset name, YAML path or mapping, plus overrides → validated ExperimentConfig."""
    values = resolve_source(source) if isinstance(source, str) else dict(source)
    if overrides:
        values = apply_overrides(values, overrides)
    return from_dict(values)


def flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mapping → ``{'a.b': value}``."""
    if isinstance(values, dict):
        out: dict[str, Any] = {}
        for key, value in values.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: values}


def non_defaults(cfg: ExperimentConfig) -> dict[str, Any]:
    """Flattened settings that differ from the defaults (the name and platform keys excluded).
    """
    ref = ExperimentConfig()
    ref.method = type(cfg.method)()
    mine, base = flatten(to_dict(cfg)), flatten(to_dict(ref))
    keep = {"data.root"} if cfg.data.name in ("npz", "imagefolder") else set()  # root is the data
    return {k: v for k, v in mine.items() if k != "name" and base.get(k, object()) != v
            and (k in keep or not is_platform_key(k))}


def config_hash(cfg: ExperimentConfig, length: int = 8) -> str:
    """Short stable hash of the non-default settings (names a run directory)."""
    text = json.dumps(non_defaults(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def run_name(cfg: ExperimentConfig) -> str:
    """Run directory name: the config name plus the hash of its non-default settings."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in cfg.name)
    return f"{safe}-{config_hash(cfg)}"


# --------------------------------------------------------------------------- validation

#: the optimizers and learning-rate schedules :mod:`underbudget.train.optim` builds
OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("none", "step", "multistep", "cosine")


def validate(cfg: ExperimentConfig) -> None:
    """Cross-field checks that types alone cannot express."""
    d, o, t = cfg.data, cfg.optim, cfg.train
    if d.batch_size < 1 or d.eval_batch_size < 1:
        raise ConfigError("data.batch_size and data.eval_batch_size must be at least 1")
    if d.fraction is not None and not 0 < d.fraction <= 1:
        raise ConfigError(f"data.fraction must be in (0, 1], got {d.fraction}")
    if d.kshot is not None and d.kshot < 1:
        raise ConfigError(f"data.kshot must be at least 1, got {d.kshot}")
    if d.fraction is not None and d.kshot is not None:
        raise ConfigError("set data.fraction or data.kshot, not both")
    if not 0 <= d.val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {d.val_fraction}")
    if d.limit is not None and d.limit < 1:
        raise ConfigError(f"data.limit must be at least 1, got {d.limit}")
    if o.name not in OPTIMIZERS:
        raise unknown("optimizer (optim.name)", o.name, OPTIMIZERS)
    if o.schedule not in LR_SCHEDULES:
        raise unknown("LR schedule (optim.schedule)", o.schedule, LR_SCHEDULES)
    if not (math.isfinite(o.lr) and o.lr > 0):
        raise ConfigError(f"optim.lr must be a positive finite number, got {o.lr}")
    if not (math.isfinite(o.weight_decay) and o.weight_decay >= 0):
        raise ConfigError(f"optim.weight_decay must be a finite number >= 0, got {o.weight_decay}")
    if len(cfg.name.encode()) > MAX_NAME_LENGTH:
        raise ConfigError(f"name is {len(cfg.name)} characters long; keep it to "
                          f"{MAX_NAME_LENGTH} (it names the run directory)")
    if t.epochs < 0:
        raise ConfigError(f"train.epochs must be >= 0, got {t.epochs}")
    for name in t.curves:
        if name not in CURVES:
            raise unknown("learning curve (train.curves)", name, CURVES)
    if t.select not in ("last", "best"):
        raise unknown("selection (train.select)", t.select, ("last", "best"))
    if not 0 < cfg.sparsity.density <= 1:
        raise ConfigError(
            f"sparsity.density must be in (0, 1] (fraction of weights kept), "
            f"got {cfg.sparsity.density}"
        )
    check_honoured(cfg)
    for key, values in cfg.sweep.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.{key}: expected a non-empty list of values")
    for check in [getattr(x, "validate", None) for x in (*cfg.sections.values(), cfg.method)]:
        if callable(check):
            check(cfg)
