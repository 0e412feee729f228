"""The stages a config with ``transfer`` or ``precision.mode: ptq`` asks for, and where they live.

A plan is plain data (paths relative to the results root, stage configs as mappings): the
experiment compiler turns it into graph tasks. The directory rule makes every stage
deterministic from what it computes, so a stage finished once is found again by any
experiment that needs it:

- stages live in ``stages/`` beside the experiment (the results root for one experiment, the
  sweep's folder for a sweep member); the experiment's own directory holds its report;
- the **source** is ``stages/source-<hash>``: ``<hash>`` is the config hash (as in a run's
  name) of the config without its ``transfer`` section and without ``precision`` when that is
  PTQ; the experiment's name is not part of it. A ``lottery`` source deploys one model per
  level, ``level-KK`` inside it (the lottery method's own layout);
- a **quantize** stage is ``<upstream>/ptq-w<bits>`` (``ptq-w<bits>a<bits>-c<calib_size>``
  with activations) inside the model it quantizes;
- a **transfer** is ``<upstream>/transfer/<method>-<budget>-s<seed>-<hash>`` inside the model
  it transfers; ``<hash>`` covers the target (``transfer.target`` without where its files
  are) and the options that method uses (``transfer.options`` without the other methods'
  sections).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
from dataclasses import dataclass, field

from ..config import DataConfig, ExperimentConfig, config_hash, flatten, to_dict
from ..errors import ConfigError, unknown
from ..methods.compress_transfer.config import (
    CompressTransferConfig,
    parse_budget,
    parse_method,
    validate_method,
)
from ..methods.lottery import level_name
from ..sections import PrecisionConfig, TransferConfig
from ..utils.typed import build_dataclass

STAGES = "stages"
#: keys of ``transfer.options``: the transfer settings of the compress_transfer method
OPTION_KEYS = ("lp", "ft", "vp", "val_cap", "full_val_fraction", "select", "n_bins",
               "ece_binning", "transfer_checkpoints", "save_weights")
_KINDS = ("lp", "ft", "vp")
#: methods whose run holds several models, none of them "the" deployed one
_MANY_MODELS = {"compress_transfer": "it transfers its own variants (method.target)",
                "d2sparse-grid": "a grid holds one model per arm; use method d2sparse"}


@dataclass
class StagePlan:
    """One stage to run: its kind (``run``, ``quantize``, ``transfer``, ``report``),
    directory, config, the directories it waits for and a one-line label."""

    kind: str
    path: str
    config: dict
    deps: list[str] = field(default_factory=list)
    label: str = ""


def composes(cfg: ExperimentConfig) -> bool:
    """Whether ``cfg`` asks for stages after its source (transfer, or PTQ)."""
    return cfg.transfer.enabled or cfg.precision.mode == "ptq"


def source_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The source stage's config: ``cfg`` without transfer, PTQ, sweep and report options."""
    precision = PrecisionConfig() if cfg.precision.mode == "ptq" else cfg.precision
    return dataclasses.replace(cfg, transfer=TransferConfig(), precision=precision, sweep={},
                               report={})


def _digest(values: dict, length: int = 8) -> str:
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _non_defaults(obj, ref) -> dict:
    mine, base = flatten(to_dict(obj)), flatten(to_dict(ref))
    return {k: v for k, v in mine.items() if base.get(k, object()) != v}


def transfer_settings(cfg: ExperimentConfig, methods: list[str] | None = None,
                      budgets: list[str] | None = None,
                      seeds: list[int] | None = None) -> CompressTransferConfig:
    """``cfg.transfer`` as the transfer settings the transfer code runs with (validated; one
    ConfigError naming the ``transfer.*`` key otherwise)."""
    t = cfg.transfer
    methods = list(t.methods if methods is None else methods)
    budgets = [str(b) for b in (t.budgets if budgets is None else budgets)]
    seeds = list(t.seeds if seeds is None else seeds)
    if not methods:
        raise ConfigError("transfer.methods is empty; choose from lp, ft, vp-ilm, vp-flm, vp-rlm")
    labels = [parse_method(m, "transfer.methods").label for m in methods]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"transfer.methods lists a method twice: {methods}")
    if not budgets:
        raise ConfigError("transfer.budgets is empty; e.g. [10shot, full]")
    blabels = [parse_budget(b, "transfer.budgets").label for b in budgets]
    if len(set(blabels)) != len(blabels):
        raise ConfigError(f"transfer.budgets lists a budget twice: {budgets}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"transfer.seeds must be distinct integers (at least one), got {seeds}")
    for key in t.options:
        if key not in OPTION_KEYS:
            raise unknown("transfer option (transfer.options)", key, OPTION_KEYS)
    if any(t.target.get(k) for k in ("kshot", "fraction", "val_fraction")):
        raise ConfigError("transfer.target.kshot/fraction/val_fraction are not used: give "
                          "target budgets as transfer.budgets (e.g. [10shot, full])")
    target = build_dataclass(DataConfig, dict(t.target), "transfer.target")
    values = {"name": "compress_transfer", "target": target, "methods": methods,
              "budgets": budgets, "seeds": seeds, "sparsities": [], "prune_methods": [],
              "quant": [], **t.options}
    settings = build_dataclass(CompressTransferConfig, values, "transfer.options")
    try:
        validate_method(settings, cfg)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("method.", "transfer.options.")) from None
    return settings


def transfer_hash(settings: CompressTransferConfig, kind: str) -> str:
    """Hash of what a transfer of ``kind`` (lp, ft, vp) depends on besides its upstream,
    method, budget and seed: the target and the options that method uses."""
    target = _non_defaults(settings.target, DataConfig())
    if settings.target.name not in ("npz", "imagefolder"):  # elsewhere root is only a place
        target = {k: v for k, v in target.items() if k not in ("root", "download")}
    ref = CompressTransferConfig()
    options = {k: v for k, v in _non_defaults(settings, ref).items()
               if k.split(".")[0] in OPTION_KEYS
               and k.split(".")[0] not in set(_KINDS) - {kind}}
    return _digest({"target": target, "options": options})


def upstream_models(src: ExperimentConfig, source_dir: str) -> list[tuple[str, str]]:
    """``(label, directory)`` of every model the source stage deploys."""
    name = src.method.name
    if name in _MANY_MODELS:
        raise ConfigError(f"the transfer and precision sections need one deployed model per "
                          f"source, but method {name}: {_MANY_MODELS[name]}")
    if name == "lottery":
        return [(level_name(k), f"{source_dir}/{level_name(k)}")
                for k in range(src.method.levels + 1)]
    return [("source", source_dir)]


def ptq_name(p: PrecisionConfig) -> str:
    """``ptq-w<bits>`` or ``ptq-w<bits>a<bits>-c<calib_size>``."""
    if p.act_bits:
        return f"ptq-w{p.weight_bits}a{p.act_bits}-c{p.calib_size}"
    return f"ptq-w{p.weight_bits}"


def plan_stages(cfg: ExperimentConfig, path: str, deps: list[str] | None = None
                ) -> list[StagePlan]:
    """The stages of ``cfg`` planned at experiment directory ``path``, in dependency order:
    source, quantize (PTQ), transfers, and the report at ``path``."""
    src = source_config(cfg)
    parent = posixpath.dirname(path)
    store = posixpath.join(parent, STAGES) if parent else STAGES
    source_dir = f"{store}/source-{config_hash(src)}"
    plans = [StagePlan("run", source_dir, to_dict(src), list(deps or []),
                       f"source: {src.method.name} seed {src.seed}")]
    models = [(label, where, source_dir) for label, where in upstream_models(src, source_dir)]
    if cfg.precision.mode == "ptq":
        p = cfg.precision
        quantized = []
        for label, where, _ in models:
            qdir = f"{where}/{ptq_name(p)}"
            qlabel = ptq_name(p) if label == "source" else f"{label}/{ptq_name(p)}"
            plans.append(StagePlan("quantize", qdir,
                                   {"stage": "quantize", "path": qdir, "upstream": where,
                                    "label": qlabel, "precision": to_dict(p), "seed": cfg.seed},
                                   [source_dir], f"PTQ of {label} to {p.weight_bits} bits"))
            quantized.append((qlabel, qdir, qdir))
        models += quantized
    transfers = []
    if cfg.transfer.enabled:
        t = cfg.transfer
        settings = transfer_settings(cfg)
        for label, where, after in models:
            for method in t.methods:
                spec = parse_method(method, "transfer.methods")
                digest = transfer_hash(settings, spec.kind)
                for budget in t.budgets:
                    b = parse_budget(str(budget), "transfer.budgets")
                    for seed in t.seeds:
                        tdir = f"{where}/transfer/{spec.label}-{b.label}-s{seed}-{digest}"
                        conf = {"stage": "transfer", "path": tdir, "upstream": where,
                                "label": label, "target": dict(t.target),
                                "options": dict(t.options), "method": spec.label,
                                "budget": str(budget), "seed": seed}
                        plans.append(StagePlan("transfer", tdir, conf, [after],
                                               f"{spec.label} {b.label} seed {seed} of {label}"))
                        transfers.append({**conf, "budget": b.label})
    upstreams = [{"label": label, "path": where} for label, where, _ in models]
    report = {"stage": "report", "path": path, "experiment": to_dict(cfg),
              "source": source_dir, "upstreams": upstreams,
              "transfers": [{k: c[k] for k in ("path", "label", "method", "budget", "seed")}
                            for c in transfers]}
    plans.append(StagePlan("report", path, report, [p.path for p in plans],
                           f"report of {cfg.name}"))
    return plans
