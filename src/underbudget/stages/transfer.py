"""The ``transfer`` stage: one (method, budget, seed) transfer of a finished stage's model.

The upstream is any stage with a deployed model (:func:`.weights.deployed`): a source run of
any method, a lottery level, a quantize stage. The transfer itself is the
``compress_transfer`` method's code (:func:`fit_transfer`): the target pool and test set of
``transfer.target``, the budget split with its validation images, LP (frozen backbone, new
head, on cached features when nothing is augmented), FT (new head, every weight trains; a
pruned upstream keeps its masks, a quantized one its grid: weights train through the fixed
grid and quantized activations stay quantized) and VP (prompt and label mapping on the frozen
model; ILM remaps every epoch), with selection on validation and calibration metrics (ECE,
NLL, Brier, before and after temperature scaling).

Costs in the summary, per the project's FLOP convention (one forward pass = F):

- ``train_flops``: LP with cached features, F of the probe once per training and validation
  image plus 3 x the head's F per example seen; LP otherwise (F - head) + 3 x head per example
  seen; FT 3 x F per example seen (nonzero weights only); VP 2 x F per example seen (forward
  and the backward pass to the input; no weight gradients). Validation and test passes are
  not counted. ``examples_seen`` = epochs run x training images.
- ``flops_inference``: F of the transferred model; ``upstream_*``: density, bits, bytes on
  disk (compact form) and F of the model that was transferred.
- ``costs.deployed_bytes``: the deployed model by the precision record's rule (the one every
  run's ``deployed_bytes`` follows, :func:`underbudget.quant.in_training.precision_summary`):
  the upstream model's bytes measured by that rule (``upstream_bytes_deployed``), with the
  source head replaced by the new float32 head (LP, FT) or plus the float32 prompt (VP).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
from torch import nn

from ..config import ExperimentConfig, from_dict
from ..methods.compress_transfer.config import parse_budget, parse_method
from ..methods.compress_transfer.context import make_context
from ..methods.compress_transfer.prompting import check_frame
from ..methods.compress_transfer.source import fresh_model
from ..methods.compress_transfer.transfer import FittedTransfer, fit_transfer, transfer_identity
from ..methods.compress_transfer.variants import LoadedVariant, VariantSpec
from ..quant.in_training import precision_summary
from ..runs import Run
from ..sections import PrecisionConfig, StreamConfig, TransferConfig
from ..sparsity.cost import _tensor_bytes, cost
from ..utils.seeding import derive_seed, seed_everything
from .plan import transfer_settings
from .rundir import run_stage
from .weights import Deployed, deployed, deployed_bytes

TRANSFER_STAGE = "transfer"


def _family(up: Deployed, pruned: bool) -> str:
    if up.quantized:
        trained = up.steps is not None or "qat" in (up.summary.get("precision_mode"),
                                                   up.summary.get("family"))
        return "qat" if trained else "ptq"
    return "pruned" if pruned else "dense"


def settings_config(up: Deployed, config: dict) -> ExperimentConfig:
    """The upstream's experiment config with the transfer settings of this one transfer as
    its method section (what the transfer code reads)."""
    cfg = from_dict(up.config)
    cfg = dataclasses.replace(cfg, transfer=TransferConfig(
        target=dict(config["target"]), methods=[config["method"]],
        budgets=[config["budget"]], seeds=[int(config["seed"])],
        options=dict(config.get("options") or {})))
    settings = transfer_settings(cfg)
    return dataclasses.replace(cfg, method=settings, transfer=TransferConfig(),
                               precision=PrecisionConfig(), stream=StreamConfig(), sweep={})


def _costs(fitted: FittedTransfer, kind: str, shape: tuple[int, ...]) -> dict:
    s, net = fitted.summary, fitted.net
    n_train, n_val = int(s["train_examples"]), int(s["val_examples"])
    seen = int(fitted.result.get("epochs_run", s["epochs"])) * n_train
    forward = float(cost(net, shape)["flops_nonzero"])
    if kind == "lp":
        head = float(cost(net.head, (net.head.in_features,))["flops_nonzero"])
        if s.get("cached_features"):
            train = (forward - head) * (n_train + n_val) + 3.0 * head * seen
        else:
            train = (forward - head + 3.0 * head) * seen
    else:
        train = (3.0 if kind == "ft" else 2.0) * forward * seen
    return {"train_flops": train, "examples_seen": seen, "flops_inference": forward}


def _rule_precision(up: Deployed) -> PrecisionConfig:
    return (PrecisionConfig(mode="ptq", weight_bits=up.bits, act_bits=up.act_bits)
            if up.quantized else PrecisionConfig())


@torch.no_grad()
def _head_bytes(model: nn.Module, masks, up: Deployed) -> float:
    """Bytes of the model's last Linear layer (the source head) by the precision rule."""
    heads = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not heads:
        return 0.0
    name, head = heads[-1]
    prunable = set(masks.names()) if masks is not None else None
    total = 0.0
    for pname, p in head.named_parameters():
        full = f"{name}.{pname}" if name else pname
        if pname == "weight" and (prunable is None or full in prunable):
            rows = p.shape[0]
            bits = up.bits or 32
            total += _tensor_bytes(p.numel(), int(p.count_nonzero()), rows, bits)["best"]
            total += 4 * rows if up.quantized else 0
        else:
            total += 4 * p.numel()
    return total


def upstream_bytes(model: nn.Module, masks, up: Deployed, shape: tuple[int, ...]) -> tuple:
    """(bytes of the upstream model, bytes of its head), by the precision rule, measured
    before the transfer trains anything."""
    base = float(precision_summary(model, _rule_precision(up), masks, shape)["bytes_deployed"])
    return base, _head_bytes(model, masks, up)


def transferred_bytes(fitted: FittedTransfer, kind: str, before: tuple) -> dict:
    """The upstream's deployed bytes and the transferred model's (see the module docstring)."""
    base, head = before
    if kind == "vp":
        prompt = getattr(fitted.net, "prompt", None)
        added = 4 * sum(p.numel() for p in prompt.parameters()) if prompt is not None else 0
        return {"upstream_bytes_deployed": base, "bytes_deployed": base + added}
    linear = [m for m in fitted.net.modules() if isinstance(m, nn.Linear)][-1]  # the new head
    new = 4 * sum(p.numel() for p in linear.parameters())
    return {"upstream_bytes_deployed": base,
            "bytes_deployed": base - head + new}


def run_transfer(config: dict, root: str | Path) -> dict:
    """Run (or find finished) the transfer described by ``config`` under ``root``: ``path``,
    ``upstream`` (a stage directory), ``label`` (the upstream's name in reports), ``target``
    and ``options`` (the transfer section's), ``method``, ``budget`` and ``seed``."""
    return run_stage(config, root, _transfer)


def _transfer(config: dict, root: Path, run: Run) -> dict:
    up = deployed(root / config["upstream"])
    cfg = settings_config(up, config)
    m = cfg.method
    ctx = make_context(cfg, run)
    c, h, w = ctx.input_shape
    spec = parse_method(config["method"], "transfer.methods")
    budget = parse_budget(config["budget"], "transfer.budgets")
    seed = int(config["seed"])
    model = up.load_into(fresh_model(ctx)).to(ctx.device).eval()
    if spec.kind == "vp":
        check_frame(model, m.vp.frame or h, c, ctx.source.num_classes, h)
    masks = up.mask_set(model)
    pruned = masks is not None and masks.density() < 1.0
    density = up.density
    vspec = VariantSpec(config["label"], _family(up, pruned), sparsity=1.0 - density,
                        bits=up.bits, act_bits=up.act_bits)
    upstream = {"upstream": config["upstream"], "label": config["label"],
                "upstream_density": density, "upstream_bits": up.bits or 32,
                "upstream_act_bits": up.act_bits,
                "upstream_bytes": deployed_bytes(up.state, up.bits, up.targets)["bytes_deployed"],
                "upstream_flops": float(cost(model, (c, h, w), masks)["flops_nonzero"]),
                "upstream_test_acc": up.summary.get("test_acc"),
                "source_method": up.config.get("method", {}).get("name")}
    variant = LoadedVariant(vspec, model, masks if pruned else None,
                            {"sparsity": 1.0 - density, "density": density,
                             "bits": up.bits or 32, "act_bits": up.act_bits}, up.steps)
    if not m.transfer_checkpoints:
        run.truncate_metrics(0)  # an interrupted run without checkpoints starts afresh
    run.start(config, device=ctx.device)
    info = transfer_identity(variant, spec, budget, seed)
    seed_everything(derive_seed(cfg.seed, "transfer", *sorted(info.items())))
    before = upstream_bytes(model, masks, up, (c, h, w))
    t0 = time.perf_counter()
    fitted = fit_transfer(ctx, variant, spec, budget, seed, run)
    summary = {"stage": TRANSFER_STAGE, "name": cfg.name, **fitted.summary, **upstream,
               **_costs(fitted, spec.kind, (c, h, w)),
               **transferred_bytes(fitted, spec.kind, before),
               "status": "ok"}
    summary["time"] = time.perf_counter() - t0
    summary["costs"] = {"train_flops": summary["train_flops"],
                        "inference_flops": summary["flops_inference"],
                        "deployed_bytes": summary["bytes_deployed"],
                        "examples_seen": summary["examples_seen"],
                        "wall_time": summary["time"]}
    run.write_summary(summary)
    return summary
