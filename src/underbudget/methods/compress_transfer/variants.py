"""Compressed variants of the source model: pruned (OMP, IMP, gradual) and quantized (PTQ, QAT).

Each variant is the child run ``variants/<name>`` whose summary records the MEASURED density
(nonzero prunable weights of the stored model) or the bit widths with the measured number of
per-channel weight levels, and the variant's accuracy and calibration on the source test set.
Weights (and masks) live in the artifacts of the run named by ``weights_run``: ``source`` for
the dense variant, ``imp/level-KK`` for IMP, the variant's own run otherwise.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ...data import calibration_indices
from ...models import load_weights, save_weights
from ...quant import (
    QuantRecord,
    convert,
    input_quantized_layers,
    insert_activation_quantizers,
    prepare_qat,
    quantize_model,
)
from ...quant.qat import QAT_LAYERS
from ...runs import Run
from ...sparsity import (
    GradualMagnitude,
    MaskCallback,
    MaskSet,
    imp_step,
    prunable_parameters,
    prune,
)
from ...train import Trainer
from ...utils.atomic import atomic_path
from ...utils.seeding import derive_seed, seed_everything
from ..common import PreparedData, eval_loader
from .config import CompressTransferConfig, imp_level, parse_quant
from .context import Context
from .source import SOURCE, fresh_model, rewind_weights, source_calibration

STEPS_FILE = "weight_steps.safetensors"  # QAT variants: the learned step of every layer


@dataclass(frozen=True)
class VariantSpec:
    """One compression level of the source model."""

    name: str
    family: str  # dense | omp | imp | gradual | ptq | qat
    sparsity: float | None = None
    bits: int | None = None
    act_bits: int | None = None

    @property
    def kind(self) -> str:
        """``dense``, ``prune`` or ``quant``."""
        if self.family == "dense":
            return "dense"
        return "quant" if self.family in ("ptq", "qat") else "prune"


def variant_specs(m: CompressTransferConfig) -> list[VariantSpec]:
    """The dense source, each pruning method at each sparsity, each quantized variant (in the
    order of ``method.quant``)."""
    specs = [VariantSpec("dense", "dense")]
    for family in m.prune_methods:
        for s in sorted(set(m.sparsities)):
            specs.append(VariantSpec(f"{family}-{s:g}", family, sparsity=float(s)))
    for q in (parse_quant(text) for text in m.quant):
        specs.append(VariantSpec(q.name, q.mode, bits=q.bits, act_bits=q.act_bits))
    return specs


@dataclass
class LoadedVariant:
    """A variant ready for transfer: the model on the device, its masks, its quant layout."""

    spec: VariantSpec
    model: nn.Module
    masks: MaskSet | None
    summary: dict
    weight_steps: dict[str, torch.Tensor] | None = None  # learned QAT steps per layer


# --------------------------------------------------------------------------- measurement


@torch.no_grad()
def weight_density(model: nn.Module) -> dict:
    """Nonzero share of the prunable weights (Conv/Linear), measured on the weights."""
    params = prunable_parameters(model)
    numel = sum(p.numel() for p in params.values())
    nnz = sum(int(p.count_nonzero()) for p in params.values())
    total = sum(p.numel() for p in model.parameters())
    zeros = numel - nnz
    return {
        "density": nnz / numel,
        "sparsity": 1.0 - nnz / numel,
        "nonzeros": nnz,
        "prunable": numel,
        "density_all": (total - zeros) / total,
    }


@torch.no_grad()
def weight_levels(model: nn.Module) -> int:
    """Most distinct values in any output channel of any Conv/Linear weight."""
    most = 0
    for p in prunable_parameters(model).values():
        rows = p.detach().reshape(p.shape[0], -1)
        for row in rows:
            most = max(most, int(torch.unique(row).numel()))
    return most


def _measure(ctx: Context, spec: VariantSpec, model: nn.Module) -> dict:
    out = {
        "variant": spec.name,
        "family": spec.family,
        "kind": spec.kind,
        "target_sparsity": spec.sparsity,
        "bits": spec.bits or 32,
        "act_bits": spec.act_bits,
    }
    out.update(weight_density(model))
    if spec.kind == "quant":
        levels = weight_levels(model)
        out["weight_levels_max"] = levels
        out["bits_measured"] = math.ceil(math.log2(levels + 1))
    out.update(source_calibration(ctx, model))
    return out


# --------------------------------------------------------------------------- building


def _source_loader(ctx: Context, key: str):
    return ctx.source_train_loader(f"compress/{key}")


def _val(ctx: Context):
    return ctx.source_eval_loader("val") if ctx.source.val is not None else None


def _fit(
    ctx: Context, model: nn.Module, optim, run: Run, epochs: int, key: str, callbacks=(),
    loader=None,
) -> Trainer:
    trainer = Trainer(model, optim, ctx.train_config(), run=run, callbacks=list(callbacks))
    trainer.fit(loader or _source_loader(ctx, key), epochs, val_loader=_val(ctx))
    trainer.finish()
    return trainer


def calibration_batches(ctx: Context) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A seeded class-balanced subset of source training images, un-augmented, as batches."""
    return calibration_subset(ctx.cfg, ctx.source, ctx.method.calib_size, ctx.device)


def calibration_subset(
    cfg, data: PreparedData, size: int, device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """About ``size`` training images of ``data`` (class-balanced, seeded by ``cfg.seed``),
    un-augmented, as evaluation batches: what activation ranges are calibrated on."""
    idx = calibration_indices(data.train.labels, size, cfg.seed)
    return list(eval_loader(cfg, data.train.subset(idx), data.splits, device))


def post_training_quantize(
    model: nn.Module, bits: int, act_bits: int | None, calib
) -> tuple[nn.Module, QuantRecord]:
    """PTQ of a copy of ``model``: per-channel ``bits``-bit weights and, with ``act_bits``,
    inputs of every Conv/Linear layer calibrated on the batches ``calib`` (a callable giving
    them, called only when needed)."""
    batches = calib() if act_bits else None
    return quantize_model(
        model, bits, activations=bool(act_bits), calib_data=batches, act_bits=act_bits
    )


def _one_shot(ctx: Context, spec: VariantSpec, source: nn.Module, run: Run) -> nn.Module:
    model = copy.deepcopy(source)
    m = ctx.method
    masks = prune(model, 1.0 - spec.sparsity, "magnitude", scope=m.prune_scope)
    if m.recovery.epochs > 0:
        model = _fit(
            ctx, model, m.recovery.optim, run, m.recovery.epochs, spec.name, [MaskCallback(masks)]
        ).model
    save_weights(model, run.artifact("model.safetensors"))
    masks.save(run.artifact("masks.safetensors"))
    return model


def _gradual(ctx: Context, spec: VariantSpec, source: nn.Module, run: Run) -> nn.Module:
    g = ctx.method.gradual
    model = copy.deepcopy(source)
    steps = g.epochs * len(_source_loader(ctx, spec.name))
    dt = max(1, int(g.end * steps / g.events))
    callback = GradualMagnitude(
        1.0 - spec.sparsity, t0=0, n=g.events, dt=dt, scope=ctx.method.prune_scope
    )
    model = _fit(ctx, model, g.optim, run, g.epochs, spec.name, [callback]).model
    save_weights(model, run.artifact("model.safetensors"))
    callback.masks.save(run.artifact("masks.safetensors"))
    return model


def imp_level_run(ctx: Context, level: int) -> Run:
    """The child run of IMP level ``level`` (1-based)."""
    return ctx.run.child(f"imp/level-{level:02d}")


def _imp(ctx: Context, source: nn.Module, level: int) -> None:
    """Train IMP levels 1..``level`` (each skipped when finished): prune the previous level's
    trained weights by global magnitude to (1 - rate)^k, rewind, retrain with masks."""
    m = ctx.method
    for k in range(1, level + 1):
        run = imp_level_run(ctx, k)
        if run.is_finished():
            continue
        ctx.start_child(run, "imp", level=k)
        # IMP levels follow the lottery method's seeds and data order
        seed_everything(derive_seed(ctx.cfg.seed, "lottery-level", k))
        t0 = time.perf_counter()
        model = fresh_model(ctx).to(ctx.device)
        masks = None
        if k == 1:
            model.load_state_dict(source.state_dict())
        else:
            prev = imp_level_run(ctx, k - 1)
            load_weights(model, prev.artifact("model.safetensors"))
            masks = MaskSet.load(prev.artifact("masks.safetensors"), model)
        density = (1.0 - m.imp_rate) ** k
        masks = imp_step(model, density, rewind_weights(ctx), scope=m.prune_scope, masks=masks,
                         seed=derive_seed(ctx.cfg.seed, "lottery-prune", k))
        trainer = _fit(
            ctx, model, ctx.cfg.optim, run, ctx.cfg.train.epochs, f"imp-{k}", [MaskCallback(masks)],
            loader=ctx.source_train_loader("train"),
        )
        save_weights(trainer.model, run.artifact("model.safetensors"))
        masks.save(run.artifact("masks.safetensors"))
        summary = {
            "part": "imp",
            "level": k,
            "target_density": density,
            "mask_density": masks.density(),
            **weight_density(trainer.model),
            **source_calibration(ctx, trainer.model),
            "time": time.perf_counter() - t0,
        }
        run.write_summary(summary)


def _ptq(ctx: Context, spec: VariantSpec, source: nn.Module, run: Run) -> nn.Module:
    model, record = post_training_quantize(
        source, spec.bits, spec.act_bits, lambda: calibration_batches(ctx)
    )
    run.write_json("quant_record.json", record.to_dict())
    save_weights(model, run.artifact("model.safetensors"))
    return model


def _qat(ctx: Context, spec: VariantSpec, source: nn.Module, run: Run) -> nn.Module:
    q = ctx.method.qat
    model = prepare_qat(
        copy.deepcopy(source),
        spec.bits,
        activations=bool(spec.act_bits),
        act_bits=spec.act_bits,
        per_channel=True,
    )
    model = _fit(ctx, model, q.optim, run, q.epochs, spec.name).model
    steps = {
        name: layer.weight_quantizer.effective_step().detach().cpu().contiguous()
        for name, layer in model.named_modules()
        if isinstance(layer, QAT_LAYERS)
    }
    with atomic_path(run.artifact(STEPS_FILE)) as tmp:
        save_file(steps, str(tmp))
    model = convert(model)
    save_weights(model, run.artifact("model.safetensors"))
    return model


def build_variant(ctx: Context, spec: VariantSpec, source: nn.Module) -> dict:
    """Create (or find, when finished) one variant; return its summary."""
    run = ctx.run.child(f"variants/{spec.name}")
    if run.is_finished():
        return run.read_summary()
    if spec.family == "imp":
        _imp(ctx, source, imp_level(spec.sparsity, ctx.method.imp_rate))
    ctx.start_child(run, "variant", variant=spec.name)
    t0 = time.perf_counter()
    weights_run = f"variants/{spec.name}"
    if spec.family == "dense":
        model, weights_run = source, SOURCE
    elif spec.family == "omp":
        model = _one_shot(ctx, spec, source, run)
    elif spec.family == "gradual":
        model = _gradual(ctx, spec, source, run)
    elif spec.family == "imp":
        level = imp_level(spec.sparsity, ctx.method.imp_rate)
        level_run = imp_level_run(ctx, level)
        weights_run = level_run.path.relative_to(ctx.run.path).as_posix()
        model = load_weights(fresh_model(ctx), level_run.artifact("model.safetensors"))
        model.to(ctx.device)
        t0 -= sum(imp_level_run(ctx, k).read_summary()["time"] for k in range(1, level + 1))
    elif spec.family == "ptq":
        model = _ptq(ctx, spec, source, run)
    else:
        model = _qat(ctx, spec, source, run)
    summary = _measure(ctx, spec, model)
    summary["weights_run"] = weights_run
    summary["act_layers"] = input_quantized_layers(model)
    summary["time"] = time.perf_counter() - t0
    run.write_summary(summary)
    return summary


def load_variant(ctx: Context, spec: VariantSpec, summary: dict) -> LoadedVariant:
    """The variant's model (and masks) from its artifacts, on the device, in eval mode."""
    model = fresh_model(ctx)
    if summary.get("act_layers"):
        insert_activation_quantizers(model, spec.act_bits or 8, layers=summary["act_layers"])
    where = ctx.run.child(summary["weights_run"])
    load_weights(model, where.artifact("model.safetensors"))
    model.to(ctx.device).eval()
    masks = None
    if spec.kind == "prune":
        masks = MaskSet.load(where.artifact("masks.safetensors"), model)
    steps = None
    if (where.path / "artifacts" / STEPS_FILE).exists():
        steps = load_file(str(where.artifact(STEPS_FILE)))
    return LoadedVariant(spec, model, masks, summary, steps)
