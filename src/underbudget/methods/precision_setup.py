"""The ``precision`` section in a method: the model to train, the model to deploy, its record.

Every method that trains calls :func:`prepare_model` before building its trainer (QAT layers
then train and checkpoint with the model) and :func:`finish_model` after training: a QAT
model is converted and evaluated on the test loader again, and the summary gets the bits, the
density measured on the deployed weights and the deployed bytes (see
:mod:`underbudget.quant.in_training`). Post-training quantization is a stage of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..config import ExperimentConfig
from ..data import ImageSet, Loader, calibration_indices
from ..quant.in_training import deploy, is_qat, precision_summary, prepare_for_training
from ..sections import PrecisionConfig
from ..sparsity import MaskSet
from ..train.evaluate import evaluate


def prepare_model(cfg: ExperimentConfig, model: nn.Module, sparse: bool,
                  example: Callable[[], torch.Tensor] | None = None) -> nn.Module:
    """The model to train under ``cfg.precision`` (LSQ layers for ``qat``; else ``model``).

    ``example`` returns a batch of training inputs; the activation steps start from it.
    """
    if cfg.precision.mode != "qat":
        return model
    x = example() if example is not None and cfg.precision.act_bits is not None else None
    return prepare_for_training(model, cfg.precision, sparse, x)


def first_inputs(cfg: ExperimentConfig, images: ImageSet, mean: Any, std: Any,
                 device: Any) -> torch.Tensor:
    """The first batch of the calibration draw (see :func:`calibration_loader`), inputs only."""
    x, _ = next(iter(calibration_loader(cfg, images, mean, std, device)))
    return x


def calibration_loader(cfg: ExperimentConfig, images: ImageSet, mean: Any, std: Any,
                       device: Any) -> Loader:
    """About ``precision.calib_size`` training images, un-augmented: the calibration draw
    (:func:`underbudget.data.calibration_indices`, the one PTQ calibrates on)."""
    pick = calibration_indices(images.labels, cfg.precision.calib_size, cfg.seed)
    batch = max(1, min(cfg.data.batch_size, pick.numel()))
    return Loader(images.subset(pick), batch, shuffle=False, mean=mean, std=std, device=device)


def finish_model(
    cfg: ExperimentConfig,
    model: nn.Module,
    masks: MaskSet | None,
    input_shape: Any,
    test: Any,
    device: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """The deployed model and its precision record (``deployed_test_acc`` after QAT).

    With ``qat`` the model is converted in place and evaluated on ``test`` again (the same
    function the QAT model computed); otherwise it is the float model (``ptq`` quantizes it in
    a stage of its own afterwards), recorded at 32 bits.
    """
    p = cfg.precision if is_qat(cfg.precision) else PrecisionConfig()
    deployed, _ = deploy(model, p, masks)
    record = precision_summary(deployed, p, masks, input_shape)
    if p.enabled:
        deployed.eval()
        result = evaluate(deployed, test, device=device)
        record["deployed_test_acc"] = result["acc"]
        record["deployed_test_errors"] = result.get("errors")
    return deployed, record
