"""One transfer run: a variant x a transfer method x a data budget x a seed.

- ``lp``: :class:`~underbudget.transfer.LinearProbe` (frozen backbone in eval mode, new head).
  The run checks that the backbone (weights AND buffers) is bit-identical to the variant's.
- ``ft``: :class:`~underbudget.transfer.FineTune` (new head, every weight trains). A pruned
  variant keeps its masks; a quantized one keeps its grid: its layers are wrapped by the LSQ
  layers of :mod:`underbudget.quant.qat` with every step pinned and frozen (weights: the
  learned steps of a QAT variant, else max|w_c| / Qp per output channel; inputs: the
  variant's calibrated ranges), so weights train through the fixed grid with the
  straight-through estimator. The new head is dense and float in both cases (it is not part
  of the compressed source).
- ``vp``: :class:`~underbudget.transfer.VisualPrompt` with a prompt and a label mapping; the
  backbone and its head are frozen in eval mode; ILM remaps at the start of every epoch,
  counting on the training images WITHOUT augmentation. The prompted image is
  ``method.vp.frame`` pixels wide (default: the source input), which a source model with a
  global pool accepts at any size. With activation quantization the prompt's gradient passes
  the calibrated quantizers by the straight-through estimator.

Loaders feed LP/FT target images normalized with the SOURCE statistics (what the backbone
was trained on); VP gets images in [0, 1] and normalizes after prompting, also with the
source statistics. The order of training batches depends only on the seed, so variants are
compared on the same batches. Test metrics come from the model selected on validation
(``method.select``); temperature scaling is fitted on the validation split only.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch
from safetensors.torch import save_file
from torch import nn

from ...metrics import calibration_before_after
from ...models import save_weights
from ...quant import ActivationQuantizer, activation_quantizers, prepare_qat
from ...quant.grid import QUANT_LAYERS, qmax
from ...quant.qat import QAT_LAYERS
from ...runs import Run
from ...sparsity import MaskCallback, MaskSet
from ...train import Trainer
from ...train.evaluate import evaluate
from ...transfer import (
    FineTune,
    LabelMapper,
    LabelMappingCallback,
    LinearProbe,
    VisualPrompt,
)
from ...utils.atomic import atomic_path
from ...utils.seeding import derive_seed
from ..common import eval_loader, train_loader
from .budget import budget_split
from .config import Budget, TransferSpec
from .context import Context
from .features import cacheable, feature_loaders
from .prompting import make_prompt
from .variants import LoadedVariant, weight_density

CAL_KEYS = (
    "ece",
    "mce",
    "adaptive_ece",
    "nll",
    "brier",
    "mean_conf",
    "mean_conf_correct",
    "mean_conf_incorrect",
)


class TimedLabelMapping(LabelMappingCallback):
    """LabelMappingCallback that also adds up the seconds spent remapping."""

    def __init__(self, mapper: LabelMapper):
        super().__init__(mapper)
        self.seconds = 0.0

    def before_epoch(self, trainer) -> None:
        t0 = time.perf_counter()
        super().before_epoch(trainer)
        self.seconds += time.perf_counter() - t0

    def state_dict(self) -> dict:
        return {**super().state_dict(), "seconds": self.seconds}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state:  # a restored best epoch must not forget time already spent
            self.seconds = max(self.seconds, float(state.get("seconds", 0.0)))


@torch.no_grad()
def _same_state(module: nn.Module, reference: dict[str, torch.Tensor]) -> bool:
    """Every tensor of ``module``'s state equals the reference tensor of the same name."""
    state = module.state_dict()
    return all(
        k in reference and torch.equal(v, reference[k].to(v.device)) for k, v in state.items()
    )


def quantized_inputs(net: nn.Module) -> int:
    """Layers of ``net`` whose input is fake-quantized (calibrated or LSQ quantizers)."""
    learned = sum(
        1 for m in net.modules() if isinstance(m, QAT_LAYERS) and m.input_quantizer is not None
    )
    return len(activation_quantizers(net)) + learned


def _reference(variant: LoadedVariant) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in variant.model.state_dict().items()}


# --------------------------------------------------------------------------- builders


def _lp(ctx: Context, variant: LoadedVariant, spec: TransferSpec, seed: int):
    reference = _reference(variant)
    net = LinearProbe(variant.model, ctx.target.num_classes, seed=derive_seed(seed, "head"))

    def after(net: LinearProbe) -> dict:
        return {
            "backbone_unchanged": _same_state(net.backbone, reference),
            "backbone_eval_mode": not net.backbone.training,
            "quantized_inputs": quantized_inputs(net.backbone),
        }

    return net, [], after


@torch.no_grad()
def fix_grid(
    net: nn.Module,
    bits: int,
    act: dict[str, ActivationQuantizer],
    weight_steps: dict[str, torch.Tensor] | None = None,
) -> None:
    """Pin every LSQ step of ``net`` to the variant's grid and stop it from training.

    Weights: the variant's own steps when given (QAT variants), else max|w_c| / Qp per output
    channel (the PTQ grid of the current weights). Inputs: the step and sign of the variant's
    calibrated quantizer of the same layer. The forward pass then equals the variant's, and
    gradients reach the weights (and earlier layers) through the straight-through estimator.
    """
    for name, layer in net.named_modules():
        if not isinstance(layer, QAT_LAYERS):
            continue
        wq = layer.weight_quantizer
        if weight_steps is not None and name in weight_steps:
            wq.step.copy_(weight_steps[name].reshape(wq.step.shape))
        else:
            w = layer.weight.detach()
            step = (w.abs().reshape(w.shape[0], -1).amax(dim=1) / qmax(bits)).reshape(wq.step.shape)
            wq.step.copy_(torch.where(step > 0, step, wq.step))
        wq.step.requires_grad_(False)
        iq = layer.input_quantizer
        if iq is not None:
            old = act[name]
            iq.step.fill_(float(old.scale))
            iq.signed.fill_(bool(old.signed))
            iq.initialized.fill_(True)
            iq._sync_flags()
            iq.step.requires_grad_(False)


def _ft(ctx: Context, variant: LoadedVariant, spec: TransferSpec, seed: int):
    ft = FineTune(variant.model, ctx.target.num_classes, seed=derive_seed(seed, "head"))
    net, head = ft.backbone, ft.head_name
    callbacks: list = []
    masks = None
    if variant.masks is not None:
        keep = {n: m.clone() for n, m in variant.masks.items() if n.rpartition(".")[0] != head}
        masks = MaskSet(keep)
        callbacks.append(MaskCallback(masks))
    vspec = variant.spec
    if vspec.kind == "quant":  # train through the variant's fixed grid; the new head is float
        act = {n.removesuffix(".input_quantizer"): q for n, q in activation_quantizers(net).items()}
        layers = [n for n, mod in net.named_modules() if type(mod) in QUANT_LAYERS and n != head]
        net = prepare_qat(
            net,
            vspec.bits,
            activations=bool(vspec.act_bits),
            act_bits=vspec.act_bits,
            per_channel=True,
            layers=layers,
        )
        fix_grid(net, vspec.bits, act, variant.weight_steps)

    def after(net: nn.Module) -> dict:
        out: dict = {}
        if masks is not None:
            params = dict(net.named_parameters())
            out["pruned_nonzero"] = sum(
                int(params[n].detach()[~m.to(params[n].device)].count_nonzero())
                for n, m in masks.items()
            )
            out["backbone_mask_density"] = masks.density()
        out["transferred_density"] = weight_density(net)["density"]
        out["quantized_inputs"] = quantized_inputs(net)
        return out

    return net, callbacks, after


def _vp(ctx: Context, variant: LoadedVariant, spec: TransferSpec, seed: int):
    m = ctx.method
    c, h, _ = ctx.input_shape
    reference = _reference(variant)
    prompt = make_prompt(spec.prompt or m.vp.prompt, h, c, m.vp)
    mapper = LabelMapper(
        ctx.source.num_classes,
        ctx.target.num_classes,
        mode=spec.mapping,
        assignment=m.vp.assignment,
        seed=derive_seed(seed, "label-map"),
    )
    net = VisualPrompt(variant.model, prompt, mapper, ctx.source.splits.mean, ctx.source.splits.std)
    callback = TimedLabelMapping(mapper)

    def after(net: VisualPrompt) -> dict:
        diag = mapper.diagnostics()
        source_names = ctx.source.splits.classes
        target_names = ctx.target.classes
        return {
            "backbone_unchanged": _same_state(net.backbone, reference),
            "backbone_eval_mode": not net.backbone.training,
            "prompt": type(prompt).__name__,
            "prompt_parameters": prompt.num_parameters,
            "prompt_frame": prompt.input_size,
            "prompt_r": getattr(prompt, "r", None),
            "quantized_inputs": quantized_inputs(net.backbone),
            "remap_time": callback.seconds,
            "label_mapping": {
                "mode": diag["mode"],
                "assignment": diag["assignment"],
                "mapping": diag["mapping"],
                "named": {target_names[t]: source_names[s] for t, s in enumerate(diag["mapping"])},
                "counts": diag["counts"],
                "source_classes": list(source_names),
                "target_classes": list(target_names),
            },
        }

    return net, [callback], after


BUILDERS = {"lp": _lp, "ft": _ft, "vp": _vp}


# --------------------------------------------------------------------------- the run


def transfer_run(
    ctx: Context, variant: LoadedVariant, spec: TransferSpec, budget: Budget, seed: int, run: Run
) -> dict:
    """Train and evaluate one transfer; return (and write) its summary."""
    if run.is_finished():
        return run.read_summary()
    if not ctx.method.transfer_checkpoints:
        run.truncate_metrics(0)  # an interrupted run without checkpoints starts afresh
    ctx.start_child(run, "transfer", **transfer_identity(variant, spec, budget, seed))
    t0 = time.perf_counter()
    summary = fit_transfer(ctx, variant, spec, budget, seed, run).summary
    summary["time"] = time.perf_counter() - t0
    run.write_summary(summary)
    return summary


def transfer_identity(variant: LoadedVariant, spec: TransferSpec, budget: Budget,
                      seed: int) -> dict:
    """What names one transfer run (and seeds its global RNGs, see ``Context.start_child``)."""
    return {"variant": variant.spec.name, "method": spec.label, "budget": budget.label,
            "seed": seed}


@dataclass
class FittedTransfer:
    """A trained transfer: its summary (not yet written), the trained net, the fit's result."""

    summary: dict
    net: nn.Module
    result: dict


def fit_transfer(
    ctx: Context, variant: LoadedVariant, spec: TransferSpec, budget: Budget, seed: int, run: Run
) -> FittedTransfer:
    """Train and evaluate one transfer in the started ``run`` (logits saved as an artifact);
    the caller adds what it needs to the summary and writes it."""
    m = ctx.method
    pool = ctx.target.train
    train_idx, val_idx = budget_split(
        pool.labels, budget, seed, m.val_cap, m.full_val_fraction, pool.classes
    )
    stage = {"lp": m.lp, "ft": m.ft, "vp": m.vp}[spec.kind]
    tcfg = dataclasses.replace(
        ctx.target_cfg, batch_size=stage.batch_size or ctx.target_cfg.batch_size
    )
    splits = dataclasses.replace(ctx.target, mean=ctx.source.splits.mean, std=ctx.source.splits.std)
    norm = spec.kind != "vp"
    loader = train_loader(
        ctx.cfg,
        pool.subset(train_idx),
        splits,
        ctx.device,
        key=f"transfer-order/{seed}",
        data_cfg=tcfg,
        normalize=norm,
    )
    val_loader = eval_loader(
        ctx.cfg, pool.subset(val_idx), splits, ctx.device, data_cfg=tcfg, normalize=norm
    )
    test_loader = eval_loader(
        ctx.cfg, ctx.target.test, splits, ctx.device, data_cfg=tcfg, normalize=norm
    )
    net, callbacks, after = BUILDERS[spec.kind](ctx, variant, spec, seed)
    fit_model, fit_loader, fit_val = net, loader, val_loader
    cached = spec.kind == "lp" and cacheable(loader)
    if cached:  # the frozen backbone maps each image to one feature vector: train the head
        fit_model = net.head
        fit_loader, fit_val = feature_loaders(net, loader, val_loader)
    train_cfg = dataclasses.replace(
        ctx.train_config(progress=False), checkpoint=m.transfer_checkpoints
    )
    trainer = Trainer(fit_model, stage.optim, train_cfg, run=run, callbacks=callbacks)
    epochs = max(stage.epochs, math.ceil(stage.min_steps / len(loader)))
    result = trainer.fit(fit_loader, epochs, val_loader=fit_val, select=m.select)
    trainer.finish()
    if not cached:
        net = trainer.model
    val = evaluate(net, val_loader, device=ctx.device, amp=ctx.cfg.train.amp, return_logits=True)
    test = evaluate(net, test_loader, device=ctx.device, amp=ctx.cfg.train.amp, return_logits=True)
    cal = calibration_before_after(
        val["logits"], val["labels"], test["logits"], test["labels"], m.n_bins, m.ece_binning
    )
    before, after_ts = cal["before"], cal["after"]
    v = variant.summary
    summary = {
        "part": "transfer",
        "variant": variant.spec.name,
        "family": variant.spec.family,
        "kind": variant.spec.kind,
        "sparsity": v.get("sparsity"),
        "density": v.get("density"),
        "bits": v.get("bits"),
        "act_bits": v.get("act_bits"),
        "method": spec.label,
        "transfer": spec.kind,
        "budget": budget.label,
        "seed": seed,
        "acc": before["accuracy"],
        "errors": before["errors"],
        "test_n": before["n"],
        **{k: before[k] for k in CAL_KEYS},
        "ece_binning": m.ece_binning,
        "temperature": cal["temperature"],
        **{f"{k}_ts": after_ts[k] for k in CAL_KEYS},
        "val_acc": val["acc"],
        "val_n": val["n"],
        "train_examples": int(train_idx.numel()),
        "val_examples": int(val_idx.numel()),
        "epochs": epochs,
        "selected_epoch": result.get("selected_epoch"),
        "steps": result.get("steps"),
        "train_time": result.get("stage_time"),
        "cached_features": cached,
    }
    if spec.kind == "vp":
        events = run.events("label_mapping")
        summary["mapping_changes"] = [int(e["changed"]) for e in events]
    summary.update(after(net))
    if spec.kind == "vp" and summary.get("train_time"):
        summary["remap_fraction"] = summary["remap_time"] / summary["train_time"]
    summary["reliability"] = before["reliability"]
    summary["reliability_ts"] = after_ts["reliability"]
    tensors = {
        "val_logits": val["logits"],
        "val_labels": val["labels"],
        "test_logits": test["logits"],
        "test_labels": test["labels"],
        "train_indices": train_idx,
        "val_indices": val_idx,
    }
    with atomic_path(run.artifact("logits.safetensors")) as tmp:
        save_file({k: t.contiguous() for k, t in tensors.items()}, str(tmp))
    if m.save_weights:
        save_weights(net, run.artifact("model.safetensors"))
    return FittedTransfer(summary, net, result)
