"""Typed experiment configs: dataclasses, YAML in and out, ``key.sub=value`` overrides.

An experiment config has fixed sections (``data``, ``model``, ``optim``, ``train``,
``sparsity``) and one ``method`` section whose type is chosen by ``method.name`` from the
method registry. Unknown keys and wrong types are rejected with the closest valid name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from .errors import ConfigError, closest


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
    eval_every: int = 1  # epochs between evaluations (0: only at the end of a stage)
    select: str = "last"  # last | best (best validation accuracy of the stage)
    patience: int | None = None  # early stopping on validation accuracy
    min_delta: float = 0.0
    checkpoint: bool = True  # checkpoint every epoch so an interrupted run resumes
    max_loss: float = 1e4  # divergence guard: stop when the running loss exceeds this
    progress: bool = True


@dataclass
class SparsityConfig:
    """Sparsity applied by the plain ``train`` method (other methods have their own)."""

    method: str = "none"  # none | prune_at_init | gradual | set | rigl | static
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
    init: str = "erk"  # set/rigl/static initial allocation


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
        from .errors import unknown

        for name in self.backends:
            if name not in TRACK_BACKENDS:
                raise unknown("tracker (track.backends)", name, TRACK_BACKENDS)
        if self.wandb_mode not in WANDB_MODES:
            raise unknown("W&B mode (track.wandb_mode)", self.wandb_mode, WANDB_MODES)


@dataclass
class MethodConfig:
    """Base of every method's config section; ``name`` selects the method."""

    name: str = "train"


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
    track: TrackConfig = field(default_factory=TrackConfig)
    sweep: dict = field(default_factory=dict)  # {"dotted.key": [values]}: a grid of child runs
    report: dict = field(default_factory=dict)  # options for the report (method-specific)


# --------------------------------------------------------------------------- type checking

_NONE = type(None)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; convert int→float and tuples→lists."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and _NONE in args:
            return None
        errors = []
        for arg in args:
            if arg is _NONE:
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of settings, got {value!r}")
        return _build(tp, value, where)
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 5e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is _NONE:
        return "null"
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _build(cls: type, values: dict, where: str) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, rejecting unknown keys."""
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            prefix = f"{where}." if where else ""
            raise ConfigError(
                f"unknown config key '{prefix}{key}'{closest(key, names)}; "
                f"valid keys{' of ' + where if where else ''}: {', '.join(names)}"
            )
        sub = f"{where}.{key}" if where else key
        kwargs[key] = _coerce(value, hints[key], sub)
    return cls(**kwargs)


# --------------------------------------------------------------------------- building


def method_config_class(name: str) -> type:
    """The config dataclass registered for method ``name``."""
    from .methods.registry import get_method

    return get_method(name).config_cls


def from_dict(values: dict) -> ExperimentConfig:
    """Build and validate an ExperimentConfig from a plain nested mapping."""
    values = dict(values or {})
    values.pop("description", None)  # presets carry a one-line description for `list`
    method = values.pop("method", None) or {}
    if isinstance(method, str):
        method = {"name": method}
    if not isinstance(method, dict):
        raise ConfigError(f"method: expected a mapping with a 'name', got {method!r}")
    cfg = _build(ExperimentConfig, values, "")
    cls = method_config_class(method.get("name", "train"))
    cfg.method = _build(cls, method, "method")
    validate(cfg)
    return cfg


def to_dict(cfg: Any) -> dict:
    """A plain nested dict (YAML/JSON-able) of a config."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping with a clear error for syntax problems."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return values


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key.sub=value``; the value is read as YAML (numbers, lists, true/null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def set_dotted(values: dict, key: str, value: Any) -> None:
    """Set ``values['a']['b'] = value`` for ``key='a.b'``, creating mappings as needed."""
    parts = key.split(".")
    node = values
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif isinstance(child, str) and part == "method":
            child = node[part] = {"name": child}
        elif not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def get_dotted(values: dict, key: str) -> Any:
    """Read a dotted key from a nested mapping (None when absent)."""
    node: Any = values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def apply_overrides(values: dict, overrides: list[str] | dict) -> dict:
    """Apply ``key=value`` strings (or a mapping of dotted keys) to a nested mapping copy."""
    values = json.loads(json.dumps(values))
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides)
    for key, value in items:
        set_dotted(values, key, value)
    return values


# --------------------------------------------------------------------------- presets and names


def presets_dir() -> Path:
    """Directory of the shipped YAML presets."""
    return Path(__file__).parent / "presets"


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def resolve_source(source: str) -> dict:
    """Read a preset name or a YAML file path into a nested mapping."""
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.exists():
        values = load_yaml(path)
        values.setdefault("name", path.stem)
        return values
    preset = presets_dir() / f"{source}.yaml"
    if not preset.exists():
        names = list_presets()
        raise ConfigError(
            f"unknown preset {source!r}{closest(source, names)} and no such file; "
            f"presets: {', '.join(names)}"
        )
    values = load_yaml(preset)
    values.setdefault("name", source)
    return values


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
    """Flattened settings that differ from the defaults (the name excluded)."""
    ref = ExperimentConfig()
    ref.method = type(cfg.method)()
    mine, base = flatten(to_dict(cfg)), flatten(to_dict(ref))
    return {k: v for k, v in mine.items() if k != "name" and base.get(k, object()) != v}


def config_hash(cfg: ExperimentConfig, length: int = 8) -> str:
    """Short stable hash of the non-default settings (names a run directory)."""
    text = json.dumps(non_defaults(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def run_name(cfg: ExperimentConfig) -> str:
    """Run directory name: the config name plus the hash of its non-default settings."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in cfg.name)
    return f"{safe}-{config_hash(cfg)}"


# --------------------------------------------------------------------------- validation

_SCHEDULES = ("none", "step", "multistep", "cosine")
_OPTIMIZERS = ("sgd", "adam", "adamw")


def validate(cfg: ExperimentConfig) -> None:
    """Cross-field checks that types alone cannot express."""
    from .errors import unknown

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
    if o.name not in _OPTIMIZERS:
        raise unknown("optimizer (optim.name)", o.name, _OPTIMIZERS)
    if o.schedule not in _SCHEDULES:
        raise unknown("LR schedule (optim.schedule)", o.schedule, _SCHEDULES)
    if o.lr <= 0:
        raise ConfigError(f"optim.lr must be positive, got {o.lr}")
    if t.epochs < 0:
        raise ConfigError(f"train.epochs must be >= 0, got {t.epochs}")
    if t.select not in ("last", "best"):
        raise unknown("selection (train.select)", t.select, ("last", "best"))
    if not 0 < cfg.sparsity.density <= 1:
        raise ConfigError(
            f"sparsity.density must be in (0, 1] (fraction of weights kept), "
            f"got {cfg.sparsity.density}"
        )
    for key, values in cfg.sweep.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.{key}: expected a non-empty list of values")
    check = getattr(cfg.method, "validate", None)
    if callable(check):
        check(cfg)
