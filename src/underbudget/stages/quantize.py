"""The ``quantize`` stage: post-training quantization of a finished stage's deployed model.

Weights go to ``precision.weight_bits`` on a symmetric per-output-channel grid (zero is a
level, so pruned weights stay exactly zero); with ``precision.act_bits`` the input of every
Conv/Linear layer is fake-quantized too, its range calibrated on ``precision.calib_size``
training images of the source (un-augmented, class-balanced, seeded). The code is the
``compress_transfer`` method's PTQ (:func:`post_training_quantize`).

The stage's run directory keeps the quantized weights (``artifacts/model.safetensors``, the
float grid values that :mod:`underbudget.export` turns into integer codes), the upstream's
masks (so a fine-tune downstream keeps them) and ``quant_record.json``. Its summary, all
measured on the quantized model: source test accuracy and ECE (before and after), density
of the prunable weights (the same measure as the source's, with its masks), the masked
weights that are nonzero (must be 0), kept weights that rounded to zero, bytes on disk of the
deployed form, inference FLOPs, and the calibration's forward FLOPs as the stage's cost.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import torch

from ..config import ModelConfig, from_dict
from ..methods.common import build_model, eval_loader, prepare_data
from ..methods.compress_transfer.source import test_calibration
from ..methods.compress_transfer.variants import (
    calibration_subset,
    post_training_quantize,
    weight_levels,
)
from ..models import save_weights
from ..quant import input_quantized_layers
from ..quant.in_training import precision_summary
from ..runs import Run
from ..sections import PrecisionConfig
from ..sparsity.cost import cost
from ..train import resolve_device
from ..utils.seeding import derive_seed, seed_everything
from ..utils.typed import build_dataclass
from .rundir import run_stage
from .weights import QUANTIZE_STAGE, deployed, deployed_bytes


@torch.no_grad()
def _masked_counts(model: torch.nn.Module, masks) -> dict:
    """Nonzero weights where the masks prune (must be 0), and kept weights equal to 0."""
    if masks is None:
        return {"pruned_nonzero": 0, "kept_zero": None}
    params = dict(model.named_parameters())
    pruned = kept_zero = 0
    for name, mask in masks.items():
        w = params[name].detach()
        m = mask.to(w.device)
        pruned += int(w[~m].count_nonzero())
        kept_zero += int((w[m] == 0).sum())
    return {"pruned_nonzero": pruned, "kept_zero": kept_zero}


def run_quantize(config: dict, root: str | Path) -> dict:
    """Run (or find finished) the quantize stage described by ``config`` under ``root``:
    ``path`` (its directory), ``upstream`` (the stage it quantizes), ``precision``."""
    return run_stage(config, root, _quantize)


def _quantize(config: dict, root: Path, run: Run) -> dict:
    p = build_dataclass(PrecisionConfig, dict(config["precision"]), "precision")
    up = deployed(root / config["upstream"])
    cfg = from_dict(up.config)
    device = resolve_device(cfg.train.device)
    data = prepare_data(cfg)
    model = up.load_into(build_model(cfg, data, model_cfg=_plain(cfg))).to(device).eval()
    masks = up.mask_set(model)
    run.start(config, device=device)
    seed_everything(derive_seed(cfg.seed, QUANTIZE_STAGE, config["label"]))
    t0 = time.perf_counter()
    shape = tuple(data.image_shape)
    test = eval_loader(cfg, data.test, data.splits, device)
    before = test_calibration(model, test, device)
    float_cost = cost(model, shape, masks)
    calib: list = []

    def batches() -> list:
        calib.extend(calibration_subset(cfg, data, p.calib_size, device))
        return calib

    qmodel, record = post_training_quantize(model, p.weight_bits, p.act_bits, batches)
    qmodel.eval()
    after = test_calibration(qmodel, test, device)
    q_cost = cost(qmodel, shape, masks)
    levels = weight_levels(qmodel)
    save_weights(qmodel, run.artifact("model.safetensors"))
    if masks is not None:
        masks.save(run.artifact("masks.safetensors"))
    run.write_json("quant_record.json", record.to_dict())
    state = {k: v.detach().cpu() for k, v in qmodel.state_dict().items()}
    sizes = deployed_bytes(state, p.weight_bits, list(record.weights))
    float_sizes = deployed_bytes(up.state, up.bits, up.targets)
    calib_images = sum(int(y.numel()) for _, y in calib)
    summary = {
        "stage": QUANTIZE_STAGE, "method": "ptq", "name": cfg.name, "seed": cfg.seed,
        "upstream": config["upstream"], "label": config["label"],
        "source_method": cfg.method.name,
        "bits": p.weight_bits, "act_bits": p.act_bits, "act_layers": input_quantized_layers(qmodel),
        "weight_levels_max": levels, "bits_measured": math.ceil(math.log2(levels + 1)),
        "test_acc": after["source_test_acc"], "test_ece": after["source_test_ece"],
        "test_nll": after["source_test_nll"], "test_loss": after["source_test_loss"],
        "test_acc_float": before["source_test_acc"], "test_ece_float": before["source_test_ece"],
        "test_n": after["source_test_n"],
        "density": q_cost["density"], "density_source": float_cost["density"],
        "mask_density": masks.density() if masks is not None else 1.0,
        **_masked_counts(qmodel, masks),
        "kept_zero_source": _masked_counts(model, masks)["kept_zero"],
        "nonzeros": q_cost["nonzeros"], "params": q_cost["params"],
        "flops_nonzero": q_cost["flops_nonzero"], "flops_dense": q_cost["flops_dense"],
        "bytes_export": sizes["bytes_deployed"], "bytes_float": float_sizes["bytes_float"],
        "bytes_export_float": float_sizes["bytes_deployed"],
        "calib_images": calib_images,
        "train_flops": float(calib_images * float_cost["flops_nonzero"]),
        "examples_seen": calib_images,
        "time": time.perf_counter() - t0, "status": "ok",
    }
    summary = {**precision_summary(qmodel, p, masks, shape), **summary}  # the project's
    # precision record (weight_bits, density_deployed, bytes_deployed, ...) under ours
    summary["costs"] = {"train_flops": summary["train_flops"],
                        "inference_flops": q_cost["flops_nonzero"],
                        "deployed_bytes": summary["bytes_deployed"],
                        "examples_seen": calib_images, "wall_time": summary["time"]}
    run.write_summary(summary)
    return summary


def _plain(cfg) -> ModelConfig:
    """The config's model section without a weights file (the stage loads its own)."""
    return dataclasses.replace(cfg.model, weights=None)
