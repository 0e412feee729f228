"""Config of ``compress_transfer``: what to compress, how to transfer, which budgets and seeds.

The experiment's top-level ``data``/``model``/``optim``/``train`` sections describe the SOURCE
task and its training; ``method.target`` is the target dataset. Each training stage (recovery,
gradual pruning, QAT, and the three transfer methods) has its own small section with epochs
and an optimizer whose defaults suit that stage, so ``method.vp.optim.lr=0.02`` keeps Adam.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ...config import (
    LR_SCHEDULES,
    OPTIMIZERS,
    DataConfig,
    ExperimentConfig,
    MethodConfig,
    OptimConfig,
)
from ...errors import ConfigError, unknown
from ...sparsity import SCOPES

PRUNE_METHODS = ("omp", "imp", "gradual")
MAPPINGS = ("rlm", "flm", "ilm")
PROMPTS = ("expansive", "pad", "shrink-pad", "patch")
ASSIGNMENTS = ("greedy", "hungarian")
BINNINGS = ("default", "legacy")


# --------------------------------------------------------------------------- optimizers


@dataclass
class SourceTuneOptim(OptimConfig):
    """Short fine-tunes on the source task (recovery, gradual pruning, QAT)."""

    lr: float = 0.01


@dataclass
class LPOptim(OptimConfig):
    """Linear probe: Adam on the new head."""

    name: str = "adam"
    lr: float = 0.1
    weight_decay: float = 0.0


@dataclass
class FTOptim(OptimConfig):
    """Full fine-tune: SGD with momentum, cosine schedule."""

    lr: float = 0.01


@dataclass
class VPOptim(OptimConfig):
    """ILM-VP's defaults: Adam lr 0.01, LR x0.1 at 50 % and 72 % of the epochs."""

    name: str = "adam"
    lr: float = 0.01
    weight_decay: float = 0.0
    schedule: str = "multistep"
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.72])


# --------------------------------------------------------------------------- stages


@dataclass
class RecoveryStage:
    """Optional fine-tune on the source task right after one-shot pruning (0 epochs: off)."""

    epochs: int = 0
    optim: SourceTuneOptim = field(default_factory=SourceTuneOptim)


@dataclass
class GradualStage:
    """Gradual magnitude pruning of the trained source: cubic schedule over ``end`` of the
    ``epochs`` (in ``events`` pruning steps), then training at the final density."""

    epochs: int = 2
    events: int = 10
    end: float = 0.75
    optim: SourceTuneOptim = field(default_factory=SourceTuneOptim)


@dataclass
class QATStage:
    """Quantization-aware training (LSQ) of the source, for the ``qat-*`` variants."""

    epochs: int = 1
    optim: SourceTuneOptim = field(default_factory=SourceTuneOptim)


@dataclass
class LPStage:
    """Linear probing: frozen backbone in eval mode, new linear head."""

    epochs: int = 20
    min_steps: int = 0  # small budgets train for at least this many optimizer steps
    batch_size: int | None = None  # None: method.target.batch_size
    optim: LPOptim = field(default_factory=LPOptim)


@dataclass
class FTStage:
    """Full fine-tuning: new head, every weight trains, pruning masks kept."""

    epochs: int = 10
    min_steps: int = 0
    batch_size: int | None = None
    optim: FTOptim = field(default_factory=FTOptim)


@dataclass
class VPStage:
    """Visual prompting with label mapping; the backbone and its head stay frozen."""

    epochs: int = 20
    min_steps: int = 0
    batch_size: int | None = None
    prompt: str = "expansive"  # default prompt of 'vp-<mapping>' methods
    frame: int | None = None  # side of the prompted image fed to the source (None: its input)
    r: int | None = None  # expansive: side of the resized image (None: round(5/7 of the frame))
    pad: int | None = None  # pad / shrink-pad border width (None: (frame - r) // 2)
    patch: int | None = None  # patch prompt side (None: frame // 4)
    assignment: str = "greedy"  # FLM/ILM assignment: greedy | hungarian
    optim: VPOptim = field(default_factory=VPOptim)


def _target_default() -> DataConfig:
    return DataConfig(name="digits", batch_size=32, eval_batch_size=1000)


@dataclass
class CompressTransferConfig(MethodConfig):
    """Compress a source model at several levels, transfer each variant, measure calibration."""

    name: str = "compress_transfer"
    target: DataConfig = field(default_factory=_target_default)
    # -- compression
    sparsities: list[float] = field(default_factory=lambda: [0.5, 0.8, 0.9, 0.95])
    prune_methods: list[str] = field(default_factory=lambda: ["omp"])
    prune_scope: str = "global"
    imp_rate: float = 0.2  # IMP removes this share of what remains per level: density 0.8^k
    imp_rewind_epoch: int = 1  # IMP rewinds to the source weights after this epoch (0: init)
    recovery: RecoveryStage = field(default_factory=RecoveryStage)
    gradual: GradualStage = field(default_factory=GradualStage)
    # quantized variants '<ptq|qat>-w<bits>[a<bits>]': ptq-w4 (weights only, post-training),
    # ptq-w8a8 (plus calibrated activations), qat-w4a4 (quantization-aware training)
    quant: list[str] = field(default_factory=lambda: ["ptq-w8", "ptq-w4"])
    calib_size: int = 512  # source training images that calibrate activation ranges
    qat: QATStage = field(default_factory=QATStage)
    # -- transfer
    methods: list[str] = field(default_factory=lambda: ["lp", "ft", "vp-ilm"])
    budgets: list[str] = field(default_factory=lambda: ["10shot", "full"])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    val_cap: int = 50  # validation images per class, at most
    full_val_fraction: float = 0.1  # share of each class held out for validation at 'full'
    select: str = "best"  # best (validation accuracy) | last
    lp: LPStage = field(default_factory=LPStage)
    ft: FTStage = field(default_factory=FTStage)
    vp: VPStage = field(default_factory=VPStage)
    n_bins: int = 15
    ece_binning: str = "default"  # default | legacy (Guo et al. 2017's reference code)
    transfer_checkpoints: bool = False  # checkpoint transfer runs every epoch (else restart)
    save_weights: bool = False  # keep every transferred model's weights as an artifact

    def validate(self, cfg: ExperimentConfig) -> None:
        """Reject impossible settings with one message naming the fix."""
        validate_method(self, cfg)


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Budget:
    """A target data budget: ``kshot`` (k per class), ``fraction`` or ``full``."""

    kind: str
    value: float
    label: str


_SHOT = re.compile(r"^(\d+)[-_ ]?shots?$")


def parse_budget(text: str, where: str = "method.budgets") -> Budget:
    """``"10shot"`` / ``"10-shot"`` → 10 per class; ``"full"``; ``"0.25"`` → a fraction.

    ``where``: the config key named in errors (``transfer.budgets`` for the transfer section).
    """
    raw = str(text).strip().lower()
    if raw in ("full", "all", "1", "1.0"):
        return Budget("full", 1.0, "full")
    match = _SHOT.match(raw)
    if match:
        k = int(match.group(1))
        if k < 1:
            raise ConfigError(f"{where}: {text!r} asks for 0 images per class")
        return Budget("kshot", float(k), f"{k}shot")
    try:
        frac = float(raw.rstrip("%")) / (100.0 if raw.endswith("%") else 1.0)
    except ValueError:
        raise ConfigError(
            f"{where}: cannot read {text!r}; use '<k>shot' (e.g. 10shot), a fraction "
            "such as 0.1 or 10%, or 'full'"
        ) from None
    if not 0.0 < frac < 1.0:
        raise ConfigError(f"{where}: fraction {text!r} must be in (0, 1); or use 'full'")
    return Budget("fraction", frac, f"frac{frac:g}")


@dataclass(frozen=True)
class TransferSpec:
    """One transfer method: ``lp``, ``ft`` or ``vp`` with a mapping and a prompt."""

    kind: str
    mapping: str | None = None
    prompt: str | None = None

    @property
    def label(self) -> str:
        if self.kind != "vp":
            return self.kind
        return f"vp-{self.mapping}" + (f"-{self.prompt}" if self.prompt else "")


def parse_method(text: str, where: str = "method.methods") -> TransferSpec:
    """``lp``, ``ft``, ``vp-<rlm|flm|ilm>`` or ``vp-<mapping>-<expansive|pad|shrink-pad|patch>``
    (``where``: the config key named in errors)."""
    raw = str(text).strip().lower()
    if raw in ("lp", "ft"):
        return TransferSpec(raw)
    parts = raw.split("-", 2)
    if parts[0] != "vp" or len(parts) not in (2, 3):
        raise unknown(
            f"transfer method ({where})",
            text,
            ["lp", "ft", "vp-rlm", "vp-flm", "vp-ilm", "vp-ilm-pad", "vp-ilm-patch"],
        )
    if parts[1] not in MAPPINGS:
        raise unknown(f"label mapping in {text!r}", parts[1], MAPPINGS)
    prompt = parts[2] if len(parts) == 3 else None
    if prompt is not None and prompt not in PROMPTS:
        raise unknown(f"visual prompt in {text!r}", prompt, PROMPTS)
    return TransferSpec("vp", parts[1], prompt)


@dataclass(frozen=True)
class QuantSpec:
    """One quantized variant: ``ptq`` or ``qat``, weight bits, activation bits (None: float)."""

    mode: str
    bits: int
    act_bits: int | None

    @property
    def name(self) -> str:
        return f"{self.mode}-w{self.bits}" + (f"a{self.act_bits}" if self.act_bits else "")


_QUANT = re.compile(r"^(ptq|qat)-w(\d+)(?:a(\d+))?$")


def parse_quant(text: str) -> QuantSpec:
    """``ptq-w4`` (weights only), ``ptq-w8a8``, ``qat-w4a4``: mode, weight and activation bits."""
    raw = str(text).strip().lower()
    match = _QUANT.match(raw)
    if not match:
        raise ConfigError(
            f"method.quant: cannot read {text!r}; name a quantized variant "
            "'<ptq|qat>-w<bits>[a<bits>]', e.g. ptq-w4 (weights only), ptq-w8a8 or qat-w4a4"
        )
    mode, bits, act = match.group(1), int(match.group(2)), match.group(3)
    act_bits = int(act) if act is not None else None
    for value in (bits, act_bits):
        if value is not None and not 2 <= value <= 16:
            raise ConfigError(
                f"method.quant: {text!r} asks for {value} bits; bit widths go from 2 to 16"
            )
    return QuantSpec(mode, bits, act_bits)


def imp_level(sparsity: float, rate: float) -> int:
    """The IMP level whose density (1 - rate)^k is nearest (in log) to ``1 - sparsity``."""
    return max(1, round(math.log(1.0 - sparsity) / math.log(1.0 - rate)))


# --------------------------------------------------------------------------- validation


def _check_optim(o: OptimConfig, where: str) -> None:
    if o.name not in OPTIMIZERS:
        raise unknown(f"optimizer ({where}.name)", o.name, OPTIMIZERS)
    if o.schedule not in LR_SCHEDULES:
        raise unknown(f"LR schedule ({where}.schedule)", o.schedule, LR_SCHEDULES)
    if o.lr <= 0:
        raise ConfigError(f"{where}.lr must be positive, got {o.lr}")


def _check_epochs(value: int, where: str, minimum: int = 0) -> None:
    if value < minimum:
        raise ConfigError(f"{where} must be at least {minimum}, got {value}")


def validate_method(m: CompressTransferConfig, cfg: ExperimentConfig) -> None:
    """Cross-field checks of the method section (data shapes are checked at run time)."""
    t = m.target
    if t.kshot is not None or t.fraction is not None or t.val_fraction:
        raise ConfigError(
            "method.target.kshot/fraction/val_fraction are not used: give target budgets as "
            "method.budgets (e.g. [10shot, full]); the validation split is method.val_cap / "
            "method.full_val_fraction"
        )
    if t.batch_size < 1 or t.eval_batch_size < 1:
        raise ConfigError("method.target.batch_size and eval_batch_size must be at least 1")
    for s in m.sparsities:
        if not 0.0 < s < 1.0:
            raise ConfigError(
                f"method.sparsities are fractions of weights REMOVED in (0, 1), got {s}; "
                "the dense source is always included"
            )
    for name in m.prune_methods:
        if name not in PRUNE_METHODS:
            raise unknown("pruning method (method.prune_methods)", name, PRUNE_METHODS)
    if m.prune_scope not in SCOPES:
        raise unknown("pruning scope (method.prune_scope)", m.prune_scope, SCOPES)
    if not 0.0 < m.imp_rate < 1.0:
        raise ConfigError(f"method.imp_rate must be in (0, 1), got {m.imp_rate}")
    _check_epochs(m.imp_rewind_epoch, "method.imp_rewind_epoch")
    trained = not cfg.model.weights
    if "imp" in m.prune_methods and trained and m.imp_rewind_epoch > cfg.train.epochs:
        raise ConfigError(
            f"method.imp_rewind_epoch={m.imp_rewind_epoch} exceeds the source training's "
            f"train.epochs={cfg.train.epochs}; choose a rewind epoch within source training"
        )
    quant_names = [parse_quant(q).name for q in m.quant]
    if len(set(quant_names)) != len(quant_names):
        raise ConfigError(f"method.quant lists a variant twice: {m.quant}")
    _check_epochs(m.calib_size, "method.calib_size", 1)
    _check_epochs(m.recovery.epochs, "method.recovery.epochs")
    _check_epochs(m.gradual.epochs, "method.gradual.epochs", 1)
    _check_epochs(m.gradual.events, "method.gradual.events", 1)
    if not 0.0 < m.gradual.end <= 1.0:
        raise ConfigError(f"method.gradual.end must be in (0, 1], got {m.gradual.end}")
    _check_epochs(m.qat.epochs, "method.qat.epochs", 1)
    if not m.methods:
        raise ConfigError("method.methods is empty; choose from lp, ft, vp-ilm, vp-flm, vp-rlm")
    labels = [parse_method(x).label for x in m.methods]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"method.methods lists a method twice: {m.methods}")
    if not m.budgets:
        raise ConfigError("method.budgets is empty; e.g. [10shot, full]")
    budget_labels = [parse_budget(b).label for b in m.budgets]
    if len(set(budget_labels)) != len(budget_labels):
        raise ConfigError(f"method.budgets lists a budget twice: {m.budgets}")
    if not m.seeds or len(set(m.seeds)) != len(m.seeds):
        raise ConfigError(f"method.seeds must be distinct integers (at least one), got {m.seeds}")
    _check_epochs(m.val_cap, "method.val_cap", 1)
    if not 0.0 < m.full_val_fraction < 1.0:
        raise ConfigError(f"method.full_val_fraction must be in (0, 1), got {m.full_val_fraction}")
    if m.select not in ("best", "last"):
        raise unknown("selection (method.select)", m.select, ("best", "last"))
    for key, stage in (("lp", m.lp), ("ft", m.ft), ("vp", m.vp)):
        _check_epochs(stage.epochs, f"method.{key}.epochs", 1)
        _check_epochs(stage.min_steps, f"method.{key}.min_steps")
        if stage.batch_size is not None and stage.batch_size < 1:
            raise ConfigError(f"method.{key}.batch_size must be at least 1")
        _check_optim(stage.optim, f"method.{key}.optim")
    for key, stage in (("recovery", m.recovery), ("gradual", m.gradual), ("qat", m.qat)):
        _check_optim(stage.optim, f"method.{key}.optim")
    if m.vp.prompt not in PROMPTS:
        raise unknown("visual prompt (method.vp.prompt)", m.vp.prompt, PROMPTS)
    if m.vp.assignment not in ASSIGNMENTS:
        raise unknown("label assignment (method.vp.assignment)", m.vp.assignment, ASSIGNMENTS)
    for key in ("frame", "r", "pad", "patch"):
        value = getattr(m.vp, key)
        if value is not None and value < 1:
            raise ConfigError(f"method.vp.{key} must be a positive integer, got {value}")
    if m.n_bins < 1:
        raise ConfigError(f"method.n_bins must be at least 1, got {m.n_bins}")
    if m.vp.frame and m.vp.r and m.vp.r > m.vp.frame:
        raise ConfigError(
            f"method.vp.r={m.vp.r} exceeds method.vp.frame={m.vp.frame}: the resized image must "
            "fit in the frame"
        )
    if m.ece_binning not in BINNINGS:
        raise unknown("ECE binning (method.ece_binning)", m.ece_binning, BINNINGS)
